"""EnvoyFilter patches on translated config: each applyTo and operation as Istio applies it,
which proxies a filter selects and in what order, sharing of unpatched and patched
resources, and a patch Envoy would reject reported against its filter."""

# ruff: noqa: E501 (Envoy type URLs in patch values are long)
from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from google.protobuf import json_format

from tsunagi.api import load_documents
from tsunagi.controlplane.push import Pusher, PushErrors, _collect
from tsunagi.controlplane.status import node_status
from tsunagi.mesh import Node, World
from tsunagi.store import MemoryStore
from tsunagi.xds import resources as rs
from tsunagi.xds.cache import NodeEntry, SnapshotCache
from tsunagi.xds.protocol import SotwStream
from tsunagi.xds.translate import (
    Memo,
    Patched,
    assemble_patched,
    translate_local,
    translate_outbound,
    translate_shared,
)

from .examples import instance
from .test_xds_protocol import connected
from .test_xds_protocol import world as xds_world

HCM = "envoy.filters.network.http_connection_manager"
REVIEWS = "outbound|9080||reviews.default.svc.cluster.local"
REVIEWS_VHOST = "reviews.default.svc.cluster.local:9080"


def node(name: str = "pp", namespace: str = "default", **labels: str) -> Node:
    return Node.from_metadata(
        f"{name}.{namespace}",
        {
            "namespace": namespace,
            "labels": {"app": "productpage", **labels},
            "outbound_port": 15001,
            "inbound": {"8000": {"listen": 15006, "app": 8080}},
        },
    )


def ef(patches: str, name: str = "ef", namespace: str = "default", spec: str = "") -> str:
    return (
        f"apiVersion: networking.istio.io/v1alpha3\nkind: EnvoyFilter\n"
        f"metadata: {{name: {name}, namespace: {namespace}}}\n"
        f"spec:\n{spec}  configPatches:\n{patches}\n---\n"
    )


def world(config: str) -> World:
    return World.build(1, load_documents(config, "ef.yaml"), [instance("reviews-1")])


def run(config: str, n: Node | None = None, memo: Memo | None = None) -> tuple[Any, Patched]:
    w, n, memo = world(config), n or node(), memo or Memo()
    out = translate_outbound(w, w.scope_of(n), memo, translate_shared(w, memo))
    return assemble_patched(w, n, out, translate_local(n), 1, memo)


def dicts(snapshot: Any, type_url: str) -> dict[str, dict[str, Any]]:
    return {
        name: json.loads(
            json.dumps(json_format.MessageToDict(r.body, preserving_proto_field_name=True))
        )
        for name, r in snapshot.of(type_url).items()
    }


def hcm(listener: dict[str, Any]) -> dict[str, Any]:
    # An inbound listener (PERMISSIVE mTLS by default) has an mTLS chain and a plaintext
    # chain with the same filters, each patched alike; the outbound one has one chain.
    *_, chain = listener["filter_chains"]
    return next(f for f in chain["filters"] if f["name"] == HCM)["typed_config"]


def http_filters(snapshot: Any, listener: str) -> list[str]:
    return [f["name"] for f in hcm(dicts(snapshot, rs.LISTENER)[listener])["http_filters"]]


CORS = "{name: envoy.filters.http.cors, typed_config: {'@type': type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors}}"
FAULT = "{name: envoy.filters.http.fault, typed_config: {'@type': type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault}}"


def http_patch(op: str, sub: str = "", value: str = CORS, context: str = "SIDECAR_INBOUND") -> str:
    sub_match = f", subFilter: {{name: {sub}}}" if sub else ""
    return (
        f"  - applyTo: HTTP_FILTER\n"
        f"    match: {{context: {context}, listener: {{filterChain: {{filter: {{name: {HCM}{sub_match}}}}}}}}}\n"
        f"    patch: {{operation: {op}, value: {value}}}\n"
    )


# ----------------------------------------------------------------------------- HTTP_FILTER


def test_http_filter_insert_before_without_sub_filter_goes_first() -> None:
    snap, p = run(ef(http_patch("INSERT_BEFORE")))
    assert http_filters(snap, "inbound|8000") == [
        "envoy.filters.http.cors",
        "envoy.filters.http.router",
    ]
    # context SIDECAR_INBOUND: the outbound listener is untouched
    assert http_filters(snap, "outbound") == [
        "envoy.filters.http.cors",
        "envoy.filters.http.fault",
        "envoy.filters.http.dynamic_forward_proxy",
        "envoy.filters.http.router",
    ]
    assert p.errors == ()
    assert p.touched == {rs.LISTENER: ("default/ef",)}


