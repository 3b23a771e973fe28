"""Gateway proxies: Istio's host matching and binding rules, what a gateway node is sent,
and ``apply``'s gateway analysis (IST0101, IST0132, IST0145)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from google.protobuf import json_format

from tsunagi.api import load_documents
from tsunagi.controlplane.push import Debounce, Pusher
from tsunagi.mesh import Node, World
from tsunagi.mesh import gateways as gw
from tsunagi.mesh.analysis import not_yet_enforced
from tsunagi.mesh.gateway_analysis import gateway_problems
from tsunagi.registry import Instance
from tsunagi.store import MemoryStore
from tsunagi.xds import resources as rs
from tsunagi.xds.cache import SnapshotCache
from tsunagi.xds.resources import Snapshot
from tsunagi.xds.translate import envoyfilter, translate

GATEWAY_META = {
    "kind": "gateway",
    "namespace": "istio-system",
    "service": "ingress",
    "labels": {"istio": "ingressgateway"},
    "gateway_address": "127.0.0.3",
}
GATEWAY_NODE = Node.from_metadata("ingress-1", GATEWAY_META)
SIDECAR_NODE = Node.from_metadata("app-1", {"namespace": "default", "service": "app"})


def _gateway(name: str, port: int, hosts: list[str], ns: str = "default", extra: str = "") -> str:
    return f"""
apiVersion: networking.istio.io/v1beta1
kind: Gateway
metadata: {{name: {name}, namespace: {ns}}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {port}, name: http-{port}, protocol: HTTP}}
    hosts: {hosts}
{extra}
"""


def _vs(name: str, hosts: list[str], gateways: list[str], ns: str = "default") -> str:
    return f"""
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {{name: {name}, namespace: {ns}}}
spec:
  hosts: {hosts}
  gateways: {gateways}
  http:
  - route:
    - destination: {{host: web.default.svc.cluster.local, port: {{number: 80}}}}
