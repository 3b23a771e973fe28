"""The registry on etcd leases, against real etcd: two registries on one prefix (two
control-plane replicas) share every instance. An instance registered through one is kept
alive by heartbeats through the other, goes when heartbeats stop (etcd deletes it, both see
it), goes at once when the other deregisters it, and survives a restart of the replica that
registered it."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.etcd_fixtures import Cluster, Member, etcd_cluster, eventually, leader, registry_on
from tsunagi.registry import KIND, Instance, Registry
from tsunagi.store.base import Leases, StoreError
from tsunagi.store.etcd import EtcdClient, EtcdStore
from tsunagi.store.etcd.client import KeyValue

from .examples import instance_document

TTL = 1.0
"""The registries' heartbeat TTL: etcd grants whole seconds, and one is its least here."""
PREFIX = "/reg/"
NAME = "reviews-v1-a"
KEY = (KIND, "default", NAME)


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[Cluster]:
    yield from etcd_cluster(tmp_path)


def replica(cluster: Cluster) -> contextlib.AbstractAsyncContextManager[Registry]:
    """A registry on its own etcd store, started as ``tsunagi up`` starts one."""
    return registry_on(cluster, PREFIX, TTL)


def instance(**fields: object) -> Instance:
    return Instance.from_document(instance_document(NAME, namespace="default", **fields))


def names(registry: Registry) -> list[str]:
    return [i.name for i in registry.instances()]


async def in_etcd(cluster: Cluster, key: bytes) -> KeyValue | None:
    client = EtcdClient(cluster.endpoints)
    try:
        return (await client.get(key))[1]
    finally:
        await client.close()


async def heartbeats(registry: Registry, seconds: float, *watching: Registry) -> None:
    """Heartbeat ``NAME`` through ``registry`` for ``seconds`` (several TTLs), checking at
    each beat that it is alive and that every registry in ``watching`` lists it and expires
    nothing of its own accord."""
    loop = asyncio.get_running_loop()
    until = loop.time() + seconds
    while loop.time() < until:
        assert await registry.heartbeat("default", NAME)
        for r in (registry, *watching):
            assert names(r) == [NAME]
            assert await r.expire() == []
        await asyncio.sleep(TTL / 4)


async def test_heartbeats_through_one_replica_keep_what_another_registered(
    etcd: Cluster,
) -> None:
    async with replica(etcd) as a, replica(etcd) as b:
        revision = await a.register(instance())
        # One transaction: the instance, attached to its lease, and the store's commit key.
        kv = await in_etcd(etcd, f"{PREFIX}{KIND}/default/{NAME}".encode())
        commit = await in_etcd(etcd, f"{PREFIX}.commit".encode())
        assert kv is not None and kv.lease != 0
        assert commit is not None and kv.mod_revision == commit.mod_revision == revision
        await eventually(lambda: names(b) == [NAME], "b to see the registration")

        await heartbeats(b, 4 * TTL, a)  # only b hears from the agent

        # The agent stops: etcd ends the lease, and both replicas see the instance go.
        await eventually(lambda: names(a) == names(b) == [], "the lapsed lease to remove it")
        assert await in_etcd(etcd, f"{PREFIX}{KIND}/default/{NAME}".encode()) is None
        # A heartbeat now tells the agent to register again (404 in the API), and then
        # heartbeats through the other replica keep the new registration.
        assert not await b.heartbeat("default", NAME)
        assert not await a.heartbeat("default", NAME)
        # b, which the agent heartbeated last, reports the expiry (logged, counted); a not.
        assert await b.expire() == [KEY] and await a.expire() == []
        await b.register(instance())
        await eventually(lambda: names(a) == [NAME], "a to see the new registration")
        await heartbeats(a, 2 * TTL, b)


async def test_a_heartbeat_on_a_lapsed_lease_asks_for_registration(
    etcd: Cluster,
) -> None:
    async with replica(etcd) as a:
        await a.register(instance())
        kv = await in_etcd(etcd, f"{PREFIX}{KIND}/default/{NAME}".encode())
        assert kv is not None
        # The lease ends behind the registry's back (as when it lapses): whether or not the
        # watch has brought the delete yet, the heartbeat says to register again.
        client = EtcdClient(etcd.endpoints)
        try:
            await client.lease_revoke(kv.lease)
        finally:
            await client.close()
        assert not await a.heartbeat("default", NAME)
        await eventually(lambda: names(a) == [], "the revoked lease's delete to arrive")
        await a.register(instance())
        assert await a.heartbeat("default", NAME)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    yield from etcd_cluster(tmp_path, 3)


async def test_a_quorum_loss_longer_than_the_ttl_drops_nobody(cluster: Cluster) -> None:
    """While etcd has no quorum a heartbeat fails as the store's error (503: try again), not
    as "unknown instance" (404: register again); once a leader is elected etcd gives every
    lease a fresh TTL, so the instance outlives an outage several TTLs long. (A leader that
    is itself paused that long is another matter: resumed, it revokes the leases it finds
    expired before it learns it lost the lead; see the README.)"""
    ttl = 2.0
    async with registry_on(cluster, PREFIX, ttl) as a:
        await a.register(instance())
        doomed = await leader(cluster)
        doomed.kill()
        survivor = await leader_after(cluster)
        hung = next(m for m in cluster.members if m not in (doomed, survivor))
        assert hung.proc is not None
        hung.proc.send_signal(signal.SIGSTOP)  # the survivor leads nobody: no quorum
        failed = 0
        try:
            loop = asyncio.get_running_loop()
            until = loop.time() + 3 * ttl
            while loop.time() < until:
                try:
                    assert await a.heartbeat("default", NAME), "told to register again"
                except StoreError:
                    failed += 1
                await asyncio.sleep(ttl / 3)
        finally:
            hung.proc.send_signal(signal.SIGCONT)
        assert failed, "no heartbeat failed without quorum"
        renewed = False
        loop = asyncio.get_running_loop()
        until = loop.time() + 20
        while not renewed:
            assert loop.time() < until, "heartbeats did not resume"
            with contextlib.suppress(StoreError):  # a leader is being elected
                renewed = await a.heartbeat("default", NAME)
                assert renewed, "the lease lapsed across the outage"
            await asyncio.sleep(0.1)
        assert names(a) == [NAME]
        assert await a.expire() == []


