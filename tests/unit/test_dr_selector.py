"""DestinationRule ``workloadSelector`` (Istio's precedence: a selector rule of the client's
namespace that selects it comes first; it is never exported; where it is the only rule of
the most specific host there, unselected clients get none) and ``credentialName`` on
clusters: which proxies get SDS references and Secrets, and which fail closed."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from tests.certs import make_ca, make_cert
from tsunagi.api import ValidationFailed, load_documents
from tsunagi.mesh import Node, World
from tsunagi.mesh.analysis import not_yet_enforced, undefined_subsets
from tsunagi.mesh.rule_credential_analysis import rule_credential_problems
from tsunagi.registry import Instance
from tsunagi.xds import resources as rs
from tsunagi.xds.translate import translate
from tsunagi.xds.translate.origination import NO_TRUST_CA

from envoy.config.cluster.v3 import cluster_pb2  # isort: skip
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment  # isort: skip
from envoy.config.route.v3.route_pb2 import RouteConfiguration  # isort: skip
from google.protobuf import json_format  # isort: skip
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2  # isort: skip

CA = make_ca()
CLIENT = make_cert("client.example.test")
API = "api.shop.svc.cluster.local"
API_CLUSTER = f"outbound|8080||{API}"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _secret(name: str, ns: str, **data: bytes) -> str:
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": ns},
            "type": "Opaque",
            "data": {k.replace("_", "."): _b64(v) for k, v in data.items()},
        }
    )


def _rule(name: str, ns: str, host: str, extra: str = "") -> str:
    return f"""
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {name}, namespace: {ns}}}
spec:
  host: {host}
{extra}"""


def _world(*docs: str) -> World:
    api = Instance.from_document(
        {
            "name": "api-a",
            "service": "api",
            "namespace": "shop",
            "port": 8080,
            "address": "127.0.0.1",
            "target_port": 20001,
            "labels": {"app": "api"},
        }
    )
    return World.build(1, load_documents("\n---\n".join(docs)), [api])


def _lb(simple: str) -> str:
    return f"  trafficPolicy: {{loadBalancer: {{simple: {simple}}}}}"


def _selector(labels: str, body: str) -> str:
    return f"  workloadSelector: {{labels: {labels}}}\n{body}"


def _name(world: World, ns: str, labels: dict[str, str]) -> str | None:
    scope = world.scope_of(Node("x." + ns, ns, labels=labels))
    rule = world.destination_rule(API, ns, scope.labels)
    return None if rule is None else rule.name


def test_a_selector_rule_comes_first_for_the_clients_of_its_namespace_it_selects() -> None:
    world = _world(
        _rule("service-wide", "shop", API, _lb("RANDOM")),
        _rule("web-only", "front", API, _selector("{app: web}", _lb("ROUND_ROBIN"))),
        _rule("front-wide", "front", API, _lb("LEAST_REQUEST")),
    )
    assert _name(world, "front", {"app": "web", "version": "v1"}) == "web-only"
    # the namespace's rule without a selector for its other clients
    assert _name(world, "front", {"app": "cart"}) == "front-wide"
    assert _name(world, "front", {}) == "front-wide"
    # never exported: a client of another namespace with the same labels gets the service's
    assert _name(world, "other", {"app": "web"}) == "service-wide"
    assert _name(world, "shop", {"app": "web"}) == "service-wide"


def test_a_lone_selector_rule_shadows_the_service_rule_for_unselected_clients() -> None:
    """Istio looks no further than the client's namespace once it has a rule for the host
    there, selector or not (PushContext.destinationRule, SidecarScope.DestinationRule)."""
    world = _world(
        _rule("service-wide", "shop", API, _lb("RANDOM")),
        _rule("web-only", "front", API, _selector("{app: web}", _lb("ROUND_ROBIN"))),
    )
    assert _name(world, "front", {"app": "web"}) == "web-only"
    assert _name(world, "front", {"app": "cart"}) is None
    assert _name(world, "other", {"app": "cart"}) == "service-wide"


def test_equal_selectors_merge_and_the_first_selecting_rule_wins() -> None:
    world = _world(
        _rule(
            "a-web",
            "front",
            API,
            _selector("{app: web}", "  subsets: [{name: v1, labels: {version: v1}}]"),
        ),
        _rule(
            "b-web",
            "front",
            API,
            _selector("{app: web}", "  subsets: [{name: v2, labels: {version: v2}}]"),
        ),
        _rule("c-web-v1", "front", API, _selector("{app: web, version: v1}", _lb("RANDOM"))),
    )
    scope = world.scope_of(Node("x.front", "front", labels={"app": "web", "version": "v1"}))
    rule = world.destination_rule(API, "front", scope.labels)
    assert rule is not None and rule.name == "a-web"
    assert [s.name for s in rule.spec.subsets] == ["v1", "v2"]


def test_scopes_carry_selector_labels_only_when_some_rule_selects() -> None:
    plain = _world(_rule("service-wide", "shop", API, _lb("RANDOM")))
    node = Node("x.front", "front", labels={"app": "web", "pod": "abc"}, proven=True)
    assert plain.scope_of(node).labels == () and not plain.scope_of(node).verified
    selecting = _world(_rule("web-only", "front", API, _selector("{app: web}", _lb("RANDOM"))))
    assert selecting.scope_of(node).labels == (("app", "web"),)
    # verified matters to a sidecar only where a selector rule names a credential
    assert not selecting.scope_of(node).verified


SIMPLE_CRED = "  trafficPolicy:\n    tls: {mode: SIMPLE, credentialName: api-ca}"
MUTUAL_CRED = "  trafficPolicy:\n    tls: {mode: MUTUAL, credentialName: api-client}"


def _tls(world: World, node: Node) -> tuple[tls_pb2.UpstreamTlsContext | None, list[str]]:
    snap = translate(world, node)
    cluster = cluster_pb2.Cluster()
    assert snap.of(rs.CLUSTER)[API_CLUSTER].body.Unpack(cluster)
    secrets = sorted(snap.of(rs.SECRET)) if rs.SECRET in snap.resources else []
    if cluster.transport_socket.name != "envoy.transport_sockets.tls":
        return None, secrets
    ctx = tls_pb2.UpstreamTlsContext()
    assert cluster.transport_socket.typed_config.Unpack(ctx)
    return ctx, secrets


def _sidecar(labels: dict[str, str], proven: bool = True, ns: str = "front") -> Node:
    """A sidecar; ``proven``: its xDS certificate proved its namespace (a sidecar's never
    carries the gateway mark, and needs none for its namespace's Secrets)."""
    meta = {"namespace": ns, "labels": labels}
    return Node.from_metadata(f"sleep-a.{ns}", meta, False, proven)


def test_a_selected_sidecar_verifies_with_its_namespaces_secret_over_sds() -> None:
    world = _world(
        _rule("web-only", "front", API, _selector("{app: web}", SIMPLE_CRED)),
        _secret("api-ca", "front", ca_crt=CA.cert),
        _secret("api-ca", "shop", ca_crt=CA.cert),
    )
    ctx, secrets = _tls(world, _sidecar({"app": "web"}))
    assert ctx is not None
    combined = ctx.common_tls_context.combined_validation_context
    assert combined.validation_context_sds_secret_config.name == "kubernetes://api-ca-cacert"
    assert combined.validation_context_sds_secret_config.sds_config.HasField("ads")
    assert not ctx.common_tls_context.tls_certificate_sds_secret_configs  # SIMPLE
    assert secrets == ["kubernetes://api-ca-cacert"]
    # a sidecar the selector does not pick: no rule (mesh defaults), no credential, no secret
    other, none = _tls(world, _sidecar({"app": "cart"}))
    assert none == [] and "kubernetes://" not in str(other)


@pytest.mark.parametrize(
    ("node", "secret_ns"),
    [
        (_sidecar({"app": "web"}, proven=False), "front"),  # plaintext xDS: nothing proven
        (_sidecar({"app": "web"}), "shop"),  # the Secret is not in its namespace
    ],
    ids=["unproven", "secret-elsewhere"],
)
def test_a_sidecar_without_the_credential_fails_closed_without_sds(
    node: Node, secret_ns: str
) -> None:
    world = _world(
        _rule("web-only", "front", API, _selector("{app: web}", MUTUAL_CRED)),
        _secret("api-client", secret_ns, tls_crt=CLIENT.cert, tls_key=CLIENT.key, ca_crt=CA.cert),
    )
    ctx, secrets = _tls(world, node)
    assert ctx is not None and secrets == []
    common = ctx.common_tls_context
    assert common.validation_context.trusted_ca.inline_string == NO_TRUST_CA
    assert not common.tls_certificate_sds_secret_configs
    assert not common.HasField("combined_validation_context")


def test_mutual_without_a_key_or_simple_without_a_ca_fails_closed() -> None:
    world = _world(
        _rule("web-only", "front", API, _selector("{app: web}", MUTUAL_CRED)),
        _secret("api-client", "front", ca_crt=CA.cert),  # a CA, no client pair
    )
    ctx, _ = _tls(world, _sidecar({"app": "web"}))
    assert ctx is not None
    assert ctx.common_tls_context.validation_context.trusted_ca.inline_string == NO_TRUST_CA


def test_a_sidecar_without_a_selector_rule_originates_nothing_from_a_credential() -> None:
    """Istio's buildUpstreamClusterTLSContext: a sidecar ignores SIMPLE/MUTUAL with a
    credentialName from a rule without a workloadSelector (no TLS), and gets no key."""
    world = _world(
        _rule("everyone", "front", API, SIMPLE_CRED),
        _secret("api-ca", "front", ca_crt=CA.cert),
    )
    ctx, secrets = _tls(world, _sidecar({"app": "web"}))
    assert ctx is None and secrets == []


def test_a_gateway_gets_its_rules_credentials_with_its_servers() -> None:
    world = _world(
        _rule("everyone", "edge", API, MUTUAL_CRED),
        _secret("api-client", "edge", tls_crt=CLIENT.cert, tls_key=CLIENT.key, ca_crt=CA.cert),
    )
    meta = {"kind": "gateway", "namespace": "edge", "labels": {"istio": "egressgateway"}}
    ctx, secrets = _tls(world, Node.from_metadata("egress-a.edge", meta, True))
    assert ctx is not None
    certs = ctx.common_tls_context.tls_certificate_sds_secret_configs
    assert [c.name for c in certs] == ["kubernetes://api-client"]
    assert secrets == ["kubernetes://api-client", "kubernetes://api-client-cacert"]
    # the same gateway without the CA's mark: fails closed, no keys
    ctx, secrets = _tls(world, Node.from_metadata("egress-a.edge", meta, False))
    assert ctx is not None and secrets == []
    assert ctx.common_tls_context.validation_context.trusted_ca.inline_string == NO_TRUST_CA


def test_files_and_credential_name_together_are_refused_naming_the_field() -> None:
    doc = _rule(
        "r",
        "front",
        API,
        "  trafficPolicy:\n    tls: {mode: MUTUAL, credentialName: c, caCertificates: /x}",
    )
    with pytest.raises(ValidationFailed) as e:
        load_documents(doc, "r.yaml")
    assert [(x.path, x.reason) for x in e.value.errors] == [
        ("spec.trafficPolicy.tls", "credentialName cannot be combined with caCertificates")
    ]


def test_apply_warns_of_a_missing_or_unusable_credential_and_not_of_the_selector() -> None:
    docs = load_documents(
        "\n---\n".join(
            [
                _rule("web-only", "front", API, _selector("{app: web}", MUTUAL_CRED)),
                _rule("gw", "edge", API, SIMPLE_CRED),
                _secret("api-ca", "edge", tls_crt=CLIENT.cert, tls_key=CLIENT.key),
            ]
        )
    )
    world = World.build(1, docs, [])
    warnings = rule_credential_problems(world, docs, ["edge"])
    assert len(warnings) == 2
    assert (
        "DestinationRule front/web-only: spec.trafficPolicy.tls.credentialName: [IST0101]"
        in warnings[0]
    )
    assert "no Secret front/api-client" in warnings[0] and "fail closed (503)" in warnings[0]
    assert "--from-file=tls.crt=CERT --from-file=tls.key=KEY --from-file=ca.crt=CA" in warnings[0]
    assert "Secret edge/api-ca holds no CA" in warnings[1]
    pending = not_yet_enforced(docs)
    assert not any("spec.workloadSelector" in w for w in pending)
    assert [w for w in pending if "credentialName" in w] == [
        "DestinationRule edge/gw: spec.trafficPolicy.tls.credentialName applies only to "
        "gateways and to sidecars a workloadSelector selects: sidecars that apply this rule "
        "send plain text, as in Istio; give the rule a workloadSelector, or use "
        "caCertificates (and clientCertificate/privateKey) files"
    ]


# ------------------------------------------------- routes and endpoints agree with clusters


def _two_versions(*docs: str) -> World:
    """``api`` with v1 in r1/z1 and v2 in r2/z1, and ``docs``."""
    instances = [
        Instance.from_document(
            {
                "name": f"api-{v}",
                "service": "api",
                "namespace": "shop",
                "port": 8080,
                "address": "127.0.0.1",
                "target_port": port,
                "labels": {"app": "api", "version": v},
                "locality": locality,
            }
        )
        for v, port, locality in (("v1", 20001, "r1/z1"), ("v2", 20002, "r2/z1"))
    ]
    return World.build(1, load_documents("\n---\n".join(docs)), instances)


def _api_route(snap: Any) -> dict[str, Any]:
    route = RouteConfiguration()
    assert snap.of(rs.ROUTE)["outbound"].body.Unpack(route)
    doc = json_format.MessageToDict(route, preserving_proto_field_name=True)
    vhost = next(v for v in doc["virtual_hosts"] if v["name"] == f"{API}:8080")
    action: dict[str, Any] = vhost["routes"][0]["route"]
    return action


def _ports(snap: Any, cluster: str) -> dict[int, int]:
    """endpoint port → priority in ``cluster``'s assignment; {} when it has none."""
    if cluster not in snap.of(rs.ENDPOINT):
        return {}
    cla = ClusterLoadAssignment()
    assert snap.of(rs.ENDPOINT)[cluster].body.Unpack(cla)
    return {
        lb.endpoint.address.socket_address.port_value: group.priority
        for group in cla.endpoints
        for lb in group.lb_endpoints
    }


def test_a_selected_sidecar_routes_to_a_subset_only_its_rule_defines() -> None:
    v2 = f"outbound|8080|v2|{API}"
    world = _two_versions(
        _rule(
            "web-only",
            "front",
            API,
            _selector("{app: web}", "  subsets: [{name: v2, labels: {version: v2}}]"),
        ),
        _rule("front-wide", "front", API, "  subsets: [{name: v1, labels: {version: v1}}]"),
        f"""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: api, namespace: front}}
spec:
  hosts: [{API}]
  http: [{{route: [{{destination: {{host: {API}, subset: v2}}}}]}}]
""",
    )
    selected = translate(world, _sidecar({"app": "web"}))
    assert _api_route(selected)["cluster"] == v2
    assert v2 in selected.of(rs.CLUSTER) and _ports(selected, v2) == {20002: 0}
    other = translate(world, _sidecar({"app": "cart"}))
    assert _api_route(other)["cluster"] == v2 and v2 not in other.of(rs.CLUSTER)  # 503
    # apply says who has the subset rather than that nobody does
    [warning] = undefined_subsets(world, world.resources)
    assert "DestinationRule front/front-wide has no subset 'v2'" in warning
    assert "only sidecars that DestinationRule front/web-only selects define it" in warning


def test_a_selected_sidecars_route_hashes_as_its_rule_says() -> None:
    hashing = "  trafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: x-user}}}"
    world = _two_versions(
        _rule("web-only", "front", API, _selector("{app: web}", hashing)),
        _rule("front-wide", "front", API, _lb("RANDOM")),
    )
    web = _sidecar({"app": "web", "pod": "a"})
    assert _api_route(translate(world, web))["hash_policy"] == [
        {"header": {"header_name": "x-user"}}
    ]
    assert "hash_policy" not in _api_route(translate(world, _sidecar({"app": "cart"})))
    # the same labels in another namespace: the rule is private to its own
    assert "hash_policy" not in _api_route(translate(world, _sidecar({"app": "web"}, ns="x")))


def test_a_selected_sidecars_endpoints_follow_its_rules_locality_settings() -> None:
    """Locality failover from the selector rule (outlier detection on): the selected client
    in r1/z1 prefers v1; the namespace rule has none, so its other clients spread evenly."""
    outlier = "  trafficPolicy: {outlierDetection: {consecutive5xxErrors: 1}}"
    world = _two_versions(
        _rule("web-only", "front", API, _selector("{app: web}", outlier)),
        _rule("front-wide", "front", API, _lb("RANDOM")),
    )
    meta = {"namespace": "front", "labels": {"app": "web"}, "locality": "r1/z1"}
    web = Node.from_metadata("web-a.front", meta, False, True)
    assert _ports(translate(world, web), API_CLUSTER) == {20001: 0, 20002: 1}
    cart = Node.from_metadata("cart-a.front", {**meta, "labels": {"app": "cart"}}, False, True)
    assert _ports(translate(world, cart), API_CLUSTER) == {20001: 0, 20002: 0}


def test_a_selector_without_labels_selects_every_sidecar_of_its_namespace() -> None:
    """Istio matches a selector's labels as a subset of the proxy's: none match every proxy
    (labels.Instance.SubsetOf), whatever labels it has, and only in the rule's namespace."""
    world = _world(
        _rule("service-wide", "shop", API, _lb("RANDOM")),
        _rule("everyone-here", "front", API, _selector("{}", _lb("LEAST_REQUEST"))),
    )
    assert _name(world, "front", {}) == "everyone-here"
    cluster = cluster_pb2.Cluster()
    assert translate(world, _sidecar({})).of(rs.CLUSTER)[API_CLUSTER].body.Unpack(cluster)
    assert cluster.lb_policy == cluster_pb2.Cluster.LEAST_REQUEST
    assert _name(world, "front", {"app": "cart"}) == "everyone-here"
    assert _name(world, "other", {}) == "service-wide"


def test_only_a_selected_client_keeps_the_labels_its_rule_reads() -> None:
    """What CONNECT tunnels and --upstream listeners key their DestinationRule lookup by: the
    selector's labels for a client a rule selects, nothing for the others, which then share."""
    world = _world(
        _rule("service-wide", "shop", API, _lb("RANDOM")),
        _rule("web-only", "front", API, _selector("{app: web}", _lb("ROUND_ROBIN"))),
    )
    web = (("pod", "a"), ("app", "web"))  # in any order
    assert world.rule_labels("front", web) == (("app", "web"),)
    assert world.rule_labels("front", (("app", "cart"), ("pod", "b"))) == ()
    assert world.rule_labels("other", web) == ()  # the rule is private to its namespace
    plain = _world(_rule("service-wide", "shop", API, _lb("RANDOM")))
    assert plain.rule_labels("front", web) == ()
