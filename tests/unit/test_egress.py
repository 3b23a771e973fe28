"""Egress in translation: the outbound traffic policy (mesh flag and Sidecar resources), the
catch-all virtual host, ServiceEntry addresses, and what ``apply`` warns about."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
from envoy.config.route.v3 import route_pb2

from tsunagi.api import load_documents
from tsunagi.mesh import Node, World
from tsunagi.mesh.analysis import not_yet_enforced, tls_file_problems
from tsunagi.mesh.outbound_policy import ALLOW_ANY, REGISTRY_ONLY, outbound_policy
from tsunagi.registry.instances import Instance
from tsunagi.xds.translate import translate_outbound
from tsunagi.xds.translate.egress import BLOCK_ALL_ROUTE, cidr_regex
from tsunagi.xds.translate.passthrough import PASSTHROUGH_CLUSTER
from tsunagi.xds.translate.routes import outbound_route_configuration


def _sidecar(name: str, namespace: str, mode: str, selector: str = "") -> str:
    sel = f"\n  workloadSelector: {{labels: {{{selector}}}}}" if selector else ""
    return f"""
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: {name}, namespace: {namespace}}}
spec:{sel}
  outboundTrafficPolicy: {{mode: {mode}}}
---"""


def _world(yaml_text: str = "", policy: str = ALLOW_ANY) -> World:
    return World.build(1, load_documents(yaml_text, "t.yaml"), [], mesh_outbound_policy=policy)


def _node(namespace: str = "default", **labels: str) -> Node:
    return Node("w.default", namespace=namespace, labels=MappingProxyType(labels))


def test_the_mesh_flag_holds_where_no_sidecar_says_otherwise() -> None:
    assert outbound_policy(_world(), _node()) == ALLOW_ANY
    assert outbound_policy(_world("", REGISTRY_ONLY), _node()) == REGISTRY_ONLY


def test_sidecar_selection_follows_istio() -> None:
    world = _world(
        _sidecar("root", "istio-system", REGISTRY_ONLY)
        + _sidecar("open", "shop", ALLOW_ANY)
        + _sidecar("locked", "shop", REGISTRY_ONLY, "egress: locked")
        + _sidecar("picky", "books", ALLOW_ANY, "app: web")
    )
    # A selector that matches wins over the namespace's selector-less Sidecar.
    assert outbound_policy(world, _node("shop", egress="locked")) == REGISTRY_ONLY
    assert outbound_policy(world, _node("shop", egress="open")) == ALLOW_ANY
    # A namespace whose Sidecars select others falls back to the root namespace's.
    assert outbound_policy(world, _node("books", app="db")) == REGISTRY_ONLY
    assert outbound_policy(world, _node("books", app="web")) == ALLOW_ANY
    assert outbound_policy(world, _node("elsewhere")) == REGISTRY_ONLY


def test_a_sidecar_without_outbound_policy_keeps_the_mesh_flag() -> None:
    text = """
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: default}
spec:
  egress: [{hosts: ["./*"]}]
"""
    assert outbound_policy(_world(text, REGISTRY_ONLY), _node()) == REGISTRY_ONLY


def _catch_all(rc: dict[str, Any]) -> dict[str, Any]:
    last: dict[str, Any] = rc["virtual_hosts"][-1]
    assert last["domains"] == ["*"]
    return last


def test_allow_any_and_registry_only_end_the_route_table() -> None:
    allow = _catch_all(outbound_route_configuration(_world(), "default"))
    route = allow["routes"][-1]
    assert route["route"]["cluster"] == PASSTHROUGH_CLUSTER
    assert "envoy.filters.http.dynamic_forward_proxy" in route["typed_per_filter_config"]
    block = _catch_all(outbound_route_configuration(_world("", REGISTRY_ONLY), "default"))
    assert block["name"] == BLOCK_ALL_ROUTE
    assert block["routes"][-1]["direct_response"]["status"] == 502
    assert PASSTHROUGH_CLUSTER in translate_outbound(_world(), "default").clusters


def test_a_sidecar_selector_splits_the_scopes_it_reads() -> None:
    world = _world(_sidecar("locked", "default", REGISTRY_ONLY, "egress: locked"))
    locked, other = _node(egress="locked", app="a"), _node(egress="no", app="a")
    assert world.scope_of(locked) != world.scope_of(other)
    names = [
        _catch_all(outbound_route_configuration(world, world.scope_of(n)))["name"]
        for n in (locked, other)
    ]
    assert names == [BLOCK_ALL_ROUTE, "allow_any"]
    # Labels no selector reads stay out of the scope: those sidecars still share config.
    assert world.scope_of(_node(app="a")) == world.scope_of(_node(app="b"))


@pytest.mark.parametrize(
    ("cidr", "inside", "outside"),
    [
        ("10.128.0.0/12", ["10.128.0.1", "10.143.255.255:80"], ["10.144.0.1", "10.127.0.1"]),
        ("192.168.1.0/24", ["192.168.1.7"], ["192.168.2.7", "192.168.1.7:8080"]),
        ("0.0.0.0/0", ["1.2.3.4"], ["example.com"]),
    ],
)
def test_a_cidr_matches_exactly_its_addresses(
    cidr: str, inside: list[str], outside: list[str]
) -> None:
    regex = cidr_regex(cidr, 80)
    assert regex is not None
    assert all(re.fullmatch(regex, a) for a in inside)
    assert not any(re.fullmatch(regex, a) for a in outside)
    assert cidr_regex("10.0.0.1/32", 80) is None and cidr_regex("fd00::/8", 80) is None


def test_apply_warns_only_about_what_egress_does_not_apply() -> None:
    docs = load_documents(
        _sidecar("s", "default", REGISTRY_ONLY)
        + """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: api}
