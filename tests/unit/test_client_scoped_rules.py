"""Rules that apply to some clients only: ``match.sourceLabels`` / ``sourceNamespace``,
``exportTo`` on VirtualServices, DestinationRules and ServiceEntries, Istio's DestinationRule
lookup from the client's namespace, and VirtualService delegation.

Each test translates a small World for one or more client scopes and reads what Envoy would
get (route names and clusters); the checks follow Istio's documented semantics.
"""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import json_format

from tsunagi.api import ValidationFailed, load_documents
from tsunagi.mesh import ClientScope, Node, World
from tsunagi.mesh.analysis import delegation_problems, not_yet_enforced
from tsunagi.mesh.delegation import merge_matches
from tsunagi.registry import Instance
from tsunagi.xds.translate import Memo, translate_outbound, translate_shared
from tsunagi.xds.translate.protos import Cluster, RouteConfiguration
from tsunagi.xds.translate.routes import RouteBuilder


def _instance(service: str, namespace: str = "default", version: str = "v1") -> Instance:
    return Instance.from_document(
        {
            "name": f"{service}-{version}",
            "service": service,
            "namespace": namespace,
            "port": 80,
            "target_port": 20000 + len(service),
            "labels": {"app": service, "version": version},
        }
    )


INSTANCES = [
    _instance("reviews"),
    _instance("reviews", version="v2"),
    _instance("web"),
    _instance("ratings", "shop"),
]
REVIEWS = "reviews.default.svc.cluster.local"
RATINGS = "ratings.shop.svc.cluster.local"


def _world(yaml_text: str) -> World:
    return World.build(1, load_documents(yaml_text), INSTANCES)


def _routes(world: World, scope: ClientScope | str, memo: Memo | None = None) -> dict[str, Any]:
    """host:port (or host) → the route names and targets clients of ``scope`` get."""
    out = translate_outbound(world, scope, memo)
    config = RouteConfiguration()
    out.routes["outbound"].body.Unpack(config)
    as_dict = json_format.MessageToDict(config, preserving_proto_field_name=True)
    return {
        vh["name"]: [
            (r.get("name"), r.get("route", {}).get("cluster"), r.get("match")) for r in vh["routes"]
        ]
        for vh in as_dict["virtual_hosts"]
    }


def _targets(world: World, scope: ClientScope | str, vhost: str) -> list[str | None]:
    return [cluster for _, cluster, _ in _routes(world, scope)[vhost]]


def _node(labels: dict[str, str], namespace: str = "default") -> Node:
    return Node.from_metadata("n", {"namespace": namespace, "labels": labels})


# --------------------------------------------------------------------------- sourceLabels

SOURCE_RULES = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - match: [{sourceLabels: {version: v2}}]
    route: [{destination: {host: web}}]
  - match: [{sourceNamespace: shop}]
    route: [{destination: {host: ratings.shop.svc.cluster.local}}]
  - match: [{gateways: [mesh], sourceNamespace: nowhere}]
    route: [{destination: {host: reviews, port: {number: 80}}}]
    headers: {request: {set: {x-mesh: "1"}}}
  - route: [{destination: {host: reviews}}]
"""


def test_source_labels_select_sidecars_by_their_labels() -> None:
    world = _world(SOURCE_RULES)
    v1 = world.scope_of(_node({"app": "productpage", "version": "v1"}))
    v2 = world.scope_of(_node({"app": "productpage", "version": "v2"}))
    assert v1 != v2 and v1.labels == (("version", "v1"),)  # only keys rules read are kept
    first = f"{REVIEWS}:80"
    assert _targets(world, v2, first)[0] == "outbound|80||web.default.svc.cluster.local"
    assert "outbound|80||web.default.svc.cluster.local" not in _targets(world, v1, first)


def test_source_namespace_selects_sidecars_by_namespace() -> None:
    world = _world(SOURCE_RULES)
    ratings = f"outbound|80||{RATINGS}"
    assert _targets(world, "shop", f"{REVIEWS}:80")[0] == ratings
    assert ratings not in _targets(world, "default", f"{REVIEWS}:80")


def test_a_match_naming_mesh_applies_whatever_its_source_fields_say() -> None:
    # Istio's sourceMatchHTTP: with gateways set, only the gateway names are consulted.
    world = _world(SOURCE_RULES)
    names = [name for name, _, _ in _routes(world, "default")[f"{REVIEWS}:80"]]
    assert names == ["default/reviews/2", "default/reviews/3"]


def test_sidecars_differing_only_in_labels_share_routes_unless_a_rule_reads_them() -> None:
    plain = _world(SOURCE_RULES.replace("sourceLabels: {version: v2}", "sourceNamespace: x"))
    memo = Memo()
    shared = translate_shared(plain, memo)
    a, b = (plain.scope_of(_node({"app": "p", "version": v})) for v in ("v1", "v2"))
    assert a == b  # no sourceLabels anywhere: one scope, one route configuration
    ra = translate_outbound(plain, a, memo, shared).routes["outbound"]
    rb = translate_outbound(plain, b, memo, shared).routes["outbound"]
    assert ra is rb
    selecting = _world(SOURCE_RULES)
    memo = Memo()
    shared = translate_shared(selecting, memo)
    a, b = (selecting.scope_of(_node({"app": "p", "version": v})) for v in ("v1", "v2"))
    ra = translate_outbound(selecting, a, memo, shared).routes["outbound"]
    rb = translate_outbound(selecting, b, memo, shared).routes["outbound"]
    assert ra.version != rb.version
    # Labels no rule reads still do not split scopes.
    c = selecting.scope_of(_node({"app": "other", "version": "v1", "team": "x"}))
    assert c == a and translate_outbound(selecting, c, memo, shared).routes["outbound"] is ra


def test_source_labels_are_no_longer_reported_as_unsupported() -> None:
    assert not any("sourceLabels" in w for w in not_yet_enforced(load_documents(SOURCE_RULES)))


# --------------------------------------------------------------------------- exportTo

EXPORTED = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: default}
spec:
  hosts: [web.default.svc.cluster.local]
  exportTo: [a]
  http:
  - route: [{destination: {host: reviews.default.svc.cluster.local}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: default}
spec:
  hosts: [api.example.com]
  exportTo: ["."]
  resolution: STATIC
  ports: [{number: 80, name: http, protocol: HTTP}]
  endpoints: [{address: 192.0.2.1}]
"""