def test_http_filter_insert_after_and_before_a_sub_filter() -> None:
    config = ef(
        http_patch("INSERT_AFTER", "envoy.filters.http.cors", FAULT, "SIDECAR_OUTBOUND")
        + http_patch("INSERT_BEFORE", "envoy.filters.http.router", CORS, "SIDECAR_OUTBOUND")
    )
    snap, _ = run(config)
    assert http_filters(snap, "outbound") == [
        "envoy.filters.http.cors",
        "envoy.filters.http.fault",
        "envoy.filters.http.fault",
        "envoy.filters.http.dynamic_forward_proxy",
        "envoy.filters.http.cors",
        "envoy.filters.http.router",
    ]


def test_http_filter_insert_first_replace_and_remove() -> None:
    config = ef(
        http_patch("REMOVE", "envoy.filters.http.fault", "null", "SIDECAR_OUTBOUND")
        + http_patch("REPLACE", "envoy.filters.http.cors", FAULT, "SIDECAR_OUTBOUND")
        + http_patch("INSERT_FIRST", "envoy.filters.http.router", CORS, "SIDECAR_OUTBOUND")
    )
    snap, _ = run(config)
    assert http_filters(snap, "outbound") == [
        "envoy.filters.http.cors",
        "envoy.filters.http.fault",
        "envoy.filters.http.dynamic_forward_proxy",
        "envoy.filters.http.router",
    ]
    assert [
        f["typed_config"]["@type"].rsplit(".", 1)[1]
        for f in hcm(dicts(snap, rs.LISTENER)["outbound"])["http_filters"]
    ] == ["Cors", "HTTPFault", "FilterConfig", "Router"]


def test_http_filter_merge_merges_typed_config_of_the_same_type() -> None:
    value = (
        "{typed_config: {'@type': type.googleapis.com/envoy.extensions.filters.http.router.v3.Router,"
        " suppress_envoy_headers: true}}"
    )
    snap, _ = run(ef(http_patch("MERGE", "envoy.filters.http.router", value)))
    router = hcm(dicts(snap, rs.LISTENER)["inbound|8000"])["http_filters"][-1]
    assert router["name"] == "envoy.filters.http.router"
    assert router["typed_config"]["suppress_envoy_headers"] is True


# ------------------------------------------------------------------- LISTENER, chains, filters


def test_listener_merge_by_service_port_and_remove() -> None:
    config = ef(
        "  - applyTo: LISTENER\n"
        "    match: {listener: {portNumber: 8000}}\n"
        "    patch: {operation: MERGE, value: {per_connection_buffer_limit_bytes: 32768}}\n"
        "  - applyTo: LISTENER\n"
        "    match: {listener: {portNumber: 9999}}\n"
        "    patch: {operation: REMOVE}\n"
    )
    snap, _ = run(config)
    listeners = dicts(snap, rs.LISTENER)
    assert listeners["inbound|8000"]["per_connection_buffer_limit_bytes"] == 32768
    assert "per_connection_buffer_limit_bytes" not in listeners["outbound"]
    snap, _ = run(
        ef(
            "  - {applyTo: LISTENER, match: {context: SIDECAR_OUTBOUND}, patch: {operation: REMOVE}}\n"
        )
    )
    assert set(snap.of(rs.LISTENER)) == {"inbound|8000"}


def test_listener_add_in_every_sidecar_context() -> None:
    # Istio adds a LISTENER ADD on its outbound pass (context ANY or SIDECAR_OUTBOUND) and on
    # its inbound pass (SIDECAR_INBOUND): once either way
    value = "{name: extra, address: {socket_address: {address: 127.0.0.1, port_value: 18000}}}"
    for context in ("ANY", "SIDECAR_OUTBOUND", "SIDECAR_INBOUND"):
        added, _ = run(
            ef(
                f"  - {{applyTo: LISTENER, match: {{context: {context}}}, "
                f"patch: {{operation: ADD, value: {value}}}}}\n"
            )
        )
        assert set(added.of(rs.LISTENER)) == {"outbound", "inbound|8000", "extra"}, context


