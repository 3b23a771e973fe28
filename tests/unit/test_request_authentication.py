"""RequestAuthentication: the kind (Istio's examples parse, Istio's rules refuse bad rules),
which rules select a workload, the jwt_authn filter it becomes, and claim-based routes."""

from __future__ import annotations

import json
import textwrap
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tsunagi.api import (
    RequestAuthenticationSpec,
    ValidationFailed,
    VirtualServiceSpec,
    load_documents,
)
from tsunagi.api.jwt_claims import claim_path
from tsunagi.mesh import ClientScope, Node, World
from tsunagi.mesh import request_authentication as ra
from tsunagi.mesh.analysis import not_yet_enforced
from tsunagi.mesh.request_authentication_analysis import claim_routing_problems
from tsunagi.xds.translate import jwt_authn
from tsunagi.xds.translate.protos import Listener, build
from tsunagi.xds.translate.routes import route_match


def public_jwks(kid: str = "k1") -> str:
    """A JWK set of one fresh RSA public key (its private key is dropped)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    return json.dumps({"keys": [{**jwk, "kid": kid}]})


JWKS = public_jwks()


def keyed(issuer: str) -> str:
    """``jwtRules`` of one rule for ``issuer`` with :data:`JWKS` inline."""
    return "jwtRules: [{issuer: " + issuer + ", jwks: '" + JWKS + "'}]"


def _doc(spec: str, name: str = "ra", namespace: str = "foo") -> str:
    body = textwrap.indent(textwrap.dedent(spec).strip(), "  ")
    return (
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\n"
        f"metadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n{body}\n"
    )


def _errors(spec: str) -> dict[str, str]:
    with pytest.raises(ValidationFailed) as info:
        load_documents(_doc(spec))
    return {e.path: e.reason for e in info.value.errors}


# Shaped like the examples of Istio's RequestAuthentication reference page.
ISTIO_EXAMPLES = f"""
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata:
  name: httpbin
  namespace: foo
spec:
  selector:
    matchLabels:
      app: httpbin
  jwtRules:
  - issuer: "issuer-foo"
    jwksUri: https://example.com/.well-known/jwks.json
---
apiVersion: security.istio.io/v1beta1
kind: RequestAuthentication
metadata:
  name: req-authn-for-all
  namespace: istio-system
spec:
  jwtRules:
  - issuer: "issuer-foo"
    jwksUri: https://example.com/.well-known/jwks.json
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata:
  name: ingress-jwt
  namespace: istio-system
spec:
  selector:
    matchLabels:
      app: istio-ingressgateway
  jwtRules:
  - issuer: "issuer-foo"
    jwksUri: https://example.com/.well-known/jwks.json
    fromHeaders:
    - name: x-jwt-assertion
      prefix: "Bearer "
    fromParams:
    - "my_token"
    fromCookies:
    - "auth-token"
    outputPayloadToHeader: x-jwt-payload
    forwardOriginalToken: true
    outputClaimToHeaders:
    - header: "x-jwt-claim-foo"
      claim: "foo"
  - issuer: "issuer-bar"
    audiences: ["bookstore_android.apps.example.com", "bookstore_web.apps.example.com"]
    jwks: '{JWKS}'
    timeout: 10s
