"""The internal listeners behind CONNECT (HTTPS through the sidecar) are made once per scope:
sidecars of one namespace share the very same packed resources, and a change that does not
touch their routing rebuilds none of them. Also what a hello no ``tls`` route claims does."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format

from tsunagi.api import load_documents
from tsunagi.mesh import Node, World
from tsunagi.xds import resources as rs
from tsunagi.xds.resources import Resource
from tsunagi.xds.translate import Memo, assemble_patched, translate_local, translate_outbound
from tsunagi.xds.translate.protos import Listener

CONFIG = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: default}
spec:
  hosts: [api.example.test]
  resolution: STATIC
  ports: [{number: 443, name: tls, protocol: TLS}]
  endpoints:
  - {address: 127.0.0.1, ports: {tls: 20443}, labels: {version: a}}
  - {address: 127.0.0.1, ports: {tls: 20444}, labels: {version: b}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: api, namespace: default}
spec:
  host: api.example.test
  subsets:
  - {name: a, labels: {version: a}}
  - {name: b, labels: {version: b}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: other, namespace: default}
spec:
  hosts: [other.example.test]
  resolution: STATIC
  ports: [{number: 8443, name: tls, protocol: TLS}]
  endpoints: [{address: 127.0.0.1, ports: {tls: 20445}}]
"""

TLS_ROUTES = """
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: api, namespace: default}
spec:
  hosts: [api.example.test]
  tls:
  - match: [{port: 443, sniHosts: [api.example.test], sourceLabels: {tier: %s}}]
    route: [{destination: {host: api.example.test, subset: b}}]
  - match: [{port: 443, sniHosts: [api.example.test]}]
    route: [{destination: {host: api.example.test, subset: a}}]
"""

UNRELATED = """
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: default}
spec:
  hosts: [web.example.test]
  http: [{route: [{destination: {host: web.example.test}}], timeout: 3s}]
"""

REGISTRY_ONLY = """
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: default}
spec:
  outboundTrafficPolicy: {mode: REGISTRY_ONLY}
"""

API = "connect|443|api.example.test"
OTHER = "connect|8443|other.example.test"


def world(config: str, revision: int = 1) -> World:
    return World.build(revision, load_documents(config, "config.yaml"), [])


def sidecar(name: str, **labels: str) -> Node:
    return Node(id=f"{name}.default", namespace="default", labels=labels)


def connect_resources(w: World, node: Node, memo: Memo) -> dict[str, Resource]:
    """The node's internal listeners and the clusters that reach them, as pushed."""
    outbound = translate_outbound(w, w.scope_of(node), memo)
    local = translate_local(node, w.telemetry_for(node))
    snapshot, patched = assemble_patched(w, node, outbound, local, w.revision, memo)
    assert not patched.errors
    out = {}
    for type_url in (rs.LISTENER, rs.CLUSTER):
        for name, r in snapshot.of(type_url).items():
            if name.startswith("connect|"):
                out[f"{type_url}/{name}"] = r
    return out


def listener(resources: dict[str, Resource], name: str) -> dict[str, Any]:
    msg = Listener()
    resources[f"{rs.LISTENER}/{name}"].body.Unpack(msg)
    return json_format.MessageToDict(msg, preserving_proto_field_name=True)


def test_sidecars_of_one_scope_share_the_packed_resources() -> None:
    w = world(CONFIG + TLS_ROUTES % "front")
    memo = Memo()
    a = connect_resources(w, sidecar("a", app="a", tier="back"), memo)
    b = connect_resources(w, sidecar("b", app="b", version="v2"), memo)
    assert {f"{rs.LISTENER}/{API}", f"{rs.LISTENER}/{OTHER}"} <= set(a)
    assert set(a) == set(b)
    assert all(a[k] is b[k] for k in a)  # made once, not once per sidecar
    # A label some tls match reads makes its own listener (the route for tier=front).
    front = connect_resources(w, sidecar("c", tier="front"), memo)
    assert front[f"{rs.LISTENER}/{API}"] is not a[f"{rs.LISTENER}/{API}"]
    assert front[f"{rs.LISTENER}/{OTHER}"] is a[f"{rs.LISTENER}/{OTHER}"]
    chains = listener(front, API)["filter_chains"]
    assert "outbound|443|b|api.example.test" in str(chains[0])


def test_an_unrelated_change_rebuilds_none_of_them() -> None:
    memo = Memo()
    node = sidecar("a", app="a")
    first = world(CONFIG + TLS_ROUTES % "front")
    before = connect_resources(first, node, memo)
    memo.rotate()
    second = world(CONFIG + TLS_ROUTES % "front" + UNRELATED, revision=2)
    assert second.routing_fingerprint != first.routing_fingerprint
    after = connect_resources(second, node, memo)
    assert set(after) == set(before)
    assert all(after[k] is before[k] for k in before)
    # A change to the tls routes rebuilds that port's listener, and only it.
    memo.rotate()
    third = world(CONFIG + (TLS_ROUTES % "front").replace("subset: a", "subset: b"), 3)
    changed = connect_resources(third, node, memo)
    assert changed[f"{rs.LISTENER}/{API}"] is not after[f"{rs.LISTENER}/{API}"]
    assert "subset a" not in str(listener(changed, API))
    assert changed[f"{rs.LISTENER}/{OTHER}"] is after[f"{rs.LISTENER}/{OTHER}"]


def test_a_hello_no_tls_route_claims_follows_the_outbound_policy() -> None:
    """ALLOW_ANY: on to the CONNECT target's own cluster (Istio's passthrough of what no
    filter chain matches); REGISTRY_ONLY: no chain at all (Envoy closes the tunnel)."""
    node = sidecar("a", app="a")
    allow = connect_resources(world(CONFIG + TLS_ROUTES % "front"), node, Memo())
    default = listener(allow, API)["default_filter_chain"]
    assert default["filters"][0]["typed_config"]["cluster"] == "outbound|443||api.example.test"
    # A port without tls routes already takes any SNI to its own cluster: no default needed.
    assert "default_filter_chain" not in listener(allow, OTHER)
    blocked = world(CONFIG + TLS_ROUTES % "front" + REGISTRY_ONLY)
    block = connect_resources(blocked, node, Memo())
    assert "default_filter_chain" not in listener(block, API)


def test_a_sidecar_with_its_own_loggers_keeps_its_listeners_across_pushes() -> None:
    """Each ``tsunagi run`` sidecar has its metric pipe, so its internal listeners are its
    own (its lines go to its pipe); an unrelated change still re-packs none of them."""
    memo = Memo()
    node = Node(id="a.default", namespace="default", labels={"app": "a"}, metrics_log="/p/a")
    other = Node(id="b.default", namespace="default", labels={"app": "b"}, metrics_log="/p/b")
    first = world(CONFIG + TLS_ROUTES % "front")
    before = connect_resources(first, node, memo)
    theirs = connect_resources(first, other, memo)
    assert theirs[f"{rs.LISTENER}/{API}"] is not before[f"{rs.LISTENER}/{API}"]
    assert "/p/a" in str(listener(before, API)) and "/p/b" in str(listener(theirs, API))
    memo.rotate()
    second = world(CONFIG + TLS_ROUTES % "front" + UNRELATED, revision=2)
    after = connect_resources(second, node, memo)
    assert set(after) == set(before)
    assert all(after[k] is before[k] for k in before)