def test_a_virtual_service_is_used_only_where_it_is_exported() -> None:
    world = _world(EXPORTED)
    web = "web.default.svc.cluster.local:80"
    assert _targets(world, "a", web) == [f"outbound|80||{REVIEWS}"]
    assert _targets(world, "b", web) == ["outbound|80||web.default.svc.cluster.local"]


def test_a_service_entry_is_visible_only_where_it_is_exported() -> None:
    world = _world(EXPORTED)
    assert "api.example.com:80" in _routes(world, "default")
    assert "api.example.com:80" not in _routes(world, "b")
    other = translate_outbound(world, "b")
    assert not any(n.endswith("|api.example.com") for n in other.clusters)
    assert not any(n.endswith("|api.example.com") for n in other.endpoints)
    assert "outbound|80||api.example.com" in translate_outbound(world, "default").clusters


# --------------------------------------------------------------------------- DestinationRule lookup


def _dr(name: str, namespace: str, host: str, subset: str, export: str = "") -> str:
    export_to = f"\n  exportTo: [{export}]" if export else ""
    return f"""---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  host: {host}{export_to}
  subsets: [{{name: {subset}, labels: {{version: {subset}}}}}]
"""


def _subsets(world: World, namespace: str, host: str) -> set[str]:
    clusters = translate_outbound(world, namespace).clusters
    return {n.split("|")[2] for n in clusters if n.endswith("|" + host) and n.split("|")[2]}


def test_the_client_namespace_rule_wins_then_the_service_namespace_then_the_root() -> None:
    world = _world(
        _dr("svc", "default", "reviews", "from-service")
        + _dr("mine", "a", REVIEWS, "from-client")
        + _dr("root", "istio-system", REVIEWS, "from-root")
        + _dr("root-ratings", "istio-system", RATINGS, "root-only")
        + _dr("elsewhere", "zzz", RATINGS, "elsewhere")
    )
    assert _subsets(world, "a", REVIEWS) == {"from-client"}
    assert _subsets(world, "b", REVIEWS) == {"from-service"}
    assert _subsets(world, "default", REVIEWS) == {"from-service"}
    assert _subsets(world, "b", RATINGS) == {"root-only"}  # zzz's rule applies in zzz only
    assert _subsets(world, "zzz", RATINGS) == {"elsewhere"}


def test_export_to_limits_which_clients_a_rule_applies_to() -> None:
    world = _world(
        _dr("private", "default", "reviews", "private", '"."')
        + _dr("for-a", "default", "web", "for-a", "a")
    )
    assert _subsets(world, "default", REVIEWS) == {"private"}
    assert _subsets(world, "b", REVIEWS) == set()
    web = "web.default.svc.cluster.local"
    assert _subsets(world, "a", web) == {"for-a"}
    assert _subsets(world, "default", web) == set()


def test_rules_for_one_host_in_one_namespace_merge() -> None:
    world = _world(_dr("a1", "default", "reviews", "v1") + _dr("a2", "default", "reviews", "v2"))
    assert _subsets(world, "b", REVIEWS) == {"v1", "v2"}


