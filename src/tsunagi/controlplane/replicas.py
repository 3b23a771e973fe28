"""Several control planes on one etcd: each replica registers itself under the store's
prefix, finds its peers there, and asks them what their proxies have ACKed.

A replica's key is ``PREFIX.replicas/NAME`` (NAME: its API address, ``host:port``), held by
an etcd lease of its own that it keeps alive: a clean exit revokes the lease (the key goes at
once), a crash leaves it to expire within :data:`LEASE_TTL` seconds. The value says where its
API and xDS port are, and carries fingerprints of what replicas must share: the CA's root,
the workload-token key and the admin token (hashes and HMACs: never the secrets). A replica
whose fingerprints differ from a live peer's refuses to start (:class:`Mismatch`), naming the
flags that make them the same: replicas share the CA by being given the same plug-in files
(``--ca-cert``/``--ca-key``), and the rest by ``--workload-token-key`` and ``--token-file``.
The check is against live replicas only, so a whole mesh restarted with a new CA starts.

The store ignores these keys: they have two path parts, its documents three.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
from dataclasses import asdict, dataclass, replace
from typing import Any

import aiohttp

from tsunagi.controlplane.workload_tokens import key_fingerprint
from tsunagi.store.base import StoreError
from tsunagi.store.etcd.client import EtcdClient, EtcdError, put

log = logging.getLogger("tsunagi.replicas")

REPLICAS = ".replicas/"
"""Where replicas register, under the store's prefix."""
LEASE_TTL = 6
"""Seconds a crashed replica stays listed; its peers keep asking it until then."""
REFRESH_EVERY = 2.0
"""Seconds between two keepalives of the lease (a third of its TTL)."""


class Mismatch(ValueError):
    """This replica's CA, workload-token key or admin token is not its live peers'."""


@dataclass(frozen=True)
class Replica:
    """One control plane on the store, as it registered itself."""

    name: str
    """Its API address, ``host:port``: what proxy-status and wait results call it."""
    api: str
    """``http://host:port``."""
    xds_host: str
    xds_port: int
    ca: str = ""
    """SHA-256 of the CA root's DER."""
    token_key: str = ""
    """:func:`~tsunagi.controlplane.workload_tokens.key_fingerprint` of the workload-token key."""
    admin: str = ""
    """An HMAC of a constant under the admin token."""

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Replica | None:
        """The replica ``raw`` describes; None when it is not one (logged)."""
        try:
            doc = json.loads(raw)
            return cls(**{k: doc[k] for k in cls.__dataclass_fields__ if k in doc})
        except (ValueError, TypeError) as e:
            log.warning("a replica key holds no replica (%s); ignored", e)
            return None


def admin_fingerprint(token: str) -> str:
    """Names the admin token without revealing it."""
    return hmac.new(token.encode(), b"tsunagi admin token fingerprint", hashlib.sha256).hexdigest()


def mismatch(me: Replica, peer: Replica) -> str:
    """Why ``me`` may not join ``peer`` ("" when it may): each difference and its flag."""
    problems = []
    if me.ca != peer.ca:
        problems.append(
            "its CA root is not theirs: give every replica the same plug-in CA files "
            "(--ca-cert FILE --ca-key FILE, and --ca-chain FILE for an intermediate)"
        )
    if me.token_key != peer.token_key:
        problems.append(
            "its workload-token key is not theirs: give every replica the same "
            "--workload-token-key FILE (e.g. a copy of the first one's "
            "STATE_DIR/workload-token.key)"
        )
    if me.admin != peer.admin:
        problems.append(
            "its admin token is not theirs: give every replica the same --token-file FILE"
        )
    if not problems:
        return ""
    return (
        f"this control plane cannot join replica {peer.name} ({peer.api}) on the same store: "
        + "; ".join(problems)
    )


