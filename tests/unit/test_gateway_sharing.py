"""Replicas of a gateway share its listeners' routes: translation builds a gateway's route
tables (and everything else that does not depend on the node) once per routing scope, and
adds each node's own reporting (its metric FIFO, access-log marker, tracer) to copies of
the listeners afterwards. Nothing the translation keeps per piece names a node, so a
gateway restarting with a fresh random id leaves nothing behind."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format

from tsunagi import proxy_contract as pc
from tsunagi.api import load_documents
from tsunagi.mesh import Node, World
from tsunagi.mesh.telemetry import MeshTelemetry
from tsunagi.registry import Instance
from tsunagi.xds.translate import Memo, assemble, translate_local, translate_outbound

CONFIG = """
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8080, name: http, protocol: HTTP}
    hosts: ["*"]
  - port: {number: 8443, name: https, protocol: HTTPS}
    hosts: ["*"]
    tls: {mode: SIMPLE, credentialName: cred}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: default}
spec:
  hosts: ["*"]
  gateways: [istio-system/edge]
  http:
  - route: [{destination: {host: web.default.svc.cluster.local, port: {number: 80}}}]
"""


def _world() -> World:
    web = Instance.from_document(
        {"name": "web-1", "service": "web", "port": 80, "target_port": 20001}
    )
    resources = load_documents(CONFIG, "test.yaml")
    return World.build(1, resources, [web], MeshTelemetry(access_log="text"))


def _gateway(node_id: str) -> Node:
    return Node.from_metadata(
        node_id,
        {
            pc.META_KIND: pc.GATEWAY_KIND,
            pc.META_NAMESPACE: "istio-system",
            pc.META_SERVICE: "ingress",
            pc.META_LABELS: {"istio": "ingressgateway"},
            pc.META_METRICS_LOG: f"/run/{node_id}/metrics.fifo",
        },
    )


def _loggers(listener: Any) -> list[str]:
    """Where each access logger of the listener's connection managers writes."""
    doc = json_format.MessageToDict(listener.body, preserving_proto_field_name=True)
    return [
        str(lg["typed_config"].get("path", "stdout"))
        for chain in doc["filter_chains"]
        for f in chain["filters"]
        for lg in f["typed_config"].get("access_log", [])
    ]


def test_two_replicas_share_route_tables_and_each_reports_as_itself() -> None:
    world, memo = _world(), Memo()
    a, b = (_gateway(i) for i in ("ingress-aaaaaa.istio-system", "ingress-bbbbbb.istio-system"))
    out_a = translate_outbound(world, world.scope_of(a), memo)
    out_b = translate_outbound(world, world.scope_of(b), memo)
    assert set(out_a.routes) == {"http.8080", "https.8443.https.edge.istio-system"}
    for name, route in out_a.routes.items():
        assert out_b.routes[name] is route  # built once, shared
    # ... while each listener reports to its own node's FIFO
    for name in ("gateway|8080", "gateway|8443"):
        assert "/run/ingress-aaaaaa.istio-system/metrics.fifo" in _loggers(out_a.listeners[name])
        assert "/run/ingress-bbbbbb.istio-system/metrics.fifo" in _loggers(out_b.listeners[name])
        assert not any("bbbbbb" in p for p in _loggers(out_a.listeners[name]))


def test_new_gateway_ids_leave_nothing_behind() -> None:
    world, memo = _world(), Memo()
    sizes = []
    for i in range(20):  # a gateway restarting again and again: a new random id each time
        node = _gateway(f"ingress-{i:06x}.istio-system")
        out = translate_outbound(world, world.scope_of(node), memo)
        assemble(out, translate_local(node, world.telemetry_for(node)), world.revision)
        memo.rotate()  # one push each, as the pusher does
        sizes.append((len(memo.made()) + len(memo._live), len(memo.last_good)))
    assert sizes[-1] == sizes[0], sizes
    assert len(memo.last_good) > 0  # it does keep the pieces (there is something to bound)


def test_a_single_gateways_config_is_the_same_whatever_memo_made_it() -> None:
    world = _world()
    node = _gateway("ingress-aaaaaa.istio-system")
    other = _gateway("ingress-bbbbbb.istio-system")
    warm = Memo()
    translate_outbound(world, world.scope_of(other), warm)  # the shared parts exist already
    fresh = translate_outbound(world, world.scope_of(node), Memo())
    reused = translate_outbound(world, world.scope_of(node), warm)
    for kind in ("listeners", "routes"):
        got, want = getattr(reused, kind), getattr(fresh, kind)
        assert {n: r.version for n, r in got.items()} == {n: r.version for n, r in want.items()}


def test_virtual_services_are_sorted_once_per_world() -> None:
    world = _world()
    first = world.virtual_services_in_order
    assert first is world.virtual_services_in_order  # every port and route table reuses it
    assert [vs.name for vs in first] == ["web"]