def test_rules_with_different_export_to_stay_apart_and_the_last_one_seen_wins() -> None:
    # Istio merges rules of one host and namespace only when their exportTo are equal (or
    # the later one's covers the earlier one's); a client uses the last entry it sees.
    world = _world(
        _dr("a1", "default", "reviews", "v1") + _dr("a2", "default", "reviews", "v2", '"."')
    )
    assert _subsets(world, "default", REVIEWS) == {"v2"}
    assert _subsets(world, "b", REVIEWS) == {"v1"}  # the private rule is not exported
    covering = _world(
        _dr("a1", "default", "reviews", "v1", "a") + _dr("a2", "default", "reviews", "v2", "a, b")
    )
    assert _subsets(covering, "a", REVIEWS) == {"v2"}
    assert _subsets(covering, "b", REVIEWS) == {"v2"}
    assert _subsets(covering, "c", REVIEWS) == set()


def test_the_most_specific_host_wins_within_a_namespace() -> None:
    world = _world(
        EXPORTED.replace('exportTo: ["."]', 'exportTo: ["*"]')
        + _dr("any", "default", '"*.example.com"', "wide")
        + _dr("api", "default", "api.example.com", "exact")
        + _dr("all", "istio-system", '"*"', "mesh-wide")
    )
    assert _subsets(world, "b", "api.example.com") == {"exact"}
    assert _subsets(world, "b", RATINGS) == {"mesh-wide"}  # the root's "*" covers every host


def test_only_the_hosts_whose_rule_differs_get_clusters_of_their_own() -> None:
    world = _world(_dr("svc", "default", "reviews", "v1") + _dr("mine", "a", REVIEWS, "v2"))
    memo = Memo()
    shared = translate_shared(world, memo)
    assert translate_outbound(world, "b", memo, shared).clusters is shared.clusters
    mine = translate_outbound(world, "a", memo, shared)
    assert mine.clusters is not shared.clusters
    for name, cluster in shared.clusters.items():
        if not name.endswith("|" + REVIEWS):
            assert mine.clusters[name] is cluster  # shared, not copied
    assert f"outbound|80|v2|{REVIEWS}" in mine.clusters
    assert f"outbound|80|v1|{REVIEWS}" not in mine.clusters
    assert f"outbound|80|v2|{REVIEWS}" in mine.endpoints
    body = Cluster()
    mine.clusters[f"outbound|80|v2|{REVIEWS}"].body.Unpack(body)
    assert body.eds_cluster_config.service_name == f"outbound|80|v2|{REVIEWS}"
    # Two namespaces with the same rule for the host reuse the memoized clusters.
    again = translate_outbound(world, "a", memo, shared)
    assert again.clusters[f"outbound|80|v2|{REVIEWS}"] is mine.clusters[f"outbound|80|v2|{REVIEWS}"]


# --------------------------------------------------------------------------- delegation

DELEGATION = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: root, namespace: default}
spec:
  hosts: [reviews]
  http:
  - name: api
    match: [{uri: {prefix: /api}}]
    timeout: 5s
    delegate: {name: api-routes, namespace: team}
  - route: [{destination: {host: reviews}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: api-routes, namespace: team}
spec:
  http:
  - name: v2
    match: [{uri: {prefix: /api/v2}}]
    route: [{destination: {host: web.default.svc.cluster.local}}]
  - match: [{uri: {prefix: /other}}]
    route: [{destination: {host: web.default.svc.cluster.local}}]
  - route: [{destination: {host: ratings.shop.svc.cluster.local}}]
"""


def test_a_delegate_s_routes_take_the_root_route_s_place() -> None:
    world = _world(DELEGATION)
    routes = _routes(world, "default")[f"{REVIEWS}:80"]
    assert [(n, c, m) for n, c, m in routes] == [
        ("api-v2", "outbound|80||web.default.svc.cluster.local", {"prefix": "/api/v2"}),
        # /other is outside the root's /api: that delegate route is dropped, as in Istio;
        # a delegate route without matches takes the root's.
        ("api", f"outbound|80||{RATINGS}", {"prefix": "/api"}),
        ("default/root/1", f"outbound|80||{REVIEWS}", {"prefix": "/"}),
    ]
    config = RouteConfiguration()
    translate_outbound(world, "default").routes["outbound"].body.Unpack(config)
    vhost = next(v for v in config.virtual_hosts if v.name == f"{REVIEWS}:80")
    assert vhost.routes[0].route.timeout.seconds == 5  # inherited from the root route
    (warning,) = delegation_problems(world, world.resources)
    assert "route http[1] of VirtualService team/api-routes" in warning
    delegate = [r for r in world.resources if r.name == "api-routes"]
    assert delegation_problems(world, delegate) == [warning]  # applying the delegate alone


def test_a_missing_or_hidden_delegate_gives_a_warning_and_no_routes() -> None:
    missing = _world(
        DELEGATION.replace(
            "delegate: {name: api-routes, namespace: team}", "delegate: {name: gone}"
        )
    )
    routes = _routes(missing, "default")[f"{REVIEWS}:80"]
    assert [n for n, _, _ in routes] == ["default/root/1"]
    (warning,) = delegation_problems(missing, missing.resources)
    assert "spec.http[0].delegate" in warning and "default/gone" in warning
    hidden = _world(
        DELEGATION.replace(
            "spec:\n  http:\n  - name: v2", "spec:\n  exportTo: ['.']\n  http:\n  - name: v2"
        )
    )
    assert [n for n, _, _ in _routes(hidden, "default")[f"{REVIEWS}:80"]] == ["default/root/1"]
    assert any("not exported" in w for w in delegation_problems(hidden, hidden.resources))
    assert not any("delegate" in w for w in not_yet_enforced(hidden.resources))


def test_match_merging_follows_istio() -> None:
    (vs,) = load_documents("""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: m}