"""


def test_istios_examples_apply() -> None:
    docs = load_documents(ISTIO_EXAMPLES, "ra.yaml")
    assert [d.kind for d in docs] == ["RequestAuthentication"] * 3
    spec = docs[2].spec
    assert isinstance(spec, RequestAuthenticationSpec)
    first, second = spec.jwt_rules
    assert first.from_headers[0].prefix == "Bearer "
    assert first.output_claim_to_headers[0].header == "x-jwt-claim-foo"
    assert first.forward_original_token
    assert second.audiences == (
        "bookstore_android.apps.example.com",
        "bookstore_web.apps.example.com",
    )
    assert second.timeout == 10.0


@pytest.mark.parametrize(
    ("spec", "path", "words"),
    [
        ("jwtRules: [{audiences: [a]}]", "spec.jwtRules[0].issuer", "issuer or jwksUri"),
        ("jwtRules: [{issuer: i, audiences: ['']}]", "spec.jwtRules[0].audiences[0]", "empty"),
        (
            "jwtRules: [{issuer: i, jwksUri: 'ftp://x/k'}]",
            "spec.jwtRules[0].jwksUri",
            "scheme 'ftp'",
        ),
        ("jwtRules: [{issuer: i, jwksUri: 'https:///k'}]", "spec.jwtRules[0].jwksUri", "no host"),
        ("jwtRules: [{issuer: i, jwks: 'nope'}]", "spec.jwtRules[0].jwks", "invalid JSON"),
        (
            'jwtRules: [{issuer: i, jwks: \'{"keys": [{"kty": "RSA", "e": "AQAB"}]}\'}]',
            "spec.jwtRules[0].jwks",
            '"n"',
        ),
        (
            'jwtRules: [{issuer: i, jwks: \'{"keys": [{"kty": "RSA", "n": "dHN1",'
            ' "e": "AQAB"}]}\'}]',
            "spec.jwtRules[0].jwks",
            "too short",
        ),
        (
            "jwtRules: [{issuer: i, fromHeaders: [{name: 'bad header'}]}]",
            "spec.jwtRules[0].fromHeaders[0].name",
            "not a valid HTTP header name",
        ),
        (
            "jwtRules: [{issuer: i, outputClaimToHeaders: [{header: x, claim: ''}]}]",
            "spec.jwtRules[0].outputClaimToHeaders[0].claim",
            "empty",
        ),
        (
            "jwtRules: [{issuer: i, outputClaimToHeaders: [{header: 'a:b', claim: c}]}]",
            "spec.jwtRules[0].outputClaimToHeaders[0].header",
            "not a valid",
        ),
        ("jwtRules: [{issuer: i, fromParams: ['']}]", "spec.jwtRules[0].fromParams[0]", "empty"),
        ("jwtRules: [{issuer: i, timeout: 100us}]", "spec.jwtRules[0].timeout", "1ms"),
        (
            "selector: {matchLabels: {app: a}}\ntargetRef: {kind: Gateway, name: g}",
            "spec",
            "selector cannot be combined",
        ),
    ],
)
def test_istios_rules_refuse_bad_rules(spec: str, path: str, words: str) -> None:
    errs = _errors(spec)
    assert path in errs, errs
    assert words in errs[path]


@pytest.mark.parametrize(
    ("api", "kind"),
    [
        ("security.istio.io/v1", "RequestAuthentication"),
        ("security.istio.io/v1", "AuthorizationPolicy"),
        ("telemetry.istio.io/v1", "Telemetry"),
    ],
)
@pytest.mark.parametrize(
    ("spec", "path", "words"),
    [
        ("selector: {matchLabels: {'a b': x}}", 'spec.selector.matchLabels["a b"]', "invalid"),
        (
            "selector: {matchLabels: {app: a}}\ntargetRefs: [{kind: Gateway, name: g}]",
            "spec",
            "selector cannot be combined",
        ),
        (
            "targetRef: {kind: Gateway, name: g}\ntargetRefs: [{kind: Gateway, name: h}]",
            "spec",
            "only one of targetRef and targetRefs",
        ),
    ],
)
def test_every_policy_kind_attaches_by_selector_or_target_refs(
    api: str, kind: str, spec: str, path: str, words: str
) -> None:
    doc = f"apiVersion: {api}\nkind: {kind}\nmetadata: {{name: p, namespace: ns}}\nspec:\n"
    with pytest.raises(ValidationFailed) as info:
        load_documents(doc + textwrap.indent(spec, "  "))
    errs = {e.path: e.reason for e in info.value.errors}
    assert path in errs and words in errs[path], errs


def test_jwks_and_jwks_uri_are_exclusive() -> None:
    spec = f"jwtRules: [{{issuer: i, jwksUri: 'https://e.com/k', jwks: '{JWKS}'}}]"
    assert "only one of jwks" in _errors(spec)["spec.jwtRules[0].jwks"]


def test_an_ec_key_off_its_curve_is_refused() -> None:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key))
    jwk["y"] = jwk["x"]  # no longer on P-256
    spec = f"jwtRules: [{{issuer: i, jwks: '{json.dumps({'keys': [jwk]})}'}}]"
    assert "EC public key" in _errors(spec)["spec.jwtRules[0].jwks"]


def _world(text: str, root: str = "istio-system") -> World:
    from tsunagi.mesh.security import MeshSecurity

    return World.build(1, load_documents(text), [], mesh_security=MeshSecurity(root_namespace=root))


def _node(namespace: str = "foo", labels: dict[str, str] | None = None) -> Node:
    return Node.from_metadata(
        f"x.{namespace}",
        {
            "namespace": namespace,
            "service": "httpbin",
            "labels": labels or {"app": "httpbin"},
            "inbound": {"8000": {"listen": 15006, "app": 8080}},
        },
    )


SELECTION = "\n---\n".join(
    [
        _doc(keyed("ns-wide"), "a", "foo"),
        _doc(
            "selector: {matchLabels: {app: httpbin}}\njwtRules: [{issuer: picked, jwksUri: "
            "'http://127.0.0.1:1/k'}]",
            "b",
            "foo",
        ),
        _doc(
            "selector: {matchLabels: {app: other}}\n" + keyed("not-picked"),
            "c",
            "foo",
        ),
        _doc(keyed("mesh-wide"), "d", "istio-system"),
        _doc(keyed("other-ns"), "e", "bar"),
        _doc(
            "targetRef: {kind: Gateway, group: gateway.networking.k8s.io, name: g}\n"
            + keyed("target-ref"),
            "f",
            "foo",
        ),
    ]
)


def _issuers(resources: Any) -> list[str]:
    return sorted(r.issuer for x in resources for r in x.spec.jwt_rules)


def test_selection_is_istios() -> None:
    world = _world(SELECTION)
    picked = world.security_for(_node()).authentication
    assert _issuers(picked) == ["mesh-wide", "ns-wide", "picked"]
    other = world.security_for(_node(labels={"app": "other"})).authentication
    assert _issuers(other) == ["mesh-wide", "not-picked", "ns-wide"]
    assert _issuers(world.security_for(_node("baz")).authentication) == ["mesh-wide"]
    # --root-namespace moves the mesh-wide scope
    assert _issuers(_world(SELECTION, "bar").security_for(_node("baz")).authentication) == [
        "other-ns"
    ]


def test_fetched_key_sets_reach_only_the_workloads_that_use_them() -> None:
    base = _world(SELECTION)
    world = World.build(
        1, base.resources, [], mesh_security=base.mesh_security, jwks={"http://127.0.0.1:1/k": JWKS}
    )
    assert world.security_for(_node()).jwks == (("http://127.0.0.1:1/k", JWKS),)
    assert world.security_for(_node(labels={"app": "other"})).jwks == ()


def _providers(f: dict[str, Any]) -> dict[str, Any]:
    return f["typed_config"]["providers"]  # type: ignore[no-any-return]


def test_a_rule_becomes_istios_provider() -> None:
    [res] = load_documents(ISTIO_EXAMPLES)[2:]
    assert isinstance(res.spec, RequestAuthenticationSpec)
    f = jwt_authn.jwt_filter(sorted(res.spec.jwt_rules, key=lambda r: r.issuer), {})
    build(Listener, _listener_with(f))  # Envoy's schema takes it
    bar, foo = _providers(f)["origins-0"], _providers(f)["origins-1"]
    assert bar["issuer"] == "issuer-bar"
    assert bar["audiences"] == [
        "bookstore_android.apps.example.com",
        "bookstore_web.apps.example.com",
    ]
    assert bar["local_jwks"] == {"inline_string": JWKS}
    assert "from_headers" not in bar and "from_params" not in bar  # Envoy's defaults: Istio's
    assert foo["from_headers"] == [{"name": "x-jwt-assertion", "value_prefix": "Bearer "}]
    assert foo["from_params"] == ["my_token"]
    assert foo["from_cookies"] == ["auth-token"]
    assert foo["forward"] is True
    assert foo["forward_payload_header"] == "x-jwt-payload"
    assert foo["claim_to_headers"] == [{"header_name": "x-jwt-claim-foo", "claim_name": "foo"}]
    for p in (foo, bar):
        assert p["payload_in_metadata"] == "payload"  # what AuthorizationPolicy reads
        assert "clear_route_cache" not in p
    # Not fetched yet: a key set that verifies nothing, never one that lets tokens through
    unfetched = json.loads(foo["local_jwks"]["inline_string"])
    assert unfetched["keys"][0]["kid"].endswith("https://example.com/.well-known/jwks.json")
    assert f["typed_config"]["bypass_cors_preflight"] is True


def _listener_with(f: dict[str, Any]) -> dict[str, Any]:
    from tsunagi.xds.translate.protos import HCM_TYPE, ROUTER_TYPE

    hcm = {
        "@type": HCM_TYPE,
        "stat_prefix": "x",
        "route_config": {},
        "http_filters": [f, {"name": "router", "typed_config": {"@type": ROUTER_TYPE}}],
    }
    return {
        "name": "l",
        "filter_chains": [{"filters": [{"name": "hcm", "typed_config": hcm}]}],
    }


def test_requirement_lets_missing_tokens_through_and_checks_present_ones() -> None:
    one = jwt_authn.requirement(["a"])
    assert one == {
        "requires_any": {"requirements": [{"provider_name": "a"}, {"allow_missing": {}}]}
    }
    two = jwt_authn.requirement(["a", "b"])["requires_any"]["requirements"]
    assert two[:2] == [{"provider_name": "a"}, {"provider_name": "b"}]
    assert two[2]["requires_all"]["requirements"] == [
        jwt_authn.requirement(["a"]),
        jwt_authn.requirement(["b"]),
    ]


def test_no_request_authentication_costs_nothing() -> None:
    world = _world(_doc("selector: {matchLabels: {app: x}}\n" + keyed("i")))
    node = _node()
    assert jwt_authn.http_filters(world.security_for(node), node, 8000) == ()


def test_fetched_key_set_is_inlined() -> None:
    doc = _doc("jwtRules: [{issuer: i, jwksUri: 'https://issuer.example/keys'}]")
    base = _world(doc)
    world = World.build(1, base.resources, [], jwks={"https://issuer.example/keys": JWKS})
    node = _node()
    [f] = jwt_authn.http_filters(world.security_for(node), node, 8000)
    assert _providers(f)["origins-0"]["local_jwks"] == {"inline_string": JWKS}


def test_without_jwks_uri_the_issuers_discovery_document_is_the_source() -> None:
    [res] = load_documents(_doc("jwtRules: [{issuer: 'https://accounts.example/'}]"))
    assert isinstance(res.spec, RequestAuthenticationSpec)
    key = ra.jwks_key(res.spec.jwt_rules[0])
    assert key == "https://accounts.example/.well-known/openid-configuration"


GATEWAY_RA = _doc(
    "selector: {matchLabels: {istio: ingressgateway}}\n" + keyed("i"),
    "gw",
    "istio-system",
)


def test_a_gateway_clears_the_route_cache_so_routes_see_claims() -> None:
    world = _world(GATEWAY_RA)
    scope = ClientScope("istio-system", (("istio", "ingressgateway"),), gateway="127.0.0.1")
    [f] = jwt_authn.gateway_filters(world, scope)
    assert _providers(f)["origins-0"]["clear_route_cache"] is True
    other = ClientScope("istio-system", (("istio", "egressgateway"),), gateway="127.0.0.1")
    assert jwt_authn.gateway_filters(world, other) == ()


def _vs(match: str, gateways: str = "[gw]") -> str:
    return textwrap.dedent(
        f"""\
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata: {{name: v, namespace: foo}}
        spec:
          hosts: ["*"]
          gateways: {gateways}
          http:
          - match: [{match}]
            route: [{{destination: {{host: httpbin}}}}]
        """
    )


@pytest.mark.parametrize(
    ("key", "path"),
    [
        ("@request.auth.claims.groups", ["groups"]),
        ("@request.auth.claims.a.b", ["a", "b"]),
        ("@request.auth.claims[a][b.c]", ["a", "b.c"]),
        ("@request.auth.claims", None),
        ("x-user", None),
    ],
)
def test_claim_keys_read_as_istio_reads_them(key: str, path: list[str] | None) -> None:
    assert claim_path(key) == path


def test_claim_matches_become_metadata_matchers() -> None:
    [vs] = load_documents(
        _vs(
            "{headers: {'@request.auth.claims.groups': {exact: dev}, x-a: {exact: b}}, "
            "withoutHeaders: {'@request.auth.claims[org][id]': {}}}"
        )
    )
    assert isinstance(vs.spec, VirtualServiceSpec)
    m = route_match(vs.spec.http[0].match[0])
    assert m["headers"] == [{"name": "x-a", "string_match": {"exact": "b"}}]
    groups, org = m["dynamic_metadata"]
    assert groups["filter"] == "envoy.filters.http.jwt_authn"
    assert groups["path"] == [{"key": "payload"}, {"key": "groups"}]
    # a string claim or a list claim holding the value
    matchers = groups["value"]["or_match"]["value_matchers"]
    assert {"string_match": {"exact": "dev"}} in matchers
    assert {"list_match": {"one_of": {"string_match": {"exact": "dev"}}}} in matchers
    assert org["path"] == [{"key": "payload"}, {"key": "org"}, {"key": "id"}]
    assert org["value"] == {"present_match": True} and org["invert"] is True


def test_claim_routing_only_on_gateways() -> None:
    match = "{headers: {'@request.auth.claims.groups': {exact: dev}}}"
    load_documents(_vs(match))
    for gateways in ("[]", "[mesh]", "[gw, mesh]"):
        with pytest.raises(ValidationFailed) as info:
            load_documents(_vs(match, gateways))
        reasons = [e.reason for e in info.value.errors]
        assert any("only supported for gateways" in r for r in reasons), reasons


def test_apply_warns_of_claim_routes_no_gateway_verifies() -> None:
    gateway = textwrap.dedent(
        """\
        apiVersion: networking.istio.io/v1
        kind: Gateway
        metadata: {name: gw, namespace: foo}
        spec:
          selector: {istio: ingressgateway}
          servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ["*"]}]
        """
    )
    vs = _vs("{headers: {'@request.auth.claims.groups': {exact: dev}}}")
    running = [("istio-system", {"istio": "ingressgateway"})]
    bare = _world(gateway + "---\n" + vs)
    [warning] = claim_routing_problems(bare, bare.resources, running)
    assert "no RequestAuthentication selects its proxies" in warning
    verified = _world("---\n".join([gateway, vs, GATEWAY_RA]))
    assert claim_routing_problems(verified, verified.resources, running) == []


def test_target_ref_is_said_to_select_nothing() -> None:
    docs = load_documents(
        _doc("targetRef: {kind: Gateway, group: gateway.networking.k8s.io, name: g}\n" + keyed("i"))
    )
    [warning] = not_yet_enforced(docs)
    assert "targetRef is not applied yet" in warning


def test_a_gateways_listeners_follow_its_rules_and_fetched_keys_through_the_memo() -> None:
    from tsunagi.xds.translate import Memo, translate_outbound

    gateway = textwrap.dedent(
        """\
        apiVersion: networking.istio.io/v1
        kind: Gateway
        metadata: {name: gw, namespace: istio-system}
        spec:
          selector: {istio: ingressgateway}
          servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ["*"]}]
        """
    )
    rule = _doc(
        "selector: {matchLabels: {istio: ingressgateway}}\n"
        "jwtRules: [{issuer: i, jwksUri: 'https://issuer.example/keys'}]",
        "gw",
        "istio-system",
    )
    scope = ClientScope("istio-system", (("istio", "ingressgateway"),), gateway="127.0.0.1")
    memo = Memo()

    def listener(world: World) -> bytes:
        [only] = translate_outbound(world, scope, memo).listeners.values()
        return bytes(only.body.value)

    bare = _world(gateway)
    assert b"jwt_authn" not in listener(bare)
    # Neither the rule nor a fetched set changes the routing: the memo must still see them.
    ruled = _world(gateway + "---\n" + rule)
    assert b"jwt_authn" in listener(ruled) and b"tsunagi-unfetched" in listener(ruled)
    fetched = World.build(
        2,
        ruled.resources,
        [],
        mesh_security=ruled.mesh_security,
        jwks={"https://issuer.example/keys": JWKS},
    )
    n = json.loads(JWKS)["keys"][0]["n"].encode()
    assert n in listener(fetched)


def test_get_knows_istios_short_name() -> None:
    from tsunagi.controlplane.http_api import resolve_kind

    for name in ("ra", "requestauthentication", "RequestAuthentications"):
        assert resolve_kind(name) == "RequestAuthentication"


def test_the_gateway_memo_key_follows_selected_rules_and_their_key_sets_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The memo key of a gateway's listeners: the selected RequestAuthentications (a new
    revision is a new parsed object, as the control plane's WorldBuilder makes them) and
    the key sets fetched for them; nothing else, and no filter is serialized for it."""
    base = _world(SELECTION)
    gw = Node.from_metadata(
        "gw.foo",
        {"kind": "gateway", "namespace": "foo", "service": "gw", "labels": {"app": "httpbin"}},
    )

    def key(resources: Any, jwks: dict[str, str] | None = None) -> Any:
        world = World.build(2, resources, [], mesh_security=base.mesh_security, jwks=jwks)
        return jwt_authn.gateway_key(world, world.scope_of(gw))

    def unbuilt(*_: Any, **__: Any) -> Any:
        raise AssertionError("the key is computed without building the filter")

    monkeypatch.setattr(jwt_authn, "jwt_filter", unbuilt)
    first = key(base.resources)
    assert first == key(base.resources)
    # Another workload's rule changes, or a key set no selected rule uses arrives: same key.
    others = [r for r in base.resources if r.name != "c"]
    [c] = load_documents(_doc("selector: {matchLabels: {app: other}}\n" + keyed("c2"), "c"))
    assert key([*others, c]) == first
    assert key(base.resources, {"https://elsewhere.example/keys": JWKS}) == first
    # A selected rule's key set is fetched (or changes), or a selected rule changes: new key.
    assert key(base.resources, {"http://127.0.0.1:1/k": JWKS}) != first
    [a] = load_documents(_doc(keyed("ns-wide-2"), "a", "foo"))
    assert key([a, *(r for r in base.resources if r.name != "a")]) != first
