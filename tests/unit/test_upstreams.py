"""``tsunagi run --upstream``: the flag, the node metadata both sides agree on, and the
upstream listeners' TCP routing (Istio's tcp route semantics) as translation makes them."""

from __future__ import annotations

import argparse

import pytest
from envoy.config.listener.v3.listener_pb2 import Listener

from tsunagi import proxy_contract as pc
from tsunagi.agent.bootstrap import ProxyIdentity, bootstrap
from tsunagi.api import load_documents
from tsunagi.cli.main import _upstream, _upstream_conflict, main
from tsunagi.mesh import Node, Upstream, World
from tsunagi.mesh.analysis import not_yet_enforced
from tsunagi.registry import Instance
from tsunagi.xds import resources as rs
from tsunagi.xds.translate import translate
from tsunagi.xds.translate.upstream_listeners import (
    upstream_listener_name,
    upstream_listeners,
    upstream_targets,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tcp-echo:9000", ("tcp-echo", 9000, 0)),
        ("db.data:5432@15432", ("db.data", 5432, 15432)),
        ("db.example.com:443@1", ("db.example.com", 443, 1)),
    ],
)
def test_upstream_flag(text: str, expected: tuple[str, int, int]) -> None:
    assert _upstream(text) == expected


@pytest.mark.parametrize(
    "text", ["tcp-echo", ":9000", "tcp-echo:", "tcp-echo:0", "tcp-echo:70000", "a:1@x", "a:1@0"]
)
def test_bad_upstream_flags_say_the_form(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=r"SERVICE:PORT|LOCALPORT"):
        _upstream(text)


def test_conflicting_upstreams_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    same = "names the same service port"
    assert same in _upstream_conflict([("a", 1, 0), ("a", 1, 5)], "default")
    # One service, named several ways: short, other case, with namespace, as an FQDN.
    for other in ("A", "a.default", "a.default.svc", "a.default.svc.cluster.local"):
        assert same in _upstream_conflict([("a", 1, 0), (other, 1, 0)], "default"), other
    assert _upstream_conflict([("a", 1, 0), ("a.shop", 1, 0)], "default") == ""
    assert "local port 5" in _upstream_conflict([("a", 1, 5), ("b", 1, 5)], "default")
    assert _upstream_conflict([("a", 1, 0), ("b", 1, 0)], "default") == ""
    argv = ["run", "--service", "c", "--upstream", "a:1", "--upstream", "A.default:1", "--", "x"]
    assert main(argv) == 2
    assert same in capsys.readouterr().err


def test_the_app_variable_names_service_and_port() -> None:
    assert pc.upstream_env("tcp-echo", 9000) == "TSUNAGI_UPSTREAM_TCP_ECHO_9000"
    assert pc.upstream_env("db.data", 5432) == "TSUNAGI_UPSTREAM_DB_DATA_5432"


def test_upstreams_travel_in_the_node_metadata() -> None:
    ident = ProxyIdentity(
        node_id="c.shop",
        service="c",
        namespace="shop",
        upstreams=(("tcp-echo", 9000, 19000), ("db.data", 5432, 15432)),
    )
    meta = bootstrap(ident, "127.0.0.1", 15010, 15000)["node"]["metadata"]
    node = Node.from_metadata("c.shop", meta)
    assert node.upstreams == (
        Upstream("tcp-echo.shop.svc.cluster.local", 9000, 19000),
        Upstream("db.data", 5432, 15432),
    )
    plain = bootstrap(ProxyIdentity("d.shop", "d", "shop"), "127.0.0.1", 15010, 15000)
    assert pc.META_UPSTREAMS not in plain["node"]["metadata"]
    assert Node.from_metadata("d.shop", plain["node"]["metadata"]).upstreams == ()


ECHO = [
    Instance.from_document(
        {
            "name": f"tcp-echo-{v}",
            "service": "tcp-echo",
            "namespace": "default",
            "port": 9000,
            "address": "127.0.0.1",
            "target_port": 20000 + i,
            "labels": {"app": "tcp-echo", "version": v},
            "protocol": "TCP",
        }
    )
    for i, v in enumerate(("v1", "v2"))
]
HOST = "tcp-echo.default.svc.cluster.local"