spec:
  hosts: [a]
  http:
  - match:
    - {uri: {prefix: /a}, headers: {x: {exact: "1"}}}
    - {uri: {exact: /b}}
    route: [{destination: {host: a}}]
  - match:
    - {uri: {prefix: /a/b}, headers: {y: {exact: "2"}}}
    - {uri: {regex: "/a.*"}}
    route: [{destination: {host: a}}]
""")
    root, leaf = vs.spec.http
    merged = merge_matches(root.match, leaf.match[:1])
    assert merged is not None and len(merged) == 1  # /a/b fits /a, not the exact /b
    assert merged[0].uri is not None and merged[0].uri.prefix == "/a/b"
    assert set(merged[0].headers) == {"x", "y"}
    assert merge_matches(root.match, leaf.match) is None  # a regex never fits a prefix


def test_a_failing_delegated_route_blames_the_root_and_the_delegate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    original = RouteBuilder.action

    def action(self: RouteBuilder, http: Any, *args: Any) -> dict[str, Any]:
        if any(d.destination.host.startswith("web.") for d in http.route):
            raise RuntimeError("boom")
        return original(self, http, *args)

    monkeypatch.setattr(RouteBuilder, "action", action)
    world = _world(DELEGATION)
    errors = translate_outbound(world, "default").errors
    assert errors and set(errors[0].resources) == {
        ("VirtualService", "default", "root"),
        ("VirtualService", "team", "api-routes"),
    }


def test_a_delegate_has_no_hosts_no_gateways_and_does_not_delegate() -> None:
    with pytest.raises(ValidationFailed) as info:
        load_documents("""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: d}
spec:
  gateways: [gw]
  http: [{delegate: {name: other}}]
""")
    paths = {e.path for e in info.value.errors}
    assert {"spec.gateways", "spec.http[0].delegate"} <= paths


# --------------------------------------------------------------------------- ignoreUriCase


def test_ignore_uri_case_on_a_regex_warns_as_istio_ignores_it() -> None:
    docs = load_documents("""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: r}
spec:
  hosts: [reviews]
  http:
  - match: [{uri: {regex: "/Api/.*"}, ignoreUriCase: true}]
    route: [{destination: {host: reviews}}]
  - match: [{uri: {prefix: /Api}, ignoreUriCase: true}]
    route: [{destination: {host: reviews}}]
""")
    warnings = [w for w in not_yet_enforced(docs) if "ignoreUriCase" in w]
    assert len(warnings) == 1 and "spec.http[0].match[0]" in warnings[0]
    routes = _routes(World.build(1, docs, INSTANCES), "default")[f"{REVIEWS}:80"]
    assert routes[0][2] == {"safe_regex": {"regex": "/Api/.*"}, "case_sensitive": False}
    assert routes[1][2] == {"prefix": "/Api", "case_sensitive": False}


def test_scopes_of_one_namespace_share_its_view_of_the_clusters() -> None:
    # Sidecars of one namespace that differ in labels some rule reads have scopes of their
    # own, but the namespace's clusters and endpoints are made once, not once per scope.
    world = _world(
        _dr("svc", "default", "reviews", "v1")
        + _dr("mine", "a", REVIEWS, "v2")
        + "---\n"
        + SOURCE_RULES
    )
    memo = Memo()
    shared = translate_shared(world, memo)
    v1, v2 = (world.scope_of(_node({"version": v}, "a")) for v in ("v1", "v2"))
    assert v1 != v2
    one, two = (translate_outbound(world, s, memo, shared) for s in (v1, v2))
    assert one.clusters is two.clusters is not shared.clusters
    assert one.endpoints is two.endpoints
    assert one.routes["outbound"] is not two.routes["outbound"]
    assert f"outbound|80|v2|{REVIEWS}" in one.clusters
