"""One resource whose translation fails never blocks the mesh.

Each test forces a failure in one piece of translation (a VirtualService's routes, a
service's clusters, one proxy's listeners, a stored document that no longer parses) and
checks that the failing piece is left out or keeps its last good output, that the failure is
reported on that resource and on the proxies it affects, and that everything else — other
resources, other proxies — still gets pushed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer
from envoy.config.route.v3 import route_pb2

from tsunagi.api import load_documents
from tsunagi.controlplane.http_api import Api
from tsunagi.controlplane.push import Debounce, Pusher
from tsunagi.mesh import World
from tsunagi.registry import Instance, Registry
from tsunagi.store import MemoryStore
from tsunagi.xds import resources as rs
from tsunagi.xds import translate as translate_pkg
from tsunagi.xds.cache import SnapshotCache
from tsunagi.xds.resources import Snapshot
from tsunagi.xds.translate import Memo, translate_outbound, translate_shared
from tsunagi.xds.translate.routes import RouteBuilder

RULES = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - match: [{headers: {end-user: {exact: jason}}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - route: [{destination: {host: reviews, subset: v1}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings, namespace: default}
spec:
  hosts: [ratings]
  http:
  - route: [{destination: {host: ratings}}]
    timeout: 3s
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
"""
REVIEWS = "reviews.default.svc.cluster.local"
RATINGS = "ratings.default.svc.cluster.local"


def _instances() -> list[Instance]:
    docs = [
        ("reviews-1", "reviews", "v1", 21001),
        ("reviews-2", "reviews", "v2", 21002),
        ("ratings-1", "ratings", "v1", 21003),
    ]
    return [
        Instance.from_document(
            {"name": n, "service": s, "port": 9080, "target_port": p, "labels": {"version": v}}
        )
        for n, s, v, p in docs
    ]


def _world(revision: int = 1, text: str = RULES) -> World:
    return World.build(revision, load_documents(text, "rules.yaml"), _instances())


@pytest.fixture
def broken_vs(monkeypatch: pytest.MonkeyPatch) -> Iterator[set[str]]:
    """Names of VirtualServices whose translation raises, as a bug would."""
    names: set[str] = set()
    original = RouteBuilder.vs_routes

    def vs_routes(self: RouteBuilder, vs: Any, host: str, port: int | None) -> Any:
        if vs.name in names:
            raise KeyError("boom")
        return original(self, vs, host, port)

    monkeypatch.setattr(RouteBuilder, "vs_routes", vs_routes)
    yield names


def _vhosts(route_resource: rs.Resource) -> dict[str, route_pb2.VirtualHost]:
    rc = route_pb2.RouteConfiguration()
    rc.ParseFromString(route_resource.body.value)
    return {vh.name: vh for vh in rc.virtual_hosts}


def _routes_of(snap: Snapshot, vhost: str) -> list[str]:
    (route,) = snap.of(rs.ROUTE).values()
    vh = _vhosts(route)[vhost]
    return [r.route.cluster for r in vh.routes]


def test_a_failing_virtual_service_is_left_out_and_the_rest_is_translated(
    broken_vs: set[str],
) -> None:
    broken_vs.add("reviews")
    out = translate_outbound(_world(), "default", Memo())
    (route,) = out.routes.values()
    vhosts = _vhosts(route)
    # reviews falls back to the default route: every version, no header match.
    assert [r.route.cluster for r in vhosts[f"{REVIEWS}:9080"].routes] == [
        f"outbound|9080||{REVIEWS}"
    ]
    # ratings keeps its own rule (its 3 s timeout).
    (ratings,) = vhosts[f"{RATINGS}:9080"].routes
    assert ratings.route.timeout.seconds == 3
    (error,) = out.errors
    assert error.resources == (("VirtualService", "default", "reviews"),)
    assert not error.kept_last_good
    assert "KeyError" in error.message and "reviews" in error.part


def test_a_failing_virtual_service_keeps_its_last_good_routes(broken_vs: set[str]) -> None:
    memo = Memo()
    good = translate_outbound(_world(1), "default", memo)
    memo.rotate()
    broken_vs.add("reviews")
    changed = RULES.replace("timeout: 3s", "timeout: 4s")  # a new routing fingerprint
    out = translate_outbound(_world(2, changed), "default", memo)
    (route,) = out.routes.values()
    vhosts = _vhosts(route)
    (before,) = good.routes.values()
    assert vhosts[f"{REVIEWS}:9080"] == _vhosts(before)[f"{REVIEWS}:9080"]
    assert vhosts[f"{RATINGS}:9080"].routes[0].route.timeout.seconds == 4
    (error,) = out.errors
    assert error.kept_last_good


