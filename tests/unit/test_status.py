"""Proxy status and ``apply --wait`` from the streams' ACK bookkeeping."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tsunagi.controlplane.push import PushErrors
from tsunagi.controlplane.status import _Cursor, _settled, node_status, wait_for_acks
from tsunagi.xds.cache import NodeEntry, SnapshotCache
from tsunagi.xds.protocol import DeltaStream, SotwStream
from tsunagi.xds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE

from .test_xds_protocol import MODES, FakeEnvoy, connected, world


class _Pusher:
    def __init__(self, processed: int) -> None:
        self.processed = processed
        self.errors = PushErrors()


def _entry(envoy: FakeEnvoy, node_id: str) -> NodeEntry:
    snap = envoy.stream.snapshot
    assert snap is not None
    return NodeEntry(node_id, {"service": "svc", "namespace": "ns"}, snap, envoy.stream)


def _cache(*entries: NodeEntry) -> SnapshotCache:
    cache = SnapshotCache()
    cache.nodes = {e.id: e for e in entries}
    return cache


def _push(cache: SnapshotCache, envoy: FakeEnvoy, node_id: str, revision: int) -> None:
    cache.nodes[node_id].snapshot = world(port=80 + revision, revision=revision)
    envoy.stream.set_snapshot(cache.nodes[node_id].snapshot)


@pytest.mark.parametrize("mode", MODES)
def test_node_status_of_a_synced_proxy(mode: type[SotwStream | DeltaStream]) -> None:
    envoy = connected(mode, world())
    status = node_status(_entry(envoy, "n1"))
    snap = world()
    assert status["synced"] and not status["nacked"]
    assert status["revision"] == 1
    assert status["types"]["CDS"] == {
        "state": "SYNCED",
        "acked": snap.version(CLUSTER),
        "expected": snap.version(CLUSTER),
        "message": None,
    }
    assert status["types"]["EDS"]["expected"] == snap.version(ENDPOINT, ["a", "b"])
    assert status["types"]["RDS"]["expected"] == snap.version(ROUTE, ["rt-l"])
    assert {t["state"] for t in status["types"].values()} == {"SYNCED"}


def test_node_status_stale_then_nacked() -> None:
    envoy = connected(SotwStream, world())
    entry = _entry(envoy, "n1")
    entry.snapshot = world(timeout=2, revision=2)
    envoy.stream.set_snapshot(entry.snapshot)
    status = node_status(entry)
    assert not status["synced"]
    assert status["types"]["CDS"]["state"] == "STALE"
    assert status["types"]["LDS"]["state"] == "SYNCED"
    envoy.reject[CLUSTER] = "bad cluster"
    envoy.run()
    status = node_status(entry)
    assert status["nacked"] and status["message"] == "CDS: bad cluster"
    assert status["types"]["CDS"]["state"] == "NACKED"
    assert status["types"]["LDS"]["expected"] == entry.snapshot.version(LISTENER)


def test_settled_resumes_at_the_unsettled_proxy() -> None:
    envoys = {f"n{i}": connected(SotwStream, world()) for i in range(3)}
    cache = _cache(*(_entry(e, n) for n, e in envoys.items()))
    cursor = _Cursor()
    assert _settled(cache, _Pusher(1), 1, cursor)
    assert not _settled(cache, _Pusher(1), 2, cursor)  # not even pushed yet
    assert cursor.node_id is None
    assert not _settled(cache, _Pusher(2), 2, cursor)  # nobody has revision 2
    assert cursor.node_id == "n0"
    for node_id, envoy in envoys.items():
        _push(cache, envoy, node_id, 2)
    assert not _settled(cache, _Pusher(2), 2, cursor)
    envoys["n0"].run()
    assert not _settled(cache, _Pusher(2), 2, cursor)
    assert cursor.node_id == "n1"
    envoys["n2"].run()
    assert not _settled(cache, _Pusher(2), 2, cursor)
    assert cursor.node_id == "n1"
    envoys["n1"].run()
    assert _settled(cache, _Pusher(2), 2, cursor)
    # A NACK settles a proxy too: it will not get any further by waiting.
    envoys["n1"].reject[ENDPOINT] = "bad endpoints"
    _push(cache, envoys["n1"], "n1", 3)
    assert not _settled(cache, _Pusher(3), 3, cursor)
    envoys["n1"].run()
    for node_id in ("n0", "n2"):
        _push(cache, envoys[node_id], node_id, 3)
        envoys[node_id].run()
    assert _settled(cache, _Pusher(3), 3, cursor)
    # A proxy that connected meanwhile (cursor pointing at a gone one) is still checked.
    del cache.nodes["n1"]
    cache.nodes["n3"] = _entry(connected(SotwStream, world()), "n3")
    assert not _settled(cache, _Pusher(3), 3, cursor)


async def test_wait_for_acks_returns_once_every_proxy_acked() -> None:
    envoys = {f"n{i}": connected(DeltaStream, world()) for i in range(2)}
    cache = _cache(*(_entry(e, n) for n, e in envoys.items()))
    pusher = _Pusher(2)
    for node_id, envoy in envoys.items():
        _push(cache, envoy, node_id, 2)
    waiter = asyncio.create_task(wait_for_acks(cache, pusher, 2))
    for envoy in envoys.values():
        await asyncio.sleep(0)
        assert not waiter.done()
        envoy.run()
        await cache.notify()
    result: dict[str, Any] = await asyncio.wait_for(waiter, 5)
    assert result["complete"]
    assert [p["id"] for p in result["proxies"]] == ["n0", "n1"]
    assert all(p["synced"] for p in result["proxies"])