def world(config: str) -> World:
    return World.build(1, load_documents(config, "t.yaml"), ECHO)


def node(labels: dict[str, str] | None = None, namespace: str = "default") -> Node:
    return Node(
        id="c",
        namespace=namespace,
        labels=labels or {},
        upstreams=(Upstream(HOST, 9000, 19000),),
    )


def rule(tcp: str, gateways: str = "") -> str:
    return f"""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: tcp-echo, namespace: default}}
spec:
  hosts: [tcp-echo]
{gateways}
  tcp:
{tcp}
"""


def targets(config: str, n: Node | None = None) -> list[tuple[str, int]]:
    n = n or node()
    return upstream_targets(world(config), n, n.upstreams[0])


V1 = f"outbound|9000|v1|{HOST}"
V2 = f"outbound|9000|v2|{HOST}"
DEFAULT = f"outbound|9000||{HOST}"


def test_without_a_virtual_service_connections_go_to_the_service_port() -> None:
    assert targets("") == [(DEFAULT, 100)]
    (listener,) = upstream_listeners(world(""), node())
    assert listener["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 19000}
    assert listener["filter_chains"][0]["filters"][0]["typed_config"]["cluster"] == DEFAULT


def test_weights_split_and_zero_weights_are_left_out() -> None:
    tcp = """\
  - route:
    - {destination: {host: tcp-echo, subset: v1}, weight: 80}
    - {destination: {host: tcp-echo, subset: v2}, weight: 20}
"""
    assert targets(rule(tcp)) == [(V1, 80), (V2, 20)]
    zero = tcp.replace("80}", "100}").replace("20}", "0}")
    assert targets(rule(zero)) == [(V1, 100)]


def test_an_upstream_named_by_an_alias_is_routed_as_its_service() -> None:
    """``--upstream tcp-echo.default:9000`` is the service's port: its listener keeps the
    name it was given, and its routes and clusters are the full name's."""
    tcp = """\
  - route:
    - {destination: {host: tcp-echo, subset: v1}, weight: 80}
    - {destination: {host: tcp-echo, subset: v2}, weight: 20}
"""
    full = upstream_listeners(world(rule(tcp)), node())
    for alias in ("tcp-echo.default", "tcp-echo.default.svc"):
        aliased = Node(id="c", upstreams=(Upstream(alias, 9000, 19000),))
        (listener,) = upstream_listeners(world(rule(tcp)), aliased)
        assert listener["name"] == f"upstream|9000|{alias}"
        assert listener["filter_chains"] == full[0]["filter_chains"], alias
    config = full[0]["filter_chains"][0]["filters"][0]["typed_config"]
    assert config["weighted_clusters"]["clusters"] == [
        {"name": V1, "weight": 80},
        {"name": V2, "weight": 20},
    ]


def test_the_first_matching_route_wins_and_no_match_means_the_default() -> None:
    tcp = """\
  - match: [{port: 9001}]
    route: [{destination: {host: tcp-echo, subset: v2}}]
  - match: [{sourceLabels: {team: red}}, {sourceNamespace: other}]
    route: [{destination: {host: tcp-echo, subset: v1}}]
  - match: [{destinationSubnets: [10.0.0.0/8]}]
    route: [{destination: {host: tcp-echo, subset: v2}}]
"""
    assert targets(rule(tcp)) == [(DEFAULT, 100)]
    assert targets(rule(tcp), node({"team": "red"})) == [(V1, 100)]
    # Either match of a route is enough: a sidecar in namespace "other" matches too.
    assert targets(rule(tcp), node(namespace="other")) == [(V1, 100)]


def test_gateways_decide_whether_a_rule_or_match_applies_to_sidecars() -> None:
    tcp = "  - route: [{destination: {host: tcp-echo, subset: v2}}]\n"
    assert targets(rule(tcp, "  gateways: [mesh]")) == [(V2, 100)]
    assert targets(rule(tcp, "  gateways: [edge]")) == [(DEFAULT, 100)]
    named = "  - match: [{gateways: [edge]}]\n" + tcp.replace("  - ", "    ", 1)
    assert targets(rule(named)) == [(DEFAULT, 100)]


def test_tcp_routes_are_no_longer_reported_as_not_applied() -> None:
    tcp = """\
  - match: [{destinationSubnets: [10.0.0.0/8]}]
    route: [{destination: {host: tcp-echo}}]
"""
    warnings = not_yet_enforced(load_documents(rule(tcp), "t.yaml"))
    assert warnings == [
        "VirtualService default/tcp-echo: spec.tcp[0].match[0].destinationSubnets is not "
        "applied yet: on sidecars (--upstream listeners, HTTPS_PROXY CONNECT tunnels) a "
        "connection names a service, not a destination address, so this match never holds; "
        "on gateways it is ignored, as in Istio. Match on port or sniHosts instead"
    ]


def test_unlike_http_a_match_naming_mesh_still_checks_its_source_fields() -> None:
    tcp = (
        "  - match: [{gateways: [mesh], sourceLabels: {team: red}}]\n"
        "    route: [{destination: {host: tcp-echo, subset: v2}}]\n"
    )
    assert targets(rule(tcp)) == [(DEFAULT, 100)]
    assert targets(rule(tcp), node({"team": "red"})) == [(V2, 100)]


SECURE = "secure.default.svc.cluster.local"


def tls_world(config: str) -> World:
    secure = Instance.from_document(
        {
            "name": "secure-a",
            "service": "secure",
            "namespace": "default",
            "port": 443,
            "address": "127.0.0.1",
            "target_port": 20443,
            "labels": {"app": "secure", "version": "v1"},
            "protocol": "TLS",
        }
    )
    return World.build(1, load_documents(config, "t.yaml"), [*ECHO, secure])


def tls_listener(config: str, labels: dict[str, str] | None = None) -> dict[str, object]:
    n = Node(id="c", labels=labels or {}, upstreams=(Upstream(SECURE, 443, 10443),))
    (listener,) = upstream_listeners(tls_world(config), n)
    return listener


def chains(listener: dict[str, object]) -> list[tuple[object, object]]:
    """``(server_names or None, cluster)`` of each filter chain."""
    out = []
    for c in listener["filter_chains"]:  # type: ignore[attr-defined]
        names = c.get("filter_chain_match", {}).get("server_names")
        out.append((names, c["filters"][0]["typed_config"].get("cluster")))
    return out


SECURE_RULE = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: secure, namespace: default}
spec:
  hosts: [secure]
  tls:
  - match: [{sniHosts: [a.example]}, {sniHosts: [z.example], sourceLabels: {team: red}}]
    route: [{destination: {host: secure, subset: one}}]
  - match: [{sniHosts: [a.example, B.example, "*bare.example", "*.w.example"]}]
    route: [{destination: {host: secure, subset: two}}]
  tcp:
  - route: [{destination: {host: tcp-echo}}]