def test_network_filter_insert_first_merge_and_remove() -> None:
    echo = "{name: envoy.filters.network.echo, typed_config: {'@type': type.googleapis.com/envoy.extensions.filters.network.echo.v3.Echo}}"
    merge = (
        "{typed_config: {'@type': type.googleapis.com/envoy.extensions.filters.network."
        "http_connection_manager.v3.HttpConnectionManager, server_name: patched}}"
    )
    config = ef(
        f"  - {{applyTo: NETWORK_FILTER, match: {{context: SIDECAR_INBOUND}}, "
        f"patch: {{operation: INSERT_FIRST, value: {echo}}}}}\n"
        f"  - {{applyTo: NETWORK_FILTER, match: {{listener: {{filterChain: {{filter: "
        f"{{name: {HCM}}}}}}}}}, patch: {{operation: MERGE, value: {merge}}}}}\n"
    )
    snap, _ = run(config)
    listeners = dicts(snap, rs.LISTENER)
    inbound = [f["name"] for f in listeners["inbound|8000"]["filter_chains"][0]["filters"]]
    assert inbound == ["envoy.filters.network.echo", HCM]
    assert hcm(listeners["outbound"])["server_name"] == "patched"
    assert hcm(listeners["outbound"])["stat_prefix"] == "outbound"  # merged, not replaced
    removed, _ = run(
        ef(
            f"  - {{applyTo: NETWORK_FILTER, match: {{context: SIDECAR_OUTBOUND, listener: "
            f"{{filterChain: {{filter: {{name: {HCM}}}}}}}}}, patch: {{operation: REMOVE}}}}\n"
        )
    )
    assert dicts(removed, rs.LISTENER)["outbound"]["filter_chains"][0].get("filters", []) == []


def test_filter_chain_merge_and_add() -> None:
    chain = "{name: added, filters: []}"
    config = ef(
        "  - {applyTo: FILTER_CHAIN, match: {context: SIDECAR_INBOUND}, "
        "patch: {operation: MERGE, value: {name: merged}}}\n"
        f"  - {{applyTo: FILTER_CHAIN, match: {{context: SIDECAR_INBOUND}}, "
        f"patch: {{operation: ADD, value: {chain}}}}}\n"
    )
    snap, _ = run(config)
    names = [c.get("name") for c in dicts(snap, rs.LISTENER)["inbound|8000"]["filter_chains"]]
    # Both chains of the PERMISSIVE listener (mTLS, plaintext) merged, as in Istio.
    assert names == ["merged", "merged", "added"]


# ------------------------------------------------------------------------------- routes


def test_route_configuration_virtual_host_and_route_patches_on_outbound() -> None:
    config = ef(
        "  - applyTo: ROUTE_CONFIGURATION\n"
        "    patch: {operation: MERGE, value: {response_headers_to_add: [{header: {key: rc, value: '1'}}]}}\n"
        "  - applyTo: VIRTUAL_HOST\n"
        f"    match: {{routeConfiguration: {{vhost: {{name: '{REVIEWS_VHOST}'}}}}}}\n"
        "    patch: {operation: MERGE, value: {response_headers_to_add: [{header: {key: vh, value: '1'}}]}}\n"
        "  - applyTo: VIRTUAL_HOST\n"
        "    match: {routeConfiguration: {portNumber: 9080}}\n"
        "    patch: {operation: ADD, value: {name: added, domains: [added.example], routes: []}}\n"
        "  - applyTo: HTTP_ROUTE\n"
        f"    match: {{routeConfiguration: {{vhost: {{name: '{REVIEWS_VHOST}', route: {{action: ROUTE}}}}}}}}\n"
        "    patch: {operation: MERGE, value: {route: {timeout: 3s}}}\n"
        "  - applyTo: HTTP_ROUTE\n"
        f"    match: {{routeConfiguration: {{vhost: {{name: '{REVIEWS_VHOST}', route: {{name: default}}}}}}}}\n"
        "    patch: {operation: INSERT_BEFORE, value: {name: first, match: {prefix: /x}, direct_response: {status: 418}}}\n"
    ) + ef(
        # A later filter sees the route the first one inserted (within one filter, merges
        # run before inserts, as in Istio)
        "  - applyTo: HTTP_ROUTE\n"
        f"    match: {{routeConfiguration: {{vhost: {{name: '{REVIEWS_VHOST}', route: {{action: DIRECT_RESPONSE}}}}}}}}\n"
        "    patch: {operation: MERGE, value: {name: renamed}}\n",
        "later",
        spec="  priority: 1\n",
    )
    snap, p = run(config)
    [rc] = dicts(snap, rs.ROUTE).values()
    assert rc["response_headers_to_add"] == [{"header": {"key": "rc", "value": "1"}}]
    vhosts = {v["name"]: v for v in rc["virtual_hosts"]}
    assert list(vhosts)[-1] == "added"
    reviews = vhosts[REVIEWS_VHOST]
    assert reviews["response_headers_to_add"] == [{"header": {"key": "vh", "value": "1"}}]
    assert [r["name"] for r in reviews["routes"]] == ["renamed", "default"]
    assert reviews["routes"][1]["route"]["timeout"] == "3s"  # a Duration is replaced
    assert p.touched[rs.ROUTE] == ("default/ef", "default/later")