"""


def _world(*docs: str) -> World:
    return world_of(load_documents("---".join(docs), "test.yaml"))


def world_of(resources: list[Any]) -> World:
    """A World of ``resources`` and one ``web`` instance on port 80 (the routes' backend)."""
    web = Instance.from_document(
        {
            "name": "web-1",
            "service": "web",
            "namespace": "default",
            "port": 80,
            "address": "127.0.0.1",
            "target_port": 20001,
        }
    )
    return World.build(1, resources, [web])


def resources_of(world: World, node: Node, type_url: str) -> dict[str, dict[str, Any]]:
    """What ``node`` is sent of ``type_url``, by resource name, as dicts."""
    snap = translate(world, node)
    return {
        name: json_format.MessageToDict(r.body, preserving_proto_field_name=True)
        for name, r in snap.of(type_url).items()
    }


def _domains(world: World, node: Node = GATEWAY_NODE) -> dict[str, list[str]]:
    return {
        name: [d for v in rc.get("virtual_hosts", []) for d in v["domains"]]
        for name, rc in resources_of(world, node, rs.ROUTE).items()
    }


@pytest.mark.parametrize(
    ("a", "b", "both"),
    [
        ("*", "bookinfo.com", "bookinfo.com"),
        ("bookinfo.com", "*", "bookinfo.com"),
        ("*.example.com", "a.example.com", "a.example.com"),
        ("*.example.com", "*.b.example.com", "*.b.example.com"),
        ("*.example.com", "example.com", None),
        ("a.example.com", "b.example.com", None),
        ("*.example.com", "*.example.org", None),
        ("*", "*", "*"),
    ],
)
def test_host_intersection(a: str, b: str, both: str | None) -> None:
    assert gw.intersect(a, b) == both
    assert gw.intersect(b, a) == both


@pytest.mark.parametrize(
    ("host", "parsed"),
    [
        ("bookinfo.com", ("*", "bookinfo.com")),
        ("*/bookinfo.com", ("*", "bookinfo.com")),
        ("./bookinfo.com", ("gwns", "bookinfo.com")),
        ("prod/*.Example.com", ("prod", "*.example.com")),
        ("~/bookinfo.com", ("~", "bookinfo.com")),
    ],
)
def test_server_host_forms(host: str, parsed: tuple[str, str]) -> None:
    assert gw.server_host(host, "gwns") == parsed


def test_gateway_refs_resolve_in_the_virtual_service_namespace() -> None:
    assert gw.gateway_ref("edge", "shop") == ("shop", "edge")
    assert gw.gateway_ref("istio-system/edge", "shop") == ("istio-system", "edge")
    assert gw.gateway_ref("./edge", "shop") == ("shop", "edge")
    # Istio's older forms: name.namespace, and the gateway's service FQDN.
    assert gw.gateway_ref("edge.infra", "shop") == ("infra", "edge")
    assert gw.gateway_ref("edge.infra.svc.cluster.local", "shop") == ("infra", "edge")
    world = _world(_gateway("edge", 80, ["*"]), _vs("web", ["a.example.com"], ["./edge"]))
    assert _domains(world)["http.80"] == ["a.example.com"]
    assert not [w for w in gateway_problems(world, world.resources) if "IST0101" in w]


def test_namespace_forms_restrict_which_virtual_services_bind() -> None:
    world = _world(
        _gateway("edge", 80, ["./own.example.com", "prod/prod.example.com", "*/any.example.com"]),
        _vs("mine", ["own.example.com", "any.example.com"], ["edge"]),
        _vs("theirs", ["own.example.com", "prod.example.com"], ["default/edge"], ns="prod"),
    )
    domains = _domains(world)["http.80"]
    assert domains == ["own.example.com", "any.example.com", "prod.example.com"]
    # Any port in the Host header: what a client sees of the port may not be the listener's.
    assert resources_of(world, GATEWAY_NODE, rs.ROUTE)["http.80"]["ignore_port_in_host_matching"]


def test_export_to_is_judged_from_the_gateway_proxys_namespace() -> None:
    hidden = _vs("hidden", ["a.example.com"], ["default/edge"], ns="team").replace(
        "spec:\n", "spec:\n  exportTo: [.]\n"
    )
    world = _world(_gateway("edge", 80, ["*"]), hidden)
    assert _domains(world)["http.80"] == []  # the proxy runs in default
    # The same VirtualService, seen by a gateway proxy running in its own namespace (Istio
    # asks for the VirtualServices visible to the proxy, not to the Gateway resource).
    in_team = replace(GATEWAY_NODE, namespace="team")
    assert _domains(world, in_team)["http.80"] == ["a.example.com"]


def test_gateway_gets_only_its_listeners_and_follows_server_ports() -> None:
    one = _world(_gateway("edge", 80, ["*"]), _vs("web", ["*"], ["edge"]))
    listeners = resources_of(one, GATEWAY_NODE, rs.LISTENER)
    assert sorted(listeners) == ["gateway|80"]  # no outbound or inbound sidecar listeners
    assert listeners["gateway|80"]["address"]["socket_address"] == {
        "address": "127.0.0.3",
        "port_value": 80,
    }
    two = _world(
        _gateway("edge", 80, ["*"]), _gateway("more", 8080, ["*"]), _vs("web", ["*"], ["edge"])
    )
    assert sorted(resources_of(two, GATEWAY_NODE, rs.LISTENER)) == ["gateway|80", "gateway|8080"]
    # A Gateway whose selector does not match the proxy's labels is not served.
    other = _world(_gateway("edge", 80, ["*"]).replace("ingressgateway", "egressgateway"))
    assert resources_of(other, GATEWAY_NODE, rs.LISTENER) == {}


def test_https_servers_get_a_tls_listener_and_apply_no_longer_warns() -> None:
    tls = """  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: ["*"]
    tls: {mode: SIMPLE, credentialName: cert}
"""
    world = _world(_gateway("edge", 80, ["*"], extra=tls), _vs("web", ["*"], ["edge"]))
    listeners = resources_of(world, GATEWAY_NODE, rs.LISTENER)
    assert sorted(listeners) == ["gateway|443", "gateway|80"]
    [chain] = listeners["gateway|443"]["filter_chains"]
    context = chain["transport_socket"]["typed_config"]["common_tls_context"]
    # The listener names the certificate; the key itself never rides in listener config.
    assert context["tls_certificate_sds_secret_configs"][0]["name"] == "kubernetes://cert"
    assert "private_key" not in str(listeners)
    hcm = chain["filters"][0]["typed_config"]
    assert hcm["rds"]["route_config_name"] == "https.443.https.edge.default"
    assert "https.443.https.edge.default" in resources_of(world, GATEWAY_NODE, rs.ROUTE)
    warnings = gateway_problems(world, world.resources)
    assert not [w for w in warnings if "spec.servers[1]" in w], warnings
    assert not [w for w in not_yet_enforced(world.resources) if "Gateway" in w]


@pytest.mark.parametrize(
    ("tls", "says"),
    [
        ("{mode: AUTO_PASSTHROUGH}", "tls.mode AUTO_PASSTHROUGH is not supported yet"),
        (
            "{mode: SIMPLE, serverCertificate: /c.pem, privateKey: /k.pem}",
            "tls.serverCertificate/privateKey is not supported",
        ),
    ],
)
def test_unsupported_tls_modes_open_nothing_and_apply_says_what_to_use(tls: str, says: str) -> None:
    extra = f"""  - port: {{number: 443, name: https, protocol: HTTPS}}
    hosts: ["*"]
    tls: {tls}
"""
    world = _world(_gateway("edge", 80, ["*"], extra=extra), _vs("web", ["*"], ["edge"]))
    assert sorted(resources_of(world, GATEWAY_NODE, rs.LISTENER)) == ["gateway|80"]
    [warning] = [w for w in gateway_problems(world, world.resources) if "servers[1]" in w]
    assert warning.startswith("Gateway default/edge: spec.servers[1] (HTTPS 443): " + says)


def test_an_istio_mutual_server_ends_mesh_mtls_with_the_gateways_own_certificate() -> None:
    extra = """  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: ["*"]
    tls: {mode: ISTIO_MUTUAL, subjectAltNames: [spiffe://cluster.local/ns/default/sa/sleep]}
"""
    world = _world(_gateway("edge", 80, ["*"], extra=extra), _vs("web", ["*"], ["edge"]))
    listener = resources_of(world, GATEWAY_NODE, rs.LISTENER)["gateway|443"]
    [chain] = listener["filter_chains"]
    tls = chain["transport_socket"]["typed_config"]
    context = tls["common_tls_context"]
    # The SDS files its agent writes (the same for every proxy), no Secret needed.
    assert context["tls_certificate_sds_secret_configs"][0]["name"] == "default"
    validation = context["combined_validation_context"]
    assert validation["validation_context_sds_secret_config"]["name"] == "ROOTCA"
    sans = validation["default_validation_context"]["match_typed_subject_alt_names"]
    assert {
        "san_type": "URI",
        "matcher": {"exact": "spiffe://cluster.local/ns/default/sa/sleep"},
    } in sans
    assert tls["require_client_certificate"] is True
    assert not [w for w in gateway_problems(world, world.resources) if "servers[1]" in w]


def test_servers_left_out_of_a_port_are_reported_with_the_server_that_holds_it() -> None:
    extra = """  - port: {number: 80, name: https, protocol: HTTPS}
    hosts: ["*"]
    tls: {mode: SIMPLE, credentialName: cert}
  - port: {number: 443, name: https-a, protocol: HTTPS}
    hosts: [a.example.com]
    tls: {mode: SIMPLE, credentialName: a}
  - port: {number: 443, name: https-b, protocol: HTTPS}
    hosts: [b.example.com, a.example.com]
    tls: {mode: SIMPLE, credentialName: b}
  - port: {number: 443, name: tls-c, protocol: TLS}
    hosts: [c.example.com]
    tls: {mode: PASSTHROUGH, minProtocolVersion: TLSV1_3}
"""
    world = _world(_gateway("edge", 80, ["*"], extra=extra), _vs("web", ["*"], ["edge"]))
    listeners = resources_of(world, GATEWAY_NODE, rs.LISTENER)
    assert "transport_socket" not in listeners["gateway|80"]["filter_chains"][0]
    names = [
        c["filter_chain_match"]["server_names"] for c in listeners["gateway|443"]["filter_chains"]
    ]
    assert names == [["a.example.com"]]  # c: no tls route binds it, so no chain
    warnings = gateway_problems(world, world.resources, running=[{"istio": "ingressgateway"}])
    [https_on_80] = [w for w in warnings if "spec.servers[1]" in w]
    assert "port 80 already serves plain-text HTTP for servers[0] of Gateway default/edge" in (
        https_on_80
    )
    [b] = [w for w in warnings if "spec.servers[3]" in w]
    assert "port 443 already serves a.example.com over TLS (servers[2] of" in b


def test_cipher_suites_envoy_does_not_know_are_left_out_with_a_warning() -> None:
    extra = """  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: ["*"]
    tls:
      mode: SIMPLE
      credentialName: cert
      cipherSuites: [ECDHE-RSA-AES128-GCM-SHA256, RC4-MD5, ECDHE-RSA-AES128-GCM-SHA256]
"""
    world = _world(_gateway("edge", 80, ["*"], extra=extra), _vs("web", ["*"], ["edge"]))
    [chain] = resources_of(world, GATEWAY_NODE, rs.LISTENER)["gateway|443"]["filter_chains"]
    params = chain["transport_socket"]["typed_config"]["common_tls_context"]["tls_params"]
    assert params == {
        "tls_minimum_protocol_version": "TLSv1_2",
        "cipher_suites": ["ECDHE-RSA-AES128-GCM-SHA256"],
    }
    [warning] = [w for w in gateway_problems(world, world.resources) if "cipherSuites" in w]
    assert (
        "ignoring unknown or repeated cipher suites ['RC4-MD5', 'ECDHE-RSA-AES128-GCM-SHA256']"
        in (warning)
    )


def test_source_labels_match_the_gateway_proxys_own_labels() -> None:
    # On a gateway, sourceLabels compare the gateway's labels (Istio's gateway routes do).
    def domains_with(labels: str) -> list[str]:
        vs = _vs("web", ["*"], ["edge"]).replace(
            "  - route:", f"  - match: [{{sourceLabels: {labels}}}]\n    route:"
        )
        world = _world(_gateway("edge", 80, ["*"]), vs)
        return _domains(world)["http.80"]

    assert domains_with("{istio: ingressgateway}") == ["*"]
    assert domains_with("{istio: egressgateway}") == []


def test_https_redirect_requires_tls_on_the_virtual_host() -> None:
    redirect = _gateway("edge", 80, ["*"]).replace(
        "    hosts: ['*']\n", "    hosts: ['*']\n    tls: {httpsRedirect: true}\n"
    )
    world = _world(redirect, _vs("web", ["*"], ["edge"]))
    [vhost] = resources_of(world, GATEWAY_NODE, rs.ROUTE)["http.80"]["virtual_hosts"]
    assert vhost["require_tls"] == "ALL"
    # The usual http → https Gateway binds nothing and still redirects every host it names.
    alone = _gateway("edge", 80, ["a.example.com", "./b.example.com"]).replace(
        "    hosts: ['a.example.com', './b.example.com']\n",
        "    hosts: ['a.example.com', './b.example.com']\n    tls: {httpsRedirect: true}\n",
    )
    vhosts = resources_of(_world(alone), GATEWAY_NODE, rs.ROUTE)["http.80"]["virtual_hosts"]
    assert [(v["domains"], v["require_tls"]) for v in vhosts] == [
        (["a.example.com"], "ALL"),
        (["b.example.com"], "ALL"),
    ]


def test_gateway_only_envoy_filters_patch_gateways_and_cost_sidecars_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = """
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: timeouts, namespace: istio-system}
spec:
  configPatches:
  - applyTo: CLUSTER
    match: {context: GATEWAY}
    patch: {operation: MERGE, value: {connect_timeout: 7s}}
"""
    world = _world(_gateway("edge", 80, ["*"]), _vs("web", ["*"], ["edge"]), config)
    calls: list[str] = []
    for name in ("_patch_map", "_patch_shared"):
        real = getattr(envoyfilter, name)

        def counted(*args: Any, _real: Any = real, _name: str = name) -> Any:
            calls.append(_name)
            return _real(*args)

        monkeypatch.setattr(envoyfilter, name, counted)
    sidecar = resources_of(world, SIDECAR_NODE, rs.CLUSTER)
    assert calls == []  # selected, but nothing of it applies to a sidecar: not even a pass
    assert "7s" not in {c.get("connect_timeout") for c in sidecar.values()}
    gateway = resources_of(world, GATEWAY_NODE, rs.CLUSTER)
    assert calls and {c.get("connect_timeout") for c in gateway.values()} == {"7s"}


def test_sidecars_ignore_virtual_services_bound_only_to_gateways() -> None:
    world = _world(
        _gateway("edge", 80, ["*"]),
        _vs("edge-only", ["gw.example.com"], ["edge"]),
        _vs("both", ["both.example.com"], ["edge", "mesh"]),
    )
    sidecar = _domains(world, SIDECAR_NODE)["outbound"]
    assert "both.example.com" in sidecar
    assert "gw.example.com" not in sidecar
    assert _domains(world)["http.80"] == ["both.example.com", "gw.example.com"]


def test_two_virtual_services_for_one_host_merge_catch_all_last() -> None:
    catch_all = _vs("a", ["shop.example.com"], ["edge"])
    prefixed = _vs("b", ["shop.example.com"], ["edge"]).replace(
        "  - route:\n", "  - match: [{uri: {prefix: /b}}]\n    route:\n"
    )
    world = _world(_gateway("edge", 80, ["*"]), catch_all, prefixed)
    [vhost] = resources_of(world, GATEWAY_NODE, rs.ROUTE)["http.80"]["virtual_hosts"]
    assert [r["match"] for r in vhost["routes"]] == [{"prefix": "/b"}, {"prefix": "/"}]


def test_missing_gateway_is_ist0101() -> None:
    world = _world(_vs("web", ["web.example.com"], ["nowhere", "mesh"]))
    [warning] = gateway_problems(world, world.resources)
    assert "[IST0101] Referenced gateway not found" in warning
    assert "spec.gateways[0]" in warning


def test_host_no_server_serves_is_ist0132() -> None:
    world = _world(
        _gateway("edge", 80, ["*.example.com"]),
        _vs("web", ["a.example.com", "b.example.org"], ["edge"]),
    )
    [warning] = gateway_problems(world, world.resources)
    assert "[IST0132]" in warning
    assert "b.example.org" in warning
    assert "a.example.com" not in warning


def test_overlapping_hosts_on_one_port_and_selector_is_ist0145() -> None:
    world = _world(
        _gateway("one", 80, ["*.example.com"]),
        _gateway("two", 80, ["shop.example.com"]),
        _gateway("three", 8080, ["shop.example.com"]),
    )
    warnings = gateway_problems(world, world.resources)
    conflicts = [w for w in warnings if "[IST0145]" in w]
    assert len(conflicts) == 2  # one and two, each naming the other; three is on another port
    assert any(w.startswith("Gateway default/one:") and "default/two" in w for w in conflicts)
    assert all("port 80" in w and "shop.example.com" in w for w in conflicts)


def _ef(context: str) -> str:
    return f"""
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {{name: ef-{context.lower().replace("_", "-")}, namespace: istio-system}}
spec:
  configPatches:
  - applyTo: ROUTE_CONFIGURATION
    match: {{context: {context}}}
    patch:
      operation: MERGE
      value: {{response_headers_to_add: [{{header: {{key: x-{context.lower()}, value: "1"}}}}]}}
"""


def _added_headers(world: World, node: Node) -> set[str]:
    return {
        h["header"]["key"]
        for rc in resources_of(world, node, rs.ROUTE).values()
        for h in rc.get("response_headers_to_add", [])
    }


def test_envoy_filter_context_gateway_patches_gateways_only() -> None:
    world = _world(
        _gateway("edge", 80, ["*"]),
        _vs("web", ["web.example.com"], ["edge"]),
        _ef("GATEWAY"),
        _ef("SIDECAR_OUTBOUND"),
        _ef("ANY"),
    )
    assert _added_headers(world, GATEWAY_NODE) == {"x-gateway", "x-any"}
    assert _added_headers(world, SIDECAR_NODE) == {"x-sidecar_outbound", "x-any"}


def test_selector_no_running_gateway_matches_is_ist0101() -> None:
    world = _world(_gateway("edge", 80, ["*"]))
    [warning] = gateway_problems(world, world.resources, [{"istio": "egressgateway"}])
    assert (
        "Gateway default/edge: spec.selector: [IST0101] Referenced selector not found: "
        '"istio=ingressgateway"' in warning
    )
    assert "--label istio=ingressgateway" in warning
    running = [{"istio": "ingressgateway", "zone": "a"}]
    assert gateway_problems(world, world.resources, running) == []


async def test_a_connected_gateway_follows_server_ports_live() -> None:
    store = MemoryStore()
    cache = SnapshotCache()
    pusher = Pusher(store, cache, Debounce(quiet=0.01, max_delay=0.1))
    stream = _Recorder()
    cache.connect(GATEWAY_NODE.id, GATEWAY_META, stream)
    task = asyncio.create_task(pusher.run())

    async def apply(text: str) -> None:
        docs = load_documents(text, "test.yaml")
        revision = await store.commit([(r.key, dict(r.document)) for r in docs])
        await asyncio.wait_for(_until(lambda: pusher.processed >= revision), 5)

    try:
        assert sorted(stream.snapshots[-1].of(rs.LISTENER)) == []  # no sidecar listeners
        await apply(_gateway("edge", 8080, ["*"]))
        assert sorted(stream.snapshots[-1].of(rs.LISTENER)) == ["gateway|8080"]
        await apply(_gateway("edge", 8081, ["*"]))  # the server moves to another port
        assert sorted(stream.snapshots[-1].of(rs.LISTENER)) == ["gateway|8081"]
        assert sorted(stream.snapshots[-1].of(rs.ROUTE)) == ["http.8081"]
    finally:
        task.cancel()


class _Recorder:
    def __init__(self) -> None:
        self.snapshots: list[Snapshot] = []

    def set_snapshot(self, snapshot: Snapshot) -> None:
        self.snapshots.append(snapshot)


async def _until(check: Callable[[], bool]) -> None:
    while not check():
        await asyncio.sleep(0.005)


def test_tcp_servers_need_tcp_routes_and_one_port_has_one() -> None:
    extra = """  - port: {number: 31400, name: tcp, protocol: TCP}
    hosts: ["*"]
  - port: {number: 31400, name: tcp-again, protocol: TCP}
    hosts: ["*"]
  - port: {number: 443, name: tls, protocol: TLS}
    hosts: ["*"]
    tls: {mode: PASSTHROUGH}
"""
    world = _world(_gateway("edge", 80, ["*"], extra=extra), _vs("web", ["*"], ["edge"]))
    # Nothing routes TCP or TLS yet: those ports stay closed, and apply says why.
    assert sorted(resources_of(world, GATEWAY_NODE, rs.LISTENER)) == ["gateway|80"]
    warnings = gateway_problems(world, world.resources)
    [tcp] = [w for w in warnings if "spec.servers[1]" in w]
    assert "no VirtualService bound to it" in tcp and "has tcp: routes" in tcp
    [tls] = [w for w in warnings if "spec.servers[3]" in w]
    assert "has tls: routes" in tls
    [again] = [w for w in warnings if "spec.servers[2]" in w and "already serves" in w]
    assert "a TCP port has one server" in again
    routed = """
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: bytes, namespace: default}
spec:
  hosts: ["*"]
  gateways: [edge]
  tcp:
  - route: [{destination: {host: web.default.svc.cluster.local, port: {number: 80}}}]
"""
    world = _world(_gateway("edge", 80, ["*"], extra=extra), _vs("web", ["*"], ["edge"]), routed)
    listeners = resources_of(world, GATEWAY_NODE, rs.LISTENER)
    [chain] = listeners["gateway|31400"]["filter_chains"]
    assert (
        chain["filters"][0]["typed_config"]["cluster"]
        == "outbound|80||web.default.svc.cluster.local"
    )
    assert "listener_filters" not in listeners["gateway|31400"]  # the server may speak first
    assert not [w for w in gateway_problems(world, world.resources) if "has tcp: routes" in w]
