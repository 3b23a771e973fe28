"""The etcd store against real etcd: one transaction per commit, etcd's revisions, another
replica's writes seen through the watch, recovery from compaction, and a leader killed with
-9 under writes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.etcd_fixtures import Cluster, etcd_cluster, leader
from tsunagi.store import StoreLimit, open_store
from tsunagi.store.etcd import EtcdClient, EtcdError, EtcdStore, parse_url
from tsunagi.store.etcd.client import TxnResult, Uncertain, mod_revision_is, put

VS = ("VirtualService", "default", "reviews")
DR = ("DestinationRule", "default", "reviews")


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[Cluster]:
    yield from etcd_cluster(tmp_path)


@contextlib.asynccontextmanager
async def opened(
    cluster: Cluster, endpoints: list[tuple[str, int]] | None = None
) -> AsyncIterator[EtcdStore]:
    store = EtcdStore(endpoints or cluster.endpoints)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


@contextlib.asynccontextmanager
async def client(cluster: Cluster) -> AsyncIterator[EtcdClient]:
    c = EtcdClient(cluster.endpoints)
    try:
        yield c
    finally:
        await c.close()


async def test_open_store_takes_an_etcd_url(etcd: Cluster, tmp_path: Path) -> None:
    store = open_store(etcd.url + "/mesh-a", tmp_path)
    assert isinstance(store, EtcdStore)
    await store.open()
    try:
        await store.commit([(VS, {"a": 1})])
    finally:
        await store.close()
    async with client(etcd) as c:
        _, kv = await c.get(b"/mesh-a/VirtualService/default/reviews")
    assert kv is not None and kv.value == b'{"a": 1}'
    with pytest.raises(ValueError, match="HOST:PORT"):
        open_store("etcd://127.0.0.1", tmp_path)


def test_store_urls() -> None:
    assert parse_url("etcd://10.0.0.1:2379,db.example:2379") == (
        [("10.0.0.1", 2379), ("db.example", 2379)],
        "/tsunagi/",
    )
    assert parse_url("etcd://[::1]:2379/mesh/a/") == ([("::1", 2379)], "/mesh/a/")
    for bad in ("etcd://", "etcd://10.0.0.1", "etcd://http://10.0.0.1:2379", "etcd://h:99999"):
        with pytest.raises(ValueError, match="etcd"):
            parse_url(bad)


async def test_revisions_are_etcds(etcd: Cluster) -> None:
    async with opened(etcd) as store, client(etcd) as c:
        # Writes outside the store's prefix move etcd's revision too: the store follows etcd.
        await c.txn([], [put(b"/elsewhere/x", b"1"), put(b"/elsewhere/y", b"2")])
        rev = await store.commit([(VS, {"a": 1}), (DR, {"b": 2})])
        current, kv = await c.get(b"/tsunagi/VirtualService/default/reviews")
        assert kv is not None and kv.mod_revision == rev == current
        contents = store.contents()
        assert contents.revision == rev
        assert {k: r.revision for k, r in contents.records.items()} == {VS: rev, DR: rev}
        rev2 = await store.commit([(VS, {"a": 2})], [DR])
        assert rev2 > rev
        assert store.contents().records[VS].document == {"a": 2}
        assert store.contents().records[VS].revision == rev2
        assert DR not in store.contents().records


async def test_a_failed_transaction_changes_nothing(etcd: Cluster) -> None:
    async with opened(etcd) as store, client(etcd) as c:
        rev = await store.commit([(VS, {"a": 1})])
        # The client: a guard that does not hold applies none of the writes.
        result = await c.txn(
            [mod_revision_is(b"/tsunagi/VirtualService/default/reviews", rev - 1)],
            [
                put(b"/tsunagi/VirtualService/default/reviews", b'{"a": 9}'),
                put(b"/tsunagi/x/y/z", b"{}"),
            ],
        )
        assert not result.succeeded
        # The store: one commit is one transaction; etcd refuses one with too many
        # operations (--max-txn-ops, 128 by default) and none of its writes land, the
        # delete listed first included.
        many = [(("DestinationRule", "default", f"dr{i}"), {"i": i}) for i in range(200)]
        with pytest.raises(StoreLimit, match="max-txn-ops"):
            await store.commit(many, [VS])
        assert store.contents().revision == rev
        assert store.contents().records[VS].document == {"a": 1}
        total, kvs = await c.range_prefix(b"/tsunagi/")
        assert total == rev
        assert [kv.key for kv in kvs] == [
            b"/tsunagi/.commit",
            b"/tsunagi/VirtualService/default/reviews",
        ]


async def test_another_replicas_writes_show_and_wake_waiters(etcd: Cluster) -> None:
    async with opened(etcd) as first, opened(etcd) as second:
        start = first.contents().revision
        waiter = asyncio.create_task(first.wait_for_change(start))
        await asyncio.sleep(0.1)
        assert not waiter.done()
        rev = await second.commit([(VS, {"from": "second"})])
        assert await asyncio.wait_for(waiter, 10) == rev
        assert first.contents().records[VS].document == {"from": "second"}
        # And back: the second replica's later write built on the first's, no conflict lost.
        rev2 = await first.commit([(DR, {"from": "first"})], [VS])
        await asyncio.wait_for(second.wait_for_change(rev2 - 1), 10)
        assert set(second.contents().records) == {DR}
        assert second.contents().revision == rev2


async def test_a_commit_whose_reply_is_lost_lands_exactly_once(
    etcd: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    member = etcd.members[0]
    assert member.proc is not None
    store = EtcdStore(etcd.endpoints, timeout=3)
    await store.open()
    try:
        await store.commit([(VS, {"v": 1})])
        before = store.client
        _, mark = await before.get(b"/tsunagi/.commit")
        assert mark is not None
        # etcd frozen: the transaction is sent and times out with no answer. It may still be
        # applied once etcd resumes (the request waits in its socket), or not.
        member.proc.send_signal(signal.SIGSTOP)
        try:
            commit = asyncio.create_task(store.commit([(DR, {"v": 1})]))
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 30
            while "outcome unknown" not in caplog.text:
                assert not commit.done(), commit.exception()
                assert loop.time() < deadline, "the commit never timed out"
                await asyncio.sleep(0.05)
        finally:
            member.proc.send_signal(signal.SIGCONT)
        rev = await asyncio.wait_for(commit, 30)
        # Exactly one commit landed, the one reported, whichever way it went.
        _, after = await before.get(b"/tsunagi/.commit")
        assert after is not None
        assert after.version == mark.version + 1 and after.mod_revision == rev
        assert store.contents().records[DR].revision == rev
    finally:
        await store.close()


class LosesFirstReply(EtcdClient):
    """A client whose first transaction reaches etcd and commits, but whose reply is lost
    on the way back (as when a leader dies between committing and answering)."""

    lost = False

    async def txn(self, compare: Any, success: Any, failure: Any = ()) -> TxnResult:
        result = await super().txn(compare, success, failure)
        if not self.lost:
            self.lost = True
            raise Uncertain("the reply was lost")
        return result


async def test_a_commit_that_landed_but_lost_its_reply_is_not_sent_again(
    etcd: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "tsunagi.store.etcd")
    async with opened(etcd) as other:
        await other.commit([(VS, {"v": 1})])
        store = EtcdStore(etcd.endpoints, client=LosesFirstReply(etcd.endpoints))
        await store.open()
        try:
            _, mark = await store.client.get(b"/tsunagi/.commit")
            assert mark is not None
            rev = await store.commit([(DR, {"v": 1})])
            assert store.client.lost and "had landed" in caplog.text
            _, after = await store.client.get(b"/tsunagi/.commit")
            assert after is not None
            assert after.version == mark.version + 1 and after.mod_revision == rev
            assert store.contents().records[DR].revision == rev
            # The next commit goes through as usual, guarded on the one that landed.
            rev2 = await store.commit([(DR, {"v": 2})])
            await asyncio.wait_for(other.wait_for_change(rev2 - 1), 10)
            assert other.contents().records[DR].document == {"v": 2}
        finally:
            await store.close()


async def test_leases_keep_keys_while_refreshed_and_drop_them_when_revoked(
    etcd: Cluster,
) -> None:
    """The primitives the registry's next stage builds on (see the store module's docstring)."""
    async with client(etcd) as c:
        kept, ttl = await c.lease_grant(1)
        assert ttl >= 1
        revoked, _ = await c.lease_grant(60)
        await c.txn([], [put(b"/leased/kept", b"1", kept), put(b"/leased/revoked", b"1", revoked)])
        keeper = c.keepalive()
        try:
            loop = asyncio.get_running_loop()
            until = loop.time() + 3  # three TTLs: without the refreshes the key would be gone
            while loop.time() < until:
                assert await keeper.refresh(kept) >= 1
                await asyncio.sleep(0.2)
            assert (await c.get(b"/leased/kept"))[1] is not None
            await c.lease_revoke(revoked)
            assert (await c.get(b"/leased/revoked"))[1] is None
            assert await keeper.refresh(revoked) == 0  # a revoked lease is gone
        finally:
            keeper.close()
        # Left alone, the lease lapses and etcd deletes its key.
        deadline = loop.time() + 15
        while (await c.get(b"/leased/kept"))[1] is not None:
            assert loop.time() < deadline, "the unrefreshed lease did not expire"
            await asyncio.sleep(0.1)


class Gate:
    """A TCP relay to one etcd member that the test can cut (every connection closed, new
    ones refused) and heal: a replica partitioned away from etcd, then back."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.open = True
        self.writers: list[asyncio.StreamWriter] = []
        self.relays: set[asyncio.Task[object]] = set()
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.open:
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self.relays.add(task)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writers += [writer, up_writer]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def cut(self) -> None:
        self.open = False
        for w in self.writers:
            w.close()
        self.writers.clear()

    async def close(self) -> None:
        self.cut()
        # Closed connections end their relays; waiting for them keeps them from being
        # cancelled mid-read when the server closes.
        if self.relays:
            await asyncio.wait(self.relays, timeout=10)
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@contextlib.asynccontextmanager
async def cut_off(cluster: Cluster) -> AsyncIterator[tuple[EtcdStore, EtcdStore, Gate, int]]:
    """``(behind, other, gate, first)``: two stores that both hold VS and DR as committed at
    revision ``first``; ``behind`` reaches etcd through ``gate``, cut now."""
    gate = Gate(cluster.members[0].client_port)
    port = await gate.start()
    try:
        async with opened(cluster, [("127.0.0.1", port)]) as behind, opened(cluster) as other:
            first = await other.commit([(VS, {"v": 1}), (DR, {"v": 1})])
            await asyncio.wait_for(behind.wait_for_change(first - 1), 10)
            gate.cut()
            yield behind, other, gate, first
    finally:
        await gate.close()