"""


def test_tls_ports_route_by_sni_and_ignore_tcp_routes() -> None:
    # No VirtualService: one chain to the port's cluster, for any name.
    plain = tls_listener("")
    assert chains(plain) == [(None, f"outbound|443||{SECURE}")]
    assert plain["listener_filters"][0]["name"] == "envoy.filters.listener.tls_inspector"  # type: ignore[index]
    # A name belongs to the first route that claims it; "*bare" has no Envoy spelling.
    assert chains(tls_listener(SECURE_RULE)) == [
        (["a.example"], f"outbound|443|one|{SECURE}"),
        (["b.example", "*.w.example"], f"outbound|443|two|{SECURE}"),
    ]
    assert chains(tls_listener(SECURE_RULE, {"team": "red"}))[1] == (
        ["z.example"],
        f"outbound|443|one|{SECURE}",
    )
    # A plain TCP port of the same mesh gets no TLS inspector.
    (tcp,) = upstream_listeners(world(""), node())
    assert "listener_filters" not in tcp


def test_malformed_upstream_metadata_is_left_out_not_fatal() -> None:
    meta = {
        pc.META_UPSTREAMS: [
            {"service": "a", "port": 1},
            {"service": "b", "port": "x", "listen": 2},
            "junk",
            {"service": "c", "port": 3.0, "listen": 4.0},  # numbers arrive as JSON doubles
        ]
    }
    assert Node.from_metadata("n", meta).upstreams == (
        Upstream("c.default.svc.cluster.local", 3, 4),
    )
    assert Node.from_metadata("n", {pc.META_UPSTREAMS: "junk"}).upstreams == ()


def test_tcp_routes_bound_only_to_gateways_are_applied_there() -> None:
    config = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: edge, namespace: default}
spec:
  hosts: [tcp-echo]
  gateways: [edge]
  tcp:
  - route: [{destination: {host: tcp-echo}}]
"""
    # Gateways' TCP and TLS servers apply them (xds/translate/gateway_chains.py).
    assert not_yet_enforced(load_documents(config, "t.yaml")) == []