def test_a_failing_service_keeps_other_services_clusters(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    original = translate_pkg.service_clusters

    def service_clusters(svc: Any, *args: Any) -> Any:
        if svc.hostname == REVIEWS:
            raise ValueError("unexpected subset")
        return original(svc, *args)

    monkeypatch.setattr(translate_pkg, "service_clusters", service_clusters)
    shared = translate_shared(_world(), Memo())
    assert f"outbound|9080||{RATINGS}" in shared.clusters
    assert not any(REVIEWS in name for name in shared.clusters)
    (error,) = shared.errors
    assert error.resources == (("DestinationRule", "default", "reviews"),)
    assert "unexpected subset" in error.message


class _Stream:
    def __init__(self) -> None:
        self.snapshots: list[Snapshot] = []

    def set_snapshot(self, snapshot: Snapshot) -> None:
        self.snapshots.append(snapshot)

    # What proxy status asks of a stream: this one has not heard from its Envoy yet.
    def status(self) -> dict[str, Any]:
        return {}

    def synced(self, snapshot: Snapshot) -> bool:
        return False


def _meta(namespace: str, outbound_port: int) -> dict[str, Any]:
    return {"namespace": namespace, "service": "client", "outbound_port": outbound_port}


async def _until(check: Callable[[], bool]) -> None:
    while not check():
        await asyncio.sleep(0.005)


async def _commit_text(store: MemoryStore, text: str) -> int:
    return await store.commit([(r.key, dict(r.document)) for r in load_documents(text)])


async def test_push_goes_on_for_everyone_and_the_failure_is_reported(
    broken_vs: set[str],
) -> None:
    store = MemoryStore()
    for inst in _instances():
        await store.commit([(inst.key, inst.to_document())])
    await _commit_text(store, RULES)
    cache = SnapshotCache()
    pusher = Pusher(store, cache, Debounce(quiet=0.001, max_delay=0.01))
    streams = {ns: _Stream() for ns in ("default", "other")}
    for i, (ns, stream) in enumerate(streams.items()):
        cache.connect(f"client.{ns}", _meta(ns, 15001 + i), stream)
    task = asyncio.create_task(pusher.run())
    try:
        broken_vs.add("reviews")
        # The broken VirtualService changes, and so does a healthy one.
        revision = await _commit_text(
            store,
            RULES.replace("timeout: 3s", "timeout: 5s").replace("exact: jason", "exact: ana"),
        )
        await asyncio.wait_for(_until(lambda: pusher.processed >= revision), 5)
        for stream in streams.values():
            last = stream.snapshots[-1]
            assert last.revision == revision  # everybody got the push
            (route,) = last.of(rs.ROUTE).values()
            assert _vhosts(route)[f"{RATINGS}:9080"].routes[0].route.timeout.seconds == 5
        # reviews keeps the routes it had before (jason → v2, the rest → v1).
        assert _routes_of(streams["default"].snapshots[-1], f"{REVIEWS}:9080") == [
            f"outbound|9080|v2|{REVIEWS}",
            f"outbound|9080|v1|{REVIEWS}",
        ]
        key = ("VirtualService", "default", "reviews")
        assert set(pusher.errors.by_resource) == {key}
        # One line per client namespace whose routes it is missing from.
        lines = pusher.errors.by_resource[key]
        assert len(lines) == 2
        assert all("KeyError" in line and "last good" in line for line in lines)
        for ns in streams:
            (line,) = pusher.errors.for_node(f"client.{ns}", ns)
            assert f"clients in namespace {ns}" in line and line in lines

        # The API shows it: a status block on the resource, an error on each proxy.
        api = Api(store, Registry(store, ttl=15), pusher, cache, "t0k3n", ("127.0.0.1", 15010))
        async with TestClient(TestServer(api.app())) as client:
            auth = {"Authorization": "Bearer t0k3n"}
            got = await client.get(
                "/v1/resources",
                params={"kind": "vs", "name": "reviews", "namespace": "default"},
                headers=auth,
            )
            (item,) = (await got.json())["items"]
            messages = item["status"]["validationMessages"]
            assert [m["description"] for m in messages] == list(lines)
            assert all(m["level"] == "ERROR" for m in messages)
            ok = await client.get(
                "/v1/resources",
                params={"kind": "vs", "name": "ratings", "namespace": "default"},
                headers=auth,
            )
            assert "status" not in (await ok.json())["items"][0]
            proxies = (await (await client.get("/v1/proxies", headers=auth)).json())["proxies"]
            for p in proxies:
                (line,) = p["translation_errors"]
                assert f"clients in namespace {p['namespace']}" in line

        # Fixing the resource clears the error.
        broken_vs.clear()
        revision = await _commit_text(store, RULES)
        await asyncio.wait_for(_until(lambda: pusher.processed >= revision), 5)
        assert not pusher.errors.by_resource
        assert pusher.errors.for_node("client.default", "default") == []
    finally:
        task.cancel()


async def test_a_failing_proxy_does_not_stop_the_others(monkeypatch: pytest.MonkeyPatch) -> None:
    from tsunagi.controlplane import push

    original = push.translate_local

    def translate_local(node: Any, telemetry: Any, security: Any, memo: Any) -> Any:
        if node.id == "odd.default":
            raise RuntimeError("odd metadata")
        return original(node, telemetry, security, memo)

    monkeypatch.setattr(push, "translate_local", translate_local)
    store = MemoryStore()
    cache = SnapshotCache()
    pusher = Pusher(store, cache, Debounce(quiet=0.001, max_delay=0.01))
    good, odd = _Stream(), _Stream()
    cache.connect("good.default", _meta("default", 15001), good)
    cache.connect("odd.default", _meta("default", 15002), odd)
    assert not odd.snapshots[-1].of(rs.LISTENER)
    task = asyncio.create_task(pusher.run())
    try:
        inst = _instances()[0]
        revision = await store.commit([(inst.key, inst.to_document())])
        await asyncio.wait_for(_until(lambda: pusher.processed >= revision), 5)
    finally:
        task.cancel()
    assert good.snapshots[-1].revision == revision
    assert good.snapshots[-1].of(rs.LISTENER)
    assert pusher.errors.for_node("good.default", "default") == []
    (line,) = pusher.errors.for_node("odd.default", "default")
    assert "odd metadata" in line and "odd.default" in line


async def test_a_stored_document_that_no_longer_parses_keeps_its_last_good_revision() -> None:
    store = MemoryStore()
    await _commit_text(store, RULES)
    cache = SnapshotCache()
    pusher = Pusher(store, cache, Debounce(quiet=0.001, max_delay=0.01))
    key = ("VirtualService", "default", "ratings")
    doc = yaml.safe_load(RULES.split("---")[1])
    doc["spec"]["http"] = "not a list"  # as if stored by a version with other rules
    task = asyncio.create_task(pusher.run())
    try:
        revision = await store.commit([(key, doc)])
        await asyncio.wait_for(_until(lambda: pusher.processed >= revision), 5)
    finally:
        task.cancel()
    assert key in {r.key for r in pusher.world.resources}
    (line,) = pusher.errors.by_resource[key]
    assert "does not parse" in line and "last good" in line


def test_the_cli_shows_status_blocks_and_untranslated_config() -> None:
    from tsunagi.cli import output

    status = {"validationMessages": [{"level": "ERROR", "description": "routes of …: boom"}]}
    items = [
        {
            "kind": "VirtualService",
            "namespace": "default",
            "name": "reviews",
            "revision": 3,
            "document": {"kind": "VirtualService", "spec": {"hosts": ["reviews"]}},
            "status": status,
        }
    ]
    assert yaml.safe_load(output.resources(items, "yaml"))["status"] == status
    assert "Not fully in effect (see `-o yaml` for why): virtualservice/reviews" in (
        output.resources(items, "")
    )
    proxies = [
        {"id": f"p{i}", "service": "s", "types": {}, "revision": 3, "translation_errors": ["x"]}
        for i in range(3)
    ]
    assert "3 proxies: x" in output.proxy_status(proxies)


def test_last_good_forgets_pieces_whose_owner_is_gone() -> None:
    from tsunagi.xds.translate.isolation import LastGood

    store = LastGood()
    store.put(("routes", "a"), ("VirtualService", "default", "a"), "routes of a")
    store.put(("routes", "b"), ("VirtualService", "default", "b"), "routes of b")
    calls: list[int] = []

    def alive() -> set[Any]:
        calls.append(1)
        return {("VirtualService", "default", "a")}

    store.retain(alive, "gen-1")
    assert (store.get(("routes", "a")), store.get(("routes", "b"))) == ("routes of a", None)
    store.put(("routes", "b"), ("VirtualService", "default", "b"), "routes of b")
    store.retain(alive, "gen-1")  # same services and resources: nothing to walk
    assert store.get(("routes", "b")) == "routes of b" and len(calls) == 1
    store.retain(alive, "gen-2")
    assert store.get(("routes", "b")) is None and len(calls) == 2