async def test_a_replica_behind_a_compaction_relists(etcd: Cluster) -> None:
    async with cut_off(etcd) as (behind, other, gate, _):
        # While it cannot hear: a delete, an update, and the history compacted away.
        rev = await other.commit([(VS, {"v": 2})], [DR])
        async with client(etcd) as c:
            # Past the revision `behind` resumes from (etcd drops delete tombstones at the
            # compaction revision itself, so a watch from exactly there would miss them).
            last = (await c.txn([], [put(b"/elsewhere/x", b"1")])).revision
            await c.compact(last)
        assert DR in behind.contents().records
        gate.open = True
        await asyncio.wait_for(behind.wait_for_change(rev - 1), 20)
        assert behind.contents().revision == last  # re-listed at etcd's revision
        assert set(behind.contents().records) == {VS}
        assert behind.contents().records[VS].document == {"v": 2}
        # And it follows on from there.
        rev2 = await other.commit([(DR, {"v": 3})])
        await asyncio.wait_for(behind.wait_for_change(rev2 - 1), 10)
        assert behind.contents().records[DR].document == {"v": 3}


async def test_a_delete_at_exactly_the_compaction_revision_is_not_missed(etcd: Cluster) -> None:
    """etcd drops a delete's tombstone when it compacts at the delete's own revision, and a
    watch may start there: a replica resuming from the revision after the last it saw must
    not take the silence for "nothing was deleted"."""
    async with cut_off(etcd) as (behind, other, gate, first):
        rev = await other.commit([], [DR])
        assert rev == first + 1  # the very revision `behind` resumes from
        async with client(etcd) as c:
            await c.compact(rev)
        gate.open = True
        await asyncio.wait_for(behind.wait_for_change(first), 20)
        assert set(behind.contents().records) == {VS}


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    yield from etcd_cluster(tmp_path, 3)