def test_route_remove_and_virtual_host_remove_and_replace() -> None:
    config = ef(
        "  - applyTo: HTTP_ROUTE\n"
        f"    match: {{routeConfiguration: {{vhost: {{name: '{REVIEWS_VHOST}'}}}}}}\n"
        "    patch: {operation: REMOVE}\n"
        "  - applyTo: VIRTUAL_HOST\n"
        "    match: {routeConfiguration: {vhost: {name: nope}}}\n"
        "    patch: {operation: REMOVE}\n"
    )
    snap, _ = run(config)
    [rc] = dicts(snap, rs.ROUTE).values()
    # The outbound policy's catch-all (allow_any) is not the patched virtual host.
    assert [v.get("routes", []) for v in rc["virtual_hosts"] if v["name"] != "allow_any"] == [[]]
    replaced, _ = run(
        ef(
            "  - applyTo: VIRTUAL_HOST\n"
            "    match: {routeConfiguration: {vhost: {name: '" + REVIEWS_VHOST + "'}}}\n"
            "    patch: {operation: REPLACE, value: {name: new, domains: [new.example]}}\n"
        )
    )
    [rc] = dicts(replaced, rs.ROUTE).values()
    assert [v["name"] for v in rc["virtual_hosts"]] == ["new", "allow_any"]


def test_inbound_virtual_host_answers_to_istios_name() -> None:
    config = ef(
        "  - applyTo: HTTP_ROUTE\n"
        "    match: {context: SIDECAR_INBOUND, routeConfiguration: {portNumber: 8000, vhost: {name: 'inbound|http|8000'}}}\n"
        "    patch: {operation: MERGE, value: {response_headers_to_add: [{header: {key: in, value: '1'}}]}}\n"
    )
    snap, _ = run(config)
    inbound = hcm(dicts(snap, rs.LISTENER)["inbound|8000"])["route_config"]
    added = inbound["virtual_hosts"][0]["routes"][0]["response_headers_to_add"]
    assert added == [{"header": {"key": "in", "value": "1"}}]
    # Outbound routes are SIDECAR_OUTBOUND: untouched
    [rc] = dicts(snap, rs.ROUTE).values()
    assert "response_headers_to_add" not in rc["virtual_hosts"][0]["routes"][0]


# ------------------------------------------------------------------------------ clusters


def test_cluster_merge_replaces_durations_remove_and_add() -> None:
    static = (
        "{name: extra, type: STATIC, load_assignment: {cluster_name: extra, endpoints: "
        "[{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 1}}}}]}]}}"
    )
    config = ef(
        "  - {applyTo: CLUSTER, match: {cluster: {service: reviews.default.svc.cluster.local, "
        "portNumber: 9080}}, patch: {operation: MERGE, value: {connect_timeout: 1.5s}}}\n"
        f"  - {{applyTo: CLUSTER, patch: {{operation: ADD, value: {static}}}}}\n"
        "  - {applyTo: CLUSTER, match: {context: SIDECAR_INBOUND}, patch: {operation: REMOVE}}\n"
    )
    plain, _ = run("")
    snap, _ = run(config)
    clusters = dicts(snap, rs.CLUSTER)
    assert set(clusters) == {REVIEWS, "extra", "PassthroughCluster"}
    assert clusters[REVIEWS]["connect_timeout"] == "1.500s"
    # the patched cluster's endpoints get a new version, so Envoy is sent them again
    assert snap.of(rs.ENDPOINT)[REVIEWS].version != plain.of(rs.ENDPOINT)[REVIEWS].version
    assert snap.of(rs.ENDPOINT)[REVIEWS].body == plain.of(rs.ENDPOINT)[REVIEWS].body


