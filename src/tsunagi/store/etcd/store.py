"""The store in etcd: what several control-plane replicas share.

Layout: one key per document, ``PREFIX + kind/namespace/name``, its value the document as JSON;
and ``PREFIX + .commit``, rewritten by every commit (with a random token). Revisions are etcd's:
``Record.revision`` is the key's ``mod_revision`` and ``Contents.revision`` the revision of the
latest change under the prefix.

Reads are served from memory, and memory follows one watch on the prefix, so a commit made by
another replica shows here, and wakes :meth:`wait_for_change`, just as a local one does. A
commit returns once the watch has brought it in, so a caller reads its own writes. A watch that
falls behind a compaction re-lists everything and watches on from there.

A commit is ONE etcd transaction: every put and delete, and the ``.commit`` key, guarded by the
``.commit`` key's ``mod_revision`` being the one this replica last saw. The guard is what makes
a commit safe to retry. If the reply is lost (a timeout, a leader that died mid-request), the
store reads ``.commit``: unchanged means the transaction has not committed, and resending the
same guarded transaction can commit it at most once (an earlier copy still in flight would now
fail its guard); changed means the first commit after the guarded revision is either ours
(its token says so) or someone else's, which fenced ours out. Another replica's commit in
between only fails the guard: the store takes the new revision and sends again (commits are
blind writes, as in every backend).

Leases (:class:`~tsunagi.store.base.Leases`): :meth:`EtcdStore.commit_leased` grants one
etcd lease per document and writes the document attached to it, in the same guarded
transaction as any commit. etcd keeps the lease id on the key, so the watch brings it to every
replica: any of them can renew the lease (one request on this store's LeaseKeepAlive stream)
or revoke it, whoever wrote the key. When nobody renews it, etcd deletes the key itself and
every replica's watch sees the delete; no replica keeps a clock of its own for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

from tsunagi.store.base import CachedStore, Contents, Key, Record, StoreError, StoreLimit
from tsunagi.store.etcd.client import (
    Compacted,
    EtcdClient,
    EtcdError,
    KeyValue,
    LeaseKeeper,
    Uncertain,
    delete,
    get,
    mod_revision_is,
    parse_endpoints,
    put,
)
from tsunagi.store.etcd.tls import EtcdTls

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "/tsunagi/"
COMMIT_KEY = ".commit"
_ATTEMPTS = 20
"""Sends of one commit before giving up: conflicts with other replicas and unknown outcomes."""


def parse_url(url: str) -> tuple[list[tuple[str, int]], str]:
    """``etcd://HOST:PORT[,HOST:PORT...][/PREFIX]`` as (endpoints, key prefix)."""
    rest = url.removeprefix("etcd://")
    hosts, _, path = rest.partition("/")
    if not hosts:
        raise ValueError(
            f"bad store {url!r}: name the etcd members, etcd://HOST:PORT[,HOST:PORT...]"
        )
    prefix = f"/{path.strip('/')}/" if path.strip("/") else DEFAULT_PREFIX
    return parse_endpoints(hosts), prefix