spec:
  host: api.example.test
  trafficPolicy:
    tls: {mode: SIMPLE, sni: api.example.test}
    portLevelSettings:
    - port: {number: 443}
      tls: {mode: ISTIO_MUTUAL}
""",
        "t.yaml",
    )
    warnings = not_yet_enforced(docs)
    assert not any("Sidecar" in w for w in warnings)
    assert warnings == []  # SIMPLE origination and ISTIO_MUTUAL (mesh mTLS) are both applied


def test_a_workload_entry_is_an_endpoint_only_of_the_entries_that_select_it() -> None:
    text = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: vms, namespace: shop}
spec:
  hosts: [vms.internal.test]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 80, name: http, protocol: HTTP, targetPort: 8080}]
  workloadSelector: {labels: {app: vm}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: picked, namespace: shop}
spec: {address: 10.0.0.1, labels: {app: vm}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: elsewhere, namespace: default}
spec: {address: 10.0.0.2, labels: {app: vm}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: bare, namespace: shop}
spec: {address: 10.0.0.3}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: named, namespace: shop}
spec: {address: 10.0.0.4, labels: {app: vm}, ports: {http: 9090}, weight: 3}
"""
    # Registered instances it selects too: those serving the port's targetPort.
    vm = Instance("vm-1", "vm", "shop", 8080, "127.0.0.1", 15006, MappingProxyType({"app": "vm"}))
    other_port = dataclasses.replace(vm, name="vm-2", port=9000)
    world = World.build(1, load_documents(text, "t.yaml"), [vm, other_port])
    endpoints = world.endpoints["vms.internal.test", 80]
    assert [(e.address, e.port, e.weight, e.registered) for e in endpoints] == [
        ("127.0.0.1", 15006, 0, True),
        ("10.0.0.1", 8080, 0, False),
        ("10.0.0.4", 9090, 3, False),  # its own port for the port's name, and its weight
    ]
    warnings = not_yet_enforced(load_documents(text, "t.yaml"))
    assert len(warnings) == 1 and warnings[0].startswith("WorkloadEntry shop/bare: has no labels")


def _catch_all_of(world: World, node: Node) -> str:
    """The catch-all virtual host's name in the route table translation makes for ``node``
    (through the scope translation keys its config by)."""
    (resource,) = translate_outbound(world, world.scope_of(node)).routes.values()
    rc = route_pb2.RouteConfiguration()
    assert resource.body.Unpack(rc)
    return str(rc.virtual_hosts[-1].name)


def test_a_selected_sidecar_without_policy_gets_the_mesh_default() -> None:
    # Istio: the selected Sidecar wins wholly, so app=foo gets the mesh's ALLOW_ANY, not the
    # namespace-wide REGISTRY_ONLY of the selector-less one.
    world = _world(
        _sidecar("locked", "default", REGISTRY_ONLY)
        + """
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: foo, namespace: default}
spec:
  workloadSelector: {labels: {app: foo}}
  egress: [{hosts: ["./*"]}]
"""
    )
    assert _catch_all_of(world, _node(app="foo")) == "allow_any"
    assert _catch_all_of(world, _node(app="bar")) == BLOCK_ALL_ROUTE


def test_apply_warns_about_tls_files_it_cannot_read(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not checked: only whether the file can be read\n")
    docs = load_documents(
        f"""
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: api}}
spec:
  host: api.example.test
  trafficPolicy:
    tls: {{mode: SIMPLE, caCertificates: {ca}}}
    portLevelSettings:
    - port: {{number: 443}}
      tls:
        mode: MUTUAL
        caCertificates: {tmp_path}/typo.pem
        clientCertificate: {ca}
        privateKey: {tmp_path}
""",
        "t.yaml",
    )
    warnings = tls_file_problems(docs)
    at = "DestinationRule default/api: spec.trafficPolicy.portLevelSettings[0].tls"
    assert [w.split(" is not")[0] for w in warnings] == [
        f"{at}.caCertificates '{tmp_path}/typo.pem'",
        f"{at}.privateKey '{tmp_path}'",  # a directory is no key file
    ]
    assert all("read on each proxy's host" in w for w in warnings)


def test_apply_warns_that_ipv6_ranges_are_not_matched() -> None:
    docs = load_documents(
        """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: v6}
spec:
  hosts: [v6.example.test]
  addresses: ["fd00::/8", "fd00::1", 10.0.0.0/8]
  resolution: STATIC
  endpoints: [{address: 10.0.0.1}]
  ports: [{number: 80, name: http, protocol: HTTP}]
""",
        "t.yaml",
    )
    (warning,) = not_yet_enforced(docs)
    assert warning.startswith("ServiceEntry default/v6: spec.addresses[0] fd00::/8: IPv6 ranges")