def test_removed_cluster_takes_its_endpoints() -> None:
    snap, _ = run(
        ef(
            "  - {applyTo: CLUSTER, match: {cluster: {name: '"
            + REVIEWS
            + "'}}, patch: {operation: REMOVE}}\n"
        )
    )
    assert REVIEWS not in snap.of(rs.CLUSTER) and REVIEWS not in snap.of(rs.ENDPOINT)


# ------------------------------------------------------------------ selection and order


ADD_CORS_FIRST = http_patch("INSERT_FIRST", value=CORS)
ADD_FAULT_FIRST = http_patch("INSERT_FIRST", value=FAULT)


def test_selector_namespace_and_root_namespace() -> None:
    selected = ef(ADD_CORS_FIRST, spec="  workloadSelector: {labels: {app: productpage}}\n")
    assert http_filters(run(selected)[0], "inbound|8000")[0] == "envoy.filters.http.cors"
    untouched = ["envoy.filters.http.router"]
    other_app = ef(ADD_CORS_FIRST, spec="  workloadSelector: {labels: {app: reviews}}\n")
    assert http_filters(run(other_app)[0], "inbound|8000") == untouched
    other_ns = ef(ADD_CORS_FIRST, namespace="shop")
    assert http_filters(run(other_ns)[0], "inbound|8000") == untouched
    root = ef(ADD_CORS_FIRST, namespace="istio-system")
    assert http_filters(run(root)[0], "inbound|8000")[0] == "envoy.filters.http.cors"
    refs = ef(ADD_CORS_FIRST, spec="  targetRefs: [{kind: Gateway, name: g}]\n")
    assert http_filters(run(refs)[0], "inbound|8000") == untouched


def test_order_is_priority_then_root_namespace_then_name() -> None:
    # Each filter puts its HTTP filter first, so the last applied ends up first.
    config = ef(ADD_CORS_FIRST, "a", "default", "  priority: 5\n") + ef(ADD_FAULT_FIRST, "b")
    assert http_filters(run(config)[0], "inbound|8000")[:2] == [
        "envoy.filters.http.cors",
        "envoy.filters.http.fault",
    ]
    config = ef(ADD_CORS_FIRST, "a") + ef(ADD_FAULT_FIRST, "z", "istio-system")
    assert http_filters(run(config)[0], "inbound|8000")[:2] == [
        "envoy.filters.http.cors",
        "envoy.filters.http.fault",
    ]


def test_proxy_version_match_never_matches_tsunagi_proxies() -> None:
    config = ef(
        "  - {applyTo: CLUSTER, match: {proxy: {proxyVersion: '.*'}}, patch: {operation: REMOVE}}\n"
    )
    snap, p = run(config)
    assert REVIEWS in snap.of(rs.CLUSTER) and p.touched == {}


# ------------------------------------------------------------------- sharing and failure


def test_unselected_nodes_share_everything_and_patched_ones_share_results() -> None:
    config = ef(ADD_CORS_FIRST, spec="  workloadSelector: {labels: {app: productpage}}\n")
    w, memo = world(config), Memo()
    shared = translate_shared(w, memo)

    def snapshot(n: Node) -> tuple[Any, Any]:
        out, local = translate_outbound(w, w.scope_of(n), memo, shared), translate_local(n)
        return assemble_patched(w, n, out, local, 1, memo)[0], (out, local)

    other = Node.from_metadata("o.default", {"namespace": "default", "labels": {"app": "x"}})
    plain, (out, local) = snapshot(other)
    assert plain.of(rs.ROUTE) is out.routes and plain.of(rs.LISTENER) is local.listeners
    (a, (out_a, _)), (b, _) = snapshot(node("a")), snapshot(node("b"))
    # the same patched listener object for both (made once), the routes untouched
    assert a.of(rs.LISTENER)["inbound|8000"] is b.of(rs.LISTENER)["inbound|8000"]
    assert a.of(rs.ROUTE) is out_a.routes


def test_unknown_fields_are_dropped_and_the_rest_of_the_patch_applies() -> None:
    # As Istio, which builds patch values leniently (and warns at apply, see test_api_envoyfilter)
    config = ef(
        "  - {applyTo: CLUSTER, patch: {operation: MERGE, value: {connect_timeout: 1s, nonsense: 1}}}\n"
    )
    snap, p = run(config)
    assert dicts(snap, rs.CLUSTER)[REVIEWS]["connect_timeout"] == "1s"
    assert p.errors == ()