def test_upstream_connections_are_reported_by_the_source() -> None:
    from tsunagi.agent.metrics import Aggregator, Identity

    peer = "tcp-echo-v2;default;tcp-echo;v2;Kubernetes"
    v2 = f"outbound|9000|v2|{HOST}"
    sa = "spiffe://cluster.local/ns/default/sa/tcp-echo"  # its certificate, over mTLS
    agg = Aggregator(
        Identity("client", "default", {"app": "client", "version": "v1"}),
        lambda hosts: {"127.0.0.1:15006": peer} if "127.0.0.1:15006" in hosts else {},
    )
    agg.feed(
        [
            f"u\tTcpUpstreamConnected\t3\t0\t0\t-\t{v2}\t127.0.0.1:15006\t{sa}",
            f"u\tTcpConnectionEnd\t3\t12\t15\t-\t{v2}\t127.0.0.1:15006\t{sa}",
            f"u\tTcpConnectionEnd\t4\t0\t0\tUO\t{V1}\t-\t-",  # over the connection limit
            "t\tTcpConnectionEnd\t5\t7\t7\t-",  # an inbound one, for contrast
        ]
    )
    assert agg.bad_lines == 0
    series = {}
    for line in agg.render().splitlines():
        if line.startswith("istio_tcp_sent_bytes_total{"):
            labels = dict(
                p.split("=", 1) for p in line[line.index("{") + 1 : line.index("}")].split(",")
            )
            series[(labels["reporter"], labels["response_flags"])] = (
                labels,
                line.rsplit(" ", 1)[1],
            )
    labels, value = series[('"source"', '"-"')]
    assert value == "15"
    assert labels["source_workload"] == '"client-v1"'
    assert labels["destination_workload"] == '"tcp-echo-v2"'
    assert labels["destination_version"] == '"v2"'
    assert labels["destination_principal"] == f'"{sa}"'
    assert labels["destination_service"] == f'"{HOST}"'
    assert labels["request_protocol"] == '"tcp"'
    overflow, _ = series[('"source"', '"UO"')]
    assert overflow["destination_workload"] == '"unknown"'
    assert overflow["destination_principal"] == '"unknown"'
    assert series[('"destination"', '"-"')][1] == "7"


@pytest.mark.parametrize(
    ("context", "patched"), [("SIDECAR_OUTBOUND", True), ("ANY", True), ("SIDECAR_INBOUND", False)]
)
def test_envoy_filters_see_an_upstream_listener_as_outbound(context: str, patched: bool) -> None:
    # It carries the app's outbound traffic, as Istio's outbound listeners do.
    config = f"""
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {{name: buffers, namespace: istio-system}}
spec:
  configPatches:
  - applyTo: LISTENER
    match: {{context: {context}}}
    patch: {{operation: MERGE, value: {{per_connection_buffer_limit_bytes: 4096}}}}
"""
    listeners = translate(world(config), node()).of(rs.LISTENER)
    listener = Listener()
    listeners[upstream_listener_name(node().upstreams[0])].body.Unpack(listener)
    assert (listener.per_connection_buffer_limit_bytes.value == 4096) is patched