async def leader_after(cluster: Cluster) -> Member:
    """The leader elected once the old one is gone (a bound of 20 s, not a measure)."""
    loop = asyncio.get_running_loop()
    until = loop.time() + 20
    while True:
        with contextlib.suppress(AssertionError, StoreError):
            return await leader(cluster)
        assert loop.time() < until, "no leader was elected"
        await asyncio.sleep(0.1)


async def test_deregistering_through_another_replica_removes_it_at_once(etcd: Cluster) -> None:
    async with replica(etcd) as a, replica(etcd) as b:
        await a.register(instance())
        await eventually(lambda: names(b) == [NAME], "b to see the registration")
        kv = await in_etcd(etcd, f"{PREFIX}{KIND}/default/{NAME}".encode())
        assert kv is not None and kv.lease != 0

        assert await b.deregister("default", NAME)
        assert names(b) == []  # b reads its own delete: no waiting for the TTL
        assert await in_etcd(etcd, f"{PREFIX}{KIND}/default/{NAME}".encode()) is None
        await eventually(lambda: names(a) == [], "a to see the delete")
        client = EtcdClient(etcd.endpoints)
        try:
            assert await client.keepalive().refresh(kv.lease) == 0  # the lease is revoked
        finally:
            await client.close()
        assert not await b.deregister("default", NAME)
        assert not await a.heartbeat("default", NAME)


async def test_a_restarted_replica_drops_no_live_instance(etcd: Cluster) -> None:
    async with replica(etcd) as b:
        async with replica(etcd) as a:
            await a.register(instance())
        kv = await in_etcd(etcd, f"{PREFIX}{KIND}/default/{NAME}".encode())
        assert kv is not None
        # a stops and starts again (its memory is gone) while the agent heartbeats to it.
        async with replica(etcd) as restarted:
            assert names(restarted) == [NAME]
            await heartbeats(restarted, 3 * TTL, b)
        after = await in_etcd(etcd, f"{PREFIX}{KIND}/default/{NAME}".encode())
        assert after == kv  # the restart rewrote nothing: same revision, same lease


async def test_an_instance_stored_without_a_lease_gets_one_on_start(etcd: Cluster) -> None:
    # As a control plane before leases left it: a plain document, whose agent is gone.
    store = EtcdStore(etcd.endpoints, PREFIX)
    await store.open()
    try:
        await store.commit([(KEY, instance().to_document())])
    finally:
        await store.close()
    async with replica(etcd) as a:
        kv = await in_etcd(etcd, f"{PREFIX}{KIND}/default/{NAME}".encode())
        assert kv is not None and kv.lease != 0
        assert names(a) == [NAME]
        await eventually(lambda: names(a) == [], "the adopted instance's lease to lapse")


async def test_registering_again_renews_and_a_change_writes_under_a_new_lease(
    etcd: Cluster,
) -> None:
    async with replica(etcd) as a:
        first = await a.register(instance())
        kv = await in_etcd(etcd, f"{PREFIX}{KIND}/default/{NAME}".encode())
        assert await a.register(instance()) == first  # nothing written
        changed = await a.register(instance(locality="eu/west"))
        assert changed > first
        now = await in_etcd(etcd, f"{PREFIX}{KIND}/default/{NAME}".encode())
        assert kv is not None and now is not None
        assert now.lease not in (0, kv.lease) and b"eu/west" in now.value
        assert [i.locality for i in a.instances()] == ["eu/west"]


async def test_peer_protocols_follow_the_other_replicas_registrations_and_expiry(
    etcd: Cluster,
) -> None:
    async with replica(etcd) as a, replica(etcd) as b:
        grpc = Instance.from_document(instance_document("a", namespace="default", protocol="GRPC"))
        http = Instance.from_document(instance_document("b", namespace="default"))
        await a.register(grpc)
        await b.register(http)
        await eventually(lambda: len(a.instances()) == 2, "a to see both")
        assert b.peer_protocols(http) == ["GRPC"]
        assert a.peer_protocols(grpc) == ["HTTP"]
        # Only b's instance heartbeats: a's lapses, and b's index forgets its protocol.
        loop = asyncio.get_running_loop()
        until = loop.time() + 15
        while len(b.instances()) != 1:
            assert loop.time() < until, "a's instance did not lapse"
            assert await b.heartbeat("default", "b")
            await asyncio.sleep(TTL / 4)
        assert b.peer_protocols(http) == []
        assert b.peer_protocols(grpc) == ["HTTP"]


def test_only_stores_that_expire_documents_themselves_hold_leases(tmp_path: Path) -> None:
    from tsunagi.store import MemoryStore, SqliteStore

    # Memory and SQLite keep today's in-memory leases (tests/unit/test_registry.py).
    assert not isinstance(MemoryStore(), Leases)
    assert not isinstance(SqliteStore(tmp_path / "db"), Leases)
    assert isinstance(EtcdStore([("127.0.0.1", 2379)]), Leases)