def test_a_filter_whose_value_cannot_be_built_is_reported_and_left_out() -> None:
    # Validation refuses such a value; one stored before the installed protos changed gets here
    merge = "  - {applyTo: CLUSTER, patch: {operation: MERGE, value: {connect_timeout: 1s}}}\n"
    [bad] = load_documents(ef(merge, "bad"), "ef.yaml")
    [cp] = bad.spec.config_patches
    nope = {"@type": "type.googleapis.com/envoy.nothing.v3.Nope"}
    unknown = {"cluster_type": {"name": "x", "typed_config": nope}}
    patch = cp.patch.model_copy(update={"value": unknown})
    spec = bad.spec.model_copy(update={"config_patches": (cp.model_copy(update={"patch": patch}),)})
    good = load_documents(ef(ADD_CORS_FIRST, "good"), "ef.yaml")
    w = World.build(1, [replace(bad, spec=spec), *good], [instance("reviews-1")])
    n, memo = node(), Memo()
    out = translate_outbound(w, w.scope_of(n), memo, translate_shared(w, memo))
    snap, p = assemble_patched(w, n, out, translate_local(n), 1, memo)
    assert dicts(snap, rs.CLUSTER)[REVIEWS]["connect_timeout"] == "10s"
    assert http_filters(snap, "inbound|8000")[0] == "envoy.filters.http.cors"
    [error] = p.errors
    assert error.resources == (("EnvoyFilter", "default", "bad"),)
    assert "referenced type unknown: type.googleapis.com/envoy.nothing.v3.Nope" in error.message
    errors = _collect({}, translate_shared(world("")), {}, {}, {"pp.default": p})
    assert errors.by_resource[("EnvoyFilter", "default", "bad")] == (error.describe(),)
    assert errors.for_node("pp.default", "default") == [error.describe()]
    assert errors.envoy_filters == {"pp.default": {rs.LISTENER: ("default/good",)}}


def test_istio_route_configuration_names_read_as_ports() -> None:
    def patched_vhosts(name: str) -> list[str]:
        config = ef(
            "  - applyTo: VIRTUAL_HOST\n"
            f"    match: {{routeConfiguration: {{name: '{name}'}}}}\n"
            "    patch: {operation: MERGE, value: {response_headers_to_add: [{header: {key: p, value: '1'}}]}}\n"
        )
        [rc] = dicts(run(config)[0], rs.ROUTE).values()
        return [v["name"] for v in rc["virtual_hosts"] if "response_headers_to_add" in v]

    assert patched_vhosts("9080") == [REVIEWS_VHOST]
    # The whole table: the service's virtual host and the outbound policy's catch-all.
    assert patched_vhosts("outbound") == [REVIEWS_VHOST, "allow_any"]
    assert patched_vhosts("80") == []
    inbound = ef(
        "  - applyTo: VIRTUAL_HOST\n"
        "    match: {context: SIDECAR_INBOUND, routeConfiguration: {name: 'inbound|8000||'}}\n"
        "    patch: {operation: MERGE, value: {response_headers_to_add: [{header: {key: p, value: '1'}}]}}\n"
    )
    route_config = hcm(dicts(run(inbound)[0], rs.LISTENER)["inbound|8000"])["route_config"]
    assert "response_headers_to_add" in route_config["virtual_hosts"][0]


def test_a_nack_names_the_envoy_filters_that_patched_that_type() -> None:
    envoy = connected(SotwStream, xds_world())
    entry = NodeEntry("n1", {"namespace": "default"}, xds_world(), envoy.stream)
    entry.snapshot = xds_world(timeout=2, revision=2)
    envoy.stream.set_snapshot(entry.snapshot)
    envoy.reject[rs.CLUSTER] = "bad cluster"
    envoy.run()
    errors = PushErrors(envoy_filters={"n1": {rs.CLUSTER: ("default/a", "istio-system/b")}})
    status = node_status(entry, errors)
    assert status["message"] == (
        "CDS: bad cluster (patched by EnvoyFilter default/a, istio-system/b)"
    )
    assert node_status(entry)["message"] == "CDS: bad cluster"


ECHO = "{name: envoy.filters.network.echo, typed_config: {'@type': type.googleapis.com/envoy.extensions.filters.network.echo.v3.Echo}}"


def network_patch(op: str, name: str = HCM, value: str = ECHO) -> str:
    return (
        f"  - {{applyTo: NETWORK_FILTER, match: {{context: SIDECAR_INBOUND, listener: "
        f"{{filterChain: {{filter: {{name: {name}}}}}}}}}, patch: {{operation: {op}, value: {value}}}}}\n"
    )