def host_port(host: str, port: int) -> str:
    """``host:port``, an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Replicas:
    """This replica's registration, and its view of (and line to) its peers.

    ``ca_root``: the DER of the CA's root; ``token_key``: the workload-token key; ``token``:
    the admin token, which peers share (sent on peer calls). Only their fingerprints are
    published."""

    def __init__(
        self, client: EtcdClient, prefix: str, ca_root: bytes, token_key: bytes, token: str
    ) -> None:
        self.client = client
        self.me = Replica(
            name="",
            api="",
            xds_host="",
            xds_port=0,
            ca=hashlib.sha256(ca_root).hexdigest(),
            token_key=key_fingerprint(token_key),
            admin=admin_fingerprint(token),
        )
        self.token = token
        self._prefix = (prefix + REPLICAS).encode()
        self._lease = 0
        self._session: aiohttp.ClientSession | None = None

    async def check(self) -> None:
        """:class:`Mismatch` when a live peer's CA, workload-token key or admin token is
        not this replica's (:class:`StoreError` when etcd does not answer)."""
        for peer in await self.peers():
            problem = mismatch(self.me, peer)
            if problem:
                raise Mismatch(problem)

    async def start(self, host: str, api_port: int, xds_port: int) -> None:
        """Register as the replica at ``host`` with these ports, then :meth:`check` again
        (unregistering when it fails): two replicas that start at once with different CAs
        both see the other, and both refuse."""
        name = host_port(host, api_port)
        self.me = replace(
            self.me, name=name, api=f"http://{name}", xds_host=host, xds_port=xds_port
        )
        await self._register()
        try:
            await self.check()
        except BaseException:
            await self.stop()
            raise
        log.info("replica %s registered (xDS %s:%d)", name, host, xds_port)

    @property
    def _key(self) -> bytes:
        return self._prefix + self.me.name.encode()

    async def _register(self) -> None:
        """Write this replica's key under a new lease. A write that fails ends that lease
        again: kept alive while holding nothing, it would stop :meth:`run` from ever
        writing the key again."""
        lease, _ = await self.client.lease_grant(LEASE_TTL)
        try:
            await self.client.txn([], [put(self._key, self.me.to_json(), lease)])
        except StoreError:
            with contextlib.suppress(StoreError):
                await self.client.lease_revoke(lease)
            raise
        self._lease = lease

    async def run(self) -> None:
        """Keep the lease alive for ever; register again if it lapsed (etcd was away longer
        than its TTL: peers stopped listing this replica meanwhile)."""
        keeper = self.client.keepalive()
        try:
            while True:
                await asyncio.sleep(REFRESH_EVERY)
                try:
                    if await keeper.refresh(self._lease) <= 0:
                        log.warning("replica lease lapsed; registering again")
                        await self._register()
                except StoreError as e:
                    log.warning("replica lease not refreshed: %s", e)
        finally:
            keeper.close()

    async def stop(self) -> None:
        """Unregister (revoke the lease: peers stop listing this replica at once)."""
        if self._lease:
            with contextlib.suppress(StoreError):
                await self.client.lease_revoke(self._lease)
            self._lease = 0
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def everyone(self) -> list[Replica]:
        """Every live replica, this one included, by name. :class:`StoreError` when etcd
        does not answer."""
        try:
            _, kvs = await self.client.range_prefix(self._prefix)
        except EtcdError as e:
            raise StoreError(f"cannot list the replicas: {e}") from e
        found = (Replica.from_json(kv.value) for kv in kvs)
        return sorted((r for r in found if r is not None), key=lambda r: r.name)

    async def peers(self) -> list[Replica]:
        """Every other live replica (every live one before :meth:`start`)."""
        return [r for r in await self.everyone() if r.name != self.me.name]

    async def get(
        self, peer: Replica, path: str, query: dict[str, Any], timeout: float
    ) -> tuple[int, dict[str, Any]]:
        """``GET path?query`` on ``peer`` with the shared admin token: ``(status, body)``.
        OSError or TimeoutError when it does not answer."""
        if self._session is None:
            self._session = aiohttp.ClientSession()
        try:
            async with self._session.get(
                peer.api + path,
                params={k: str(v) for k, v in query.items()},
                headers={"Authorization": f"Bearer {self.token}"},
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as response:
                body = await response.json(content_type=None)
        except aiohttp.ClientError as e:
            raise OSError(str(e) or type(e).__name__) from e
        except ValueError as e:
            raise OSError(f"answered no JSON ({e})") from e
        return response.status, body if isinstance(body, dict) else {}