class EtcdStore(CachedStore):
    """Keeps every document in etcd under ``prefix``; reads from memory kept current by a
    watch. ``timeout``: the deadline of each etcd call. ``tls``: talk to etcd over TLS with
    these files (plaintext when None). ``client``: a client made elsewhere to use instead
    of one to ``endpoints``; the store closes it when it closes."""

    def __init__(
        self,
        endpoints: Sequence[tuple[str, int]],
        prefix: str = DEFAULT_PREFIX,
        timeout: float = 5,
        *,
        tls: EtcdTls | None = None,
        client: EtcdClient | None = None,
    ) -> None:
        super().__init__()
        self._given = client
        self._tls = tls
        self.endpoints = list(endpoints)
        self._prefix = prefix.encode()
        self._commit_key = self._prefix + COMMIT_KEY.encode()
        self._timeout = timeout
        self._client: EtcdClient | None = None
        self._follower: asyncio.Task[None] | None = None
        self._commit_revision = 0
        """mod_revision of the ``.commit`` key as last seen (0: never written)."""
        self._lease_of: dict[Key, int] = {}
        """The etcd lease each leased document is attached to, as the watch last saw it."""
        self._keeper: LeaseKeeper | None = None
        self._lock = asyncio.Lock()

    @property
    def client(self) -> EtcdClient:
        """The etcd client (for leases); only while the store is open."""
        if self._client is None:
            raise RuntimeError("the etcd store is not open")
        return self._client

    async def open(self) -> None:
        self._client = self._given or self._new_client()
        self._given = None  # closed with the store: a reopened store makes its own
        try:
            revision = await self._relist()
        except EtcdError as e:
            await self.close()
            if self._tls is None:
                hint = (
                    "; if etcd serves TLS (https client URLs), give --etcd-ca, and "
                    "--etcd-cert/--etcd-key when it asks clients for a certificate"
                )
            else:
                hint = (
                    "; over TLS, also check that --etcd-ca signed etcd's certificate, that the "
                    "certificate names the addresses in --store (or give --etcd-server-name "
                    "with a name it does carry), and that etcd accepts --etcd-cert"
                )
            raise EtcdError(
                f"cannot read the store ({e}); check that etcd runs there and that --store "
                f"names its client URLs{hint}"
            ) from e
        self._follower = asyncio.create_task(self._follow(revision))

    def _new_client(self) -> EtcdClient:
        if self._tls is None:
            return EtcdClient(self.endpoints, timeout=self._timeout)
        return EtcdClient(
            self.endpoints,
            credentials=self._tls.credentials(),
            server_name=self._tls.server_name,
            timeout=self._timeout,
        )

    async def close(self) -> None:
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follower
            self._follower = None
        if self._keeper is not None:
            self._keeper.close()
            self._keeper = None
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()

    # -- keys ------------------------------------------------------------------------------

    def _key(self, key: Key) -> bytes:
        if any(not part or "/" in part for part in key):
            raise ValueError(
                f"cannot store {key!r}: kind, namespace and name must be non-empty and free of '/'"
            )
        return self._prefix + "/".join(key).encode()

    def _key_of(self, key: bytes) -> Key | None:
        parts = key[len(self._prefix) :].decode(errors="replace").split("/")
        if len(parts) != 3:
            return None  # the .commit key, or a key some other program put under our prefix
        return (parts[0], parts[1], parts[2])

    def _record(self, kv: KeyValue) -> Record | None:
        key = self._key_of(kv.key)
        if key is None:
            return None
        try:
            document = json.loads(kv.value)
        except ValueError:
            log.warning("etcd key %r holds no JSON document; ignored", kv.key)
            return None
        return Record(*key, document=document, revision=kv.mod_revision)

    # -- following etcd --------------------------------------------------------------------

    async def _relist(self) -> int:
        """Replace the contents with etcd's; return the revision read."""
        revision, kvs = await self.client.range_prefix(self._prefix)
        records: dict[Key, Record] = {}
        leases: dict[Key, int] = {}
        for kv in kvs:
            if kv.key == self._commit_key:
                self._commit_revision = kv.mod_revision
            elif (record := self._record(kv)) is not None:
                records[record.key] = record
                if kv.lease:
                    leases[record.key] = kv.lease
        self._lease_of = leases
        revision = max(revision, self._contents.revision)
        await self._publish(Contents(revision, MappingProxyType(records)))
        return revision

    async def _follow(self, revision: int) -> None:
        """Apply every change under the prefix, from ``revision + 1`` on, for ever."""
        failing = False
        while True:
            try:
                # From the revision already applied, not the next one: etcd compacting at
                # exactly the next one drops that revision's delete tombstones yet lets a
                # watch start there, so deletes would pass unseen. Starting one earlier, such
                # a compaction is reported (Compacted: re-list); the repeated batch is skipped.
                async for batch_revision, events in self.client.watch(self._prefix, revision):
                    if batch_revision <= revision:
                        continue
                    records = dict(self._contents.records)
                    for event in events:
                        if event.kv.key == self._commit_key:
                            self._commit_revision = event.kv.mod_revision
                            continue
                        if event.deleted:
                            if (key := self._key_of(event.kv.key)) is not None:
                                records.pop(key, None)
                                self._lease_of.pop(key, None)
                        elif (record := self._record(event.kv)) is not None:
                            records[record.key] = record
                            if event.kv.lease:
                                self._lease_of[record.key] = event.kv.lease
                            else:
                                self._lease_of.pop(record.key, None)
                    await self._publish(Contents(batch_revision, MappingProxyType(records)))
                    revision = batch_revision
                    if failing:
                        log.info("etcd watch resumed at revision %d", revision)
                        failing = False
            except Compacted as e:
                log.warning(
                    "etcd compacted revisions this replica had not seen (%s); re-listing", e
                )
                try:
                    revision = await self._relist()
                except EtcdError:
                    await asyncio.sleep(0.5)  # and watch again: it will say compacted again
            except EtcdError as e:
                if not failing:
                    log.warning("etcd watch broke (%s); resuming from revision %d", e, revision + 1)
                    failing = True
                await asyncio.sleep(0.5)

    async def _caught_up(self, revision: int) -> None:
        """Wait until the watch has brought in ``revision`` (bounded: a broken watch must not
        hold a commit that etcd has already accepted)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._timeout * 2):
                async with self._changed:
                    await self._changed.wait_for(lambda: self._contents.revision >= revision)

    # -- writing ---------------------------------------------------------------------------

    async def commit(
        self, puts: Sequence[tuple[Key, Mapping[str, Any]]], deletes: Sequence[Key] = ()
    ) -> int:
        ops = [delete(self._key(k)) for k in deletes]
        ops += [put(self._key(k), json.dumps(doc, sort_keys=True).encode()) for k, doc in puts]
        return await self._commit(ops)

    async def _commit(self, ops: list[Any]) -> int:
        """Send ``ops`` and the ``.commit`` key as one guarded transaction; return its
        revision once the watch has brought it in."""
        token = os.urandom(12).hex()
        ops.append(put(self._commit_key, json.dumps({"token": token}).encode()))
        async with self._lock:
            revision = await self._send(ops, token)
            await self._caught_up(revision)
            return revision

    # -- leases (tsunagi.store.base.Leases) -------------------------------------------------

    async def commit_leased(self, key: Key, document: Mapping[str, Any], ttl: float) -> int:
        """Write ``document`` at ``key`` attached to a new etcd lease of ``ttl`` seconds
        (rounded up: etcd counts whole seconds, and raises TTLs under its minimum, 1.5
        election timeouts), in one guarded transaction; return its revision."""
        lease, _ = await self.client.lease_grant(max(1, math.ceil(ttl)))
        value = json.dumps(document, sort_keys=True).encode()
        try:
            return await self._commit([put(self._key(key), value, lease)])
        except StoreError:
            # A lease that holds nothing would only wait out its TTL: end it now if etcd
            # answers (should the commit have landed after all, its key goes too, and the
            # caller, told it failed, registers again).
            with contextlib.suppress(EtcdError):
                await self.client.lease_revoke(lease)
            raise

    def leased(self, key: Key) -> bool:
        """Whether ``key`` is stored here attached to an etcd lease."""
        return key in self._contents.records and bool(self._lease_of.get(key))

    async def renew(self, key: Key) -> bool:
        """Renew the lease ``key`` is attached to (whichever replica wrote it), over one
        long-lived keepalive stream; False when there is no such key or lease any more."""
        lease = self._lease_of.get(key, 0)
        if not lease or key not in self._contents.records:
            return False
        if self._keeper is None:
            self._keeper = self.client.keepalive()
        return await self._keeper.refresh(lease) > 0

    async def revoke(self, key: Key) -> int:
        """Delete ``key``: end its lease (etcd deletes the key with it), or commit its delete
        when it has none; return once this store has seen the delete."""
        lease = self._lease_of.get(key, 0)
        if not lease:
            return await self.commit([], [key])
        await self.client.lease_revoke(lease)  # an unknown lease: it lapsed already
        await self._seen_gone(key, lease)
        return self._contents.revision

    async def _seen_gone(self, key: Key, lease: int) -> None:
        """Wait until the watch brings the delete of ``key`` (or a newer write of it, under
        another lease); bounded like :meth:`_caught_up`. Waiting for a revision would not
        do: the revoke's reply names none for the delete (its header is etcd's revision,
        which writes outside our prefix move too, and the watch sees only ours)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._timeout * 2):
                async with self._changed:
                    await self._changed.wait_for(lambda: self._lease_of.get(key) != lease)

    async def _send(self, ops: list[Any], token: str) -> int:
        """Commit ``ops`` exactly once; return its revision (see the module's docstring)."""
        expected = self._commit_revision
        sent_unsure = False
        for _ in range(_ATTEMPTS):
            try:
                result = await self.client.txn(
                    [mod_revision_is(self._commit_key, expected)], ops, [get(self._commit_key)]
                )
            except Uncertain as e:
                log.warning("etcd commit outcome unknown (%s); reading back", e)
                sent_unsure = True
                current = await self._current_commit_revision()
                if current == expected:
                    log.info("etcd commit had not landed; sending it again")
                    continue  # a resend commits at most one copy: both carry the same guard
                mine = await self._first_commit_after(expected, token)
                if mine:
                    log.info("etcd commit had landed, at revision %d", mine)
                    return mine
                expected = current
                continue
            except EtcdError as e:
                raise _explained(e) from e
            if result.succeeded:
                return result.revision
            if sent_unsure:
                mine = await self._first_commit_after(expected, token)
                if mine:
                    return mine
            expected = result.read[0].mod_revision if result.read else 0
        raise EtcdError(
            f"gave up on a commit after {_ATTEMPTS} attempts (etcd unreachable or other "
            "replicas committing all the time); nothing was written: try again"
        )

    async def _current_commit_revision(self) -> int:
        try:
            _, kv = await self.client.get(self._commit_key)
        except EtcdError as e:
            raise EtcdError(_unknown(e)) from e
        return kv.mod_revision if kv is not None else 0

    async def _first_commit_after(self, expected: int, token: str) -> int:
        """The revision of our commit if the first commit after ``expected`` is ours, else 0."""
        try:
            watch = self.client.watch(self._commit_key, expected + 1)
            async with contextlib.aclosing(watch) as changes:
                async for _, events in changes:
                    value = json.loads(events[0].kv.value)
                    return events[0].kv.mod_revision if value.get("token") == token else 0
        except EtcdError as e:
            raise EtcdError(_unknown(e)) from e
        raise AssertionError("unreachable: a watch ends by raising")


def _unknown(e: Exception) -> str:
    return (
        f"a commit may or may not have been applied and etcd cannot tell now ({e}); "
        "check with `tsunagi get` and apply again if it is missing"
    )


def _explained(e: EtcdError) -> StoreError:
    """``e``, as a :class:`StoreLimit` saying what to do when it is one of etcd's limits."""
    message = str(e)
    if "too many operations" in message:
        return StoreLimit(
            f"{message}: one apply is one etcd transaction, and etcd caps its operations "
            "(--max-txn-ops, 128 by default); raise it, or apply fewer resources at a time"
        )
    if "request is too large" in message:
        return StoreLimit(
            f"{message}: etcd caps a request's size (--max-request-bytes, 1.5 MiB by "
            "default); raise it, or apply fewer resources at a time"
        )
    return e