async def test_leader_killed_writes_resume_and_nothing_acknowledged_is_lost(
    cluster: Cluster,
) -> None:
    doomed = await leader(cluster)
    async with opened(cluster) as store:
        acknowledged: dict[int, int] = {}
        failed = 0
        in_flight = 0  # the write awaiting etcd now (0: none)
        killed_during = 0  # the write in flight when the leader died

        async def write_until_resumed() -> None:
            nonlocal failed, in_flight
            i = 0
            while not killed_during or sum(k > killed_during for k in acknowledged) < 20:
                i += 1
                in_flight = i
                try:
                    acknowledged[i] = await store.commit([(_config(i), {"i": i})])
                except EtcdError:
                    failed += 1
                    in_flight = 0
                    await asyncio.sleep(0.1)

        async def kill_leader_mid_write() -> None:
            nonlocal killed_during
            while len(acknowledged) < 20:
                await asyncio.sleep(0.01)
            # The writer awaits nothing but commits, so one is on its way to etcd now: the
            # leader dies under it, not between two writes.
            killed_during = in_flight
            assert killed_during, "no write was in flight"
            doomed.kill()

        writer = asyncio.create_task(write_until_resumed())
        try:
            await asyncio.wait_for(kill_leader_mid_write(), 30)
            await asyncio.wait_for(asyncio.shield(writer), 60)
        except TimeoutError:
            raise AssertionError(f"writes did not resume ({failed} failed)") from None
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
        # Every acknowledged write is its own commit, in order.
        revisions = [acknowledged[i] for i in sorted(acknowledged)]
        assert revisions == sorted(set(revisions))
        survivors = [("127.0.0.1", m.client_port) for m in cluster.members if m is not doomed]
        async with opened(cluster, survivors) as fresh:
            stored = fresh.contents().records
            for i, rev in acknowledged.items():
                record = stored[_config(i)]
                assert record.document == {"i": i} and record.revision == rev


def _config(i: int) -> tuple[str, str, str]:
    return ("ConfigMap", "default", f"k{i}")


async def test_reads_go_on_to_another_member_while_one_hangs(cluster: Cluster) -> None:
    """A member that stops answering but keeps its connections open (SIGSTOP here; a host
    cut off without resets looks the same until keepalive gives up on it) must not fail
    reads that the other members can answer."""
    lead = await leader(cluster)
    hung = next(m for m in cluster.members if m is not lead)
    assert hung.proc is not None
    async with client(cluster) as c:
        await c.txn([], [put(b"/k", b"1")])
        for _ in range(6):  # round robin: connected to every member, each has answered
            assert (await c.get(b"/k"))[1] is not None
        hung.proc.send_signal(signal.SIGSTOP)
        try:
            for _ in range(6):  # two of these go to the hung member first
                _, kv = await c.get(b"/k")
                assert kv is not None and kv.value == b"1"
        finally:
            hung.proc.send_signal(signal.SIGCONT)