def inbound_filters(config: str) -> list[str]:
    listener = dicts(run(config)[0], rs.LISTENER)["inbound|8000"]
    return [f["name"] for f in listener["filter_chains"][0].get("filters", [])]


def test_network_filter_add_insert_after_before_and_replace() -> None:
    assert inbound_filters(ef(network_patch("ADD"))) == [HCM, "envoy.filters.network.echo"]
    assert inbound_filters(ef(network_patch("INSERT_AFTER"))) == [HCM, "envoy.filters.network.echo"]
    assert inbound_filters(ef(network_patch("INSERT_BEFORE"))) == [
        "envoy.filters.network.echo",
        HCM,
    ]
    assert inbound_filters(ef(network_patch("REPLACE"))) == ["envoy.filters.network.echo"]
    # a named match that selects nothing: no insert, no replace
    assert inbound_filters(ef(network_patch("INSERT_BEFORE", "nope"))) == [HCM]
    assert inbound_filters(ef(network_patch("REPLACE", "nope"))) == [HCM]


def test_filter_chain_remove() -> None:
    config = ef(
        "  - {applyTo: FILTER_CHAIN, match: {context: SIDECAR_INBOUND}, patch: {operation: REMOVE}}\n"
    )
    assert dicts(run(config)[0], rs.LISTENER)["inbound|8000"].get("filter_chains", []) == []


def route_names(config: str) -> list[str]:
    [rc] = dicts(run(config)[0], rs.ROUTE).values()
    vhost = next(v for v in rc["virtual_hosts"] if v["name"] == REVIEWS_VHOST)
    return [r.get("name", "") for r in vhost["routes"]]


def route_patch(op: str, route_match: str = "") -> str:
    where = f", route: {{{route_match}}}" if route_match else ""
    return (
        f"  - applyTo: HTTP_ROUTE\n"
        f"    match: {{routeConfiguration: {{vhost: {{name: '{REVIEWS_VHOST}'{where}}}}}}}\n"
        f"    patch: {{operation: {op}, value: {{name: new, match: {{prefix: /n}}, direct_response: {{status: 200}}}}}}\n"
    )


def test_http_route_add_insert_after_and_insert_first() -> None:
    assert route_names(ef(route_patch("ADD"))) == ["default", "new"]
    assert route_names(ef(route_patch("INSERT_AFTER", "name: default"))) == ["default", "new"]
    assert route_names(ef(route_patch("INSERT_FIRST", "name: default"))) == ["new", "default"]
    assert route_names(ef(route_patch("INSERT_FIRST"))) == ["new", "default"]
    # INSERT_FIRST with a route match that selects nothing inserts nothing (as Istio)
    assert route_names(ef(route_patch("INSERT_FIRST", "name: nope"))) == ["default"]


def test_virtual_host_remove() -> None:
    config = ef(
        "  - applyTo: VIRTUAL_HOST\n"
        f"    match: {{routeConfiguration: {{vhost: {{name: '{REVIEWS_VHOST}'}}}}}}\n"
        "    patch: {operation: REMOVE}\n"
    )
    [rc] = dicts(run(config)[0], rs.ROUTE).values()
    assert [v["name"] for v in rc.get("virtual_hosts", [])] == ["allow_any"]  # outbound policy


async def test_proxies_connecting_between_pushes_share_patched_resources() -> None:
    store = MemoryStore()
    config = ef("  - {applyTo: CLUSTER, patch: {operation: MERGE, value: {connect_timeout: 1s}}}\n")
    inst = instance("reviews-1")
    docs = [(r.key, dict(r.document)) for r in load_documents(config)]
    await store.commit([(inst.key, inst.to_document()), *docs])
    pusher = Pusher(store, SnapshotCache())
    meta = {"namespace": "default", "labels": {"app": "productpage"}, "outbound_port": 15001}
    a, b = (pusher.resolve(f"{n}.default", meta) for n in ("a", "b"))
    # patched once, not once per connecting proxy
    assert a.of(rs.CLUSTER)[REVIEWS] is b.of(rs.CLUSTER)[REVIEWS]
    assert dicts(a, rs.CLUSTER)[REVIEWS]["connect_timeout"] == "1s"


class CountingMemo(Memo):
    def __init__(self) -> None:
        super().__init__()
        self.keys: list[Any] = []

    def get(self, key: Any, make: Any, *args: Any) -> Any:
        self.keys.append(key)
        return super().get(key, make, *args)


