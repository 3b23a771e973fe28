"""The push path without a network: bursts coalesce, the latest snapshot wins, and an
endpoint-only change touches only endpoints."""

from __future__ import annotations

import asyncio

from tsunagi.api import load_documents
from tsunagi.controlplane.push import Debounce, Pusher
from tsunagi.mesh import Node, World
from tsunagi.registry.instances import Instance
from tsunagi.store import Contents, MemoryStore, Record
from tsunagi.xds import resources as rs
from tsunagi.xds.cache import SnapshotCache
from tsunagi.xds.resources import Snapshot
from tsunagi.xds.translate import translate

from .examples import instance, instance_document

META = {
    "namespace": "default",
    "service": "client",
    "outbound_port": 15001,
    "inbound": {"80": {"listen": 15006, "app": 8080}},
}


class RecordingStream:
    def __init__(self) -> None:
        self.snapshots: list[Snapshot] = []

    def set_snapshot(self, snapshot: Snapshot) -> None:
        self.snapshots.append(snapshot)


async def test_a_burst_of_changes_becomes_one_push_with_the_latest_state() -> None:
    store = MemoryStore()
    cache = SnapshotCache()
    pusher = Pusher(store, cache, Debounce(quiet=0.02, max_delay=0.5))
    stream = RecordingStream()
    cache.connect("client.default", META, stream)
    task = asyncio.create_task(pusher.run())
    try:
        for i in range(20):
            inst = instance(f"reviews-{i}")
            await store.commit([(inst.key, inst.to_document())])
        await asyncio.wait_for(_until(lambda: pusher.processed == 20), 5)
    finally:
        task.cancel()
    pushes = stream.snapshots[1:]  # the first one is the snapshot given on connect
    assert 1 <= len(pushes) <= 2, [s.revision for s in pushes]
    last = pushes[-1]
    assert last.revision == 20
    cla = last.of(rs.ENDPOINT)["outbound|9080||reviews.default.svc.cluster.local"]
    assert cla.body.value.count(b"127.0.0.1") == 20


async def _until(check) -> None:  # type: ignore[no-untyped-def]
    while not check():
        await asyncio.sleep(0.005)


def _versions(snap: Snapshot, type_url: str) -> dict[str, str]:
    return {n: r.version for n, r in snap.of(type_url).items()}


def test_endpoint_only_change_changes_only_endpoints_of_that_service() -> None:
    node = Node.from_metadata("client.default", META)
    base = [instance("reviews-a"), instance("ratings-a", "ratings")]
    before = translate(World.build(1, [], base), node)
    after = translate(World.build(2, [], [*base, instance("reviews-b")]), node)
    for t in (rs.CLUSTER, rs.LISTENER, rs.ROUTE):
        assert _versions(before, t) == _versions(after, t)
    changed = {
        n
        for n, v in _versions(after, rs.ENDPOINT).items()
        if _versions(before, rs.ENDPOINT)[n] != v
    }
    assert changed == {"outbound|9080||reviews.default.svc.cluster.local"}


# reviews v1's sidecar takes no mTLS (EDS marks its endpoint tlsMode: disabled); v2's does.
V1_PLAIN = load_documents("""
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: v1-plain, namespace: default}
spec:
  selector: {matchLabels: {version: v1}}
  mtls: {mode: DISABLE}
""")


def test_the_first_sidecar_taking_mtls_changes_endpoints_not_clusters() -> None:
    """Auto mTLS is decided by the service (Istio's rule), so the first endpoint marked
    ``tlsMode: istio`` (or the last one going) is an EDS-only change, as any endpoint is."""
    node = Node.from_metadata("client.default", META)
    base = [instance("reviews-a"), instance("ratings-a", "ratings")]
    plain = translate(World.build(1, V1_PLAIN, base), node)
    mixed = translate(World.build(2, V1_PLAIN, [*base, instance("reviews-b", version="v2")]), node)
    for t in (rs.CLUSTER, rs.LISTENER, rs.ROUTE):
        assert _versions(plain, t) == _versions(mixed, t)
    assert _versions(plain, rs.ENDPOINT) != _versions(mixed, rs.ENDPOINT)
    # Both transport sockets are there from the start, the plain one for v1's endpoint.
    cluster = plain.of(rs.CLUSTER)["outbound|9080||reviews.default.svc.cluster.local"]
    assert b"tlsMode-disabled" in cluster.body.value and b"raw_buffer" in cluster.body.value
    assert b"envoy.transport_sockets.tls" in cluster.body.value


def test_translation_is_deterministic() -> None:
    node = Node.from_metadata("client.default", META)
    insts = [instance("reviews-a"), instance("reviews-b", version="v2")]
    one = translate(World.build(1, [], insts), node)
    two = translate(World.build(1, [], list(reversed(insts))), node)
    for t in rs.PUSH_ORDER:
        assert one.version(t) == two.version(t)


def _registered() -> list[Instance]:
    shop = Instance.from_document(instance_document("cart-1", "cart", namespace="shop"))
    return [instance("reviews-1"), shop]


def _handed_ready_routes(pusher: Pusher, cache: SnapshotCache) -> None:
    """A proxy of each registered namespace connecting now is handed the routes built
    ahead of it, not routes built on the event loop as it arrives."""
    ready = {scope.namespace: out for scope, out in pusher._outbound.items()}
    assert set(ready) == {"default", "shop"}
    for namespace, node_id in (("default", "client.default"), ("shop", "cart-1.shop")):
        stream = RecordingStream()
        cache.connect(node_id, {**META, "namespace": namespace}, stream)
        assert stream.snapshots[0].of(rs.ROUTE) is ready[namespace].routes


async def test_the_last_push_of_a_burst_readies_the_routes_of_registered_workloads() -> None:
    """A mesh populated before its proxies start: the push that ends the registrations
    builds their namespaces' routes."""
    store = MemoryStore()
    cache = SnapshotCache()
    pusher = Pusher(store, cache, Debounce(quiet=0.005, max_delay=0.05))
    assert pusher._outbound == {}
    await store.commit([(i.key, i.to_document()) for i in _registered()])
    task = asyncio.create_task(pusher.run())
    try:
        await asyncio.wait_for(_until(lambda: pusher.processed == 1), 5)
    finally:
        task.cancel()
    _handed_ready_routes(pusher, cache)


async def test_a_restarted_control_plane_has_the_routes_of_stored_workloads_ready() -> None:
    """After a restart every proxy reconnects at once: their namespaces' routes are built
    before the xDS port opens (the Pusher is made first), with no push needed."""
    store = MemoryStore()
    await store.commit([(i.key, i.to_document()) for i in _registered()])
    cache = SnapshotCache()
    _handed_ready_routes(Pusher(store, cache), cache)


def test_a_push_that_more_changes_follow_leaves_unconnected_workloads_for_later() -> None:
    """During a burst of registrations every push would rebuild them (the routing changes
    with each new service): only a push no change followed builds them."""
    store = MemoryStore()
    pusher = Pusher(store, SnapshotCache())
    contents = Contents(1, {i.key: Record(*i.key, i.to_document(), 1) for i in _registered()})
    busy = pusher._compute(contents, {}, {}, {}, moved=lambda: True)
    assert busy.outbound == {}
    last = pusher._compute(contents, {}, {}, {}, moved=lambda: False)
    assert {scope.namespace for scope in last.outbound} == {"default", "shop"}