def test_shared_clusters_are_patched_once_for_all_proxies_and_match_a_fresh_translation() -> None:
    config = ef(
        "  - {applyTo: CLUSTER, match: {context: SIDECAR_OUTBOUND}, patch: {operation: MERGE, value: {connect_timeout: 1s}}}\n"
        "  - {applyTo: CLUSTER, match: {cluster: {service: ratings.default.svc.cluster.local}}, patch: {operation: REMOVE}}\n",
        namespace="istio-system",
    )
    w = World.build(
        1, load_documents(config, "ef.yaml"), [instance("reviews-1"), instance("r-1", "ratings")]
    )
    memo = CountingMemo()
    shared = translate_shared(w, memo)  # once per push, as the Pusher does

    def snapshot(n: Node, memo: Memo, shared: Any) -> Any:
        out = translate_outbound(w, w.scope_of(n), memo, shared)
        return assemble_patched(w, n, out, translate_local(n), 1, memo)[0]

    first = snapshot(node("a"), memo, shared)
    memo.keys.clear()
    second = snapshot(node("b"), memo, shared)
    per_resource = [k for k in memo.keys if k[0] == "ef" and k[1] == rs.CLUSTER]
    assert [k[3] for k in per_resource] == ["inbound|8000||"]  # its own cluster only
    assert first.of(rs.CLUSTER)[REVIEWS] is second.of(rs.CLUSTER)[REVIEWS]
    fresh_memo = Memo()
    fresh = snapshot(node("b"), fresh_memo, translate_shared(w, fresh_memo))
    for type_url in (rs.CLUSTER, rs.ENDPOINT, rs.LISTENER, rs.ROUTE):
        got = {n: (r.version, r.body.value) for n, r in second.of(type_url).items()}
        want = {n: (r.version, r.body.value) for n, r in fresh.of(type_url).items()}
        assert got == want, type_url
    assert dicts(second, rs.CLUSTER)[REVIEWS]["connect_timeout"] == "1s"
    ratings = "outbound|9080||ratings.default.svc.cluster.local"
    assert ratings not in second.of(rs.CLUSTER) and ratings not in second.of(rs.ENDPOINT)
    # the patched cluster's endpoints carry its new version, so Envoy gets them again
    assert second.of(rs.ENDPOINT)[REVIEWS].version.endswith(second.of(rs.CLUSTER)[REVIEWS].version)


def test_filters_that_do_not_patch_clusters_do_not_split_the_shared_cluster_patching() -> None:
    # Every proxy gets the root CLUSTER patch; each app also has an HTTP_FILTER patch of its own
    timeout = "  - {applyTo: CLUSTER, patch: {operation: MERGE, value: {connect_timeout: 1s}}}\n"
    config = ef(timeout, "timeout", "istio-system") + "".join(
        ef(ADD_CORS_FIRST, f"cors-{app}", spec=f"  workloadSelector: {{labels: {{app: {app}}}}}\n")
        for app in ("a", "b")
    )
    w = World.build(1, load_documents(config, "ef.yaml"), [instance("reviews-1")])
    memo = CountingMemo()
    shared = translate_shared(w, memo)
    snaps = []
    for app in ("a", "b"):
        n = node(app, app=app)
        out = translate_outbound(w, w.scope_of(n), memo, shared)
        memo.keys.clear()
        snaps.append(assemble_patched(w, n, out, translate_local(n), 1, memo)[0])
    assert [k[3] for k in memo.keys if k[0] == "ef" and k[1] == rs.CLUSTER] == ["inbound|8000||"]
    assert snaps[0].of(rs.CLUSTER)[REVIEWS] is snaps[1].of(rs.CLUSTER)[REVIEWS]
    assert dicts(snaps[1], rs.CLUSTER)[REVIEWS]["connect_timeout"] == "1s"
    assert http_filters(snaps[1], "inbound|8000")[0] == "envoy.filters.http.cors"


def test_an_operation_istio_ignores_changes_nothing() -> None:
    # REPLACE is for filters only: Istio's cluster patcher skips it, so a cluster survives.
    plain, _ = run(ef("  - {applyTo: CLUSTER, patch: {operation: MERGE, value: {}}}"))
    snap, p = run(
        ef("  - {applyTo: CLUSTER, patch: {operation: REPLACE, value: {name: gone, type: STATIC}}}")
    )
    assert dicts(snap, rs.CLUSTER) == dicts(plain, rs.CLUSTER)
    assert "gone" not in dicts(snap, rs.CLUSTER)
    assert p.errors == ()
