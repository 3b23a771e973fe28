"""AuthorizationPolicy: which policies select a workload, each rule field → its Envoy RBAC
matcher (Istio's translation), TCP ports, validation and apply's warnings."""

from __future__ import annotations

import textwrap
from typing import Any

import pytest

from tsunagi.api import (
    AuthorizationPolicySpec,
    Resource,
    ValidationFailed,
    load_documents,
)
from tsunagi.api.security import Rule
from tsunagi.mesh import Node, World
from tsunagi.mesh.analysis import not_yet_enforced
from tsunagi.mesh.authorization_analysis import principal_problems
from tsunagi.mesh.security import MeshSecurity, WorkloadSecurity
from tsunagi.registry import Instance
from tsunagi.xds.translate import authz
from tsunagi.xds.translate import gateway as gateway_translation
from tsunagi.xds.translate.authz_rules import (
    ANY,
    MATCH_NEVER,
    NEVER_PERMISSION,
    Target,
    rbac_policy,
    string_matcher,
)

HTTP = Target("ALLOW", 9080)


def _policy(spec: str, name: str = "p", namespace: str = "default", meta: str = "") -> str:
    body = textwrap.indent(textwrap.dedent(spec).strip(), "  ")
    return (
        f"apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
        f"metadata: {{name: {name}, namespace: {namespace}{meta}}}\nspec:\n{body}\n"
    )


def _load(*docs: str) -> list[Resource]:
    return load_documents("---\n".join(docs))


def _rule(text: str) -> Rule:
    [res] = _load(_policy(f"rules:\n- {textwrap.dedent(text).strip()}".replace("\n", "\n  ")))
    assert isinstance(res.spec, AuthorizationPolicySpec)
    return res.spec.rules[0]


def _node(namespace: str = "default", **labels: str) -> Node:
    return Node.from_metadata(
        f"web-1.{namespace}",
        {
            "namespace": namespace,
            "service": "web",
            "labels": labels or {"app": "web"},
            "inbound": {
                "9080": {"listen": 15006, "app": 8080},
                "5432": {"listen": 15007, "app": 8081, "protocol": "TCP"},
            },
        },
    )


# ---- which policies select a workload ----


def test_root_namespace_namespace_and_selector_scoping() -> None:
    world = World.build(
        1,
        _load(
            _policy("{}", "mesh-wide", "istio-system"),
            _policy("selector: {matchLabels: {app: web}}", "mesh-web", "istio-system"),
            _policy("selector: {matchLabels: {app: db}}", "mesh-db", "istio-system"),
            _policy("{}", "ns-wide"),
            _policy("selector: {matchLabels: {app: web, version: v1}}", "web-v1"),
            _policy("selector: {}", "empty-selector"),
            _policy("{}", "other-ns", "other"),
            _policy(
                "targetRef: {kind: Gateway, group: gateway.networking.k8s.io, name: gw}", "ref"
            ),
        ),
        [],
    )
    names = {r.name for r in world.security_for(_node(app="web", version="v1")).authorization}
    assert names == {"mesh-wide", "mesh-web", "ns-wide", "web-v1", "empty-selector"}
    names = {r.name for r in world.security_for(_node(app="web", version="v2")).authorization}
    assert names == {"mesh-wide", "mesh-web", "ns-wide", "empty-selector"}
    names = {r.name for r in world.security_for(_node("other", app="db")).authorization}
    assert names == {"mesh-wide", "mesh-db", "other-ns"}


def test_root_namespace_is_the_mesh_setting() -> None:
    docs = _load(_policy("{}", "mesh-wide", "security"), _policy("{}", "old-root", "istio-system"))
    world = World.build(1, docs, [], mesh_security=MeshSecurity(root_namespace="security"))
    assert [r.name for r in world.security_for(_node()).authorization] == ["mesh-wide"]


def test_evaluation_order_deny_before_allow_then_audit() -> None:
    world = World.build(
        1,
        _load(
            _policy("action: AUDIT\nrules: [{}]", "a-audit"),
            _policy("rules: [{}]", "b-allow"),
            _policy("action: DENY\nrules: [{}]", "z-deny"),
            _policy("action: DENY\nrules: [{}]", "c-deny", "istio-system"),
        ),
        [],
    )
    got = [(r.spec.action, r.name) for r in world.security_for(_node()).authorization]  # type: ignore[attr-defined]
    # Within an action by namespace, then name: the order is deterministic.
    assert got == [
        ("DENY", "z-deny"),
        ("DENY", "c-deny"),
        ("ALLOW", "b-allow"),
        ("AUDIT", "a-audit"),
    ]


def test_no_policy_no_filter() -> None:
    world = World.build(1, _load(_policy("{}", "elsewhere", "other")), [])
    security = world.security_for(_node())
    assert security.authorization == ()
    assert authz.http_filters(security, _node(), 9080) == ()
    assert authz.network_filters(security, _node(), 5432) == ()


# ---- one attribute → its matcher (Istio's translation table) ----


@pytest.mark.parametrize(
    ("value", "prefix", "expected"),
    [
        ("/exact", "", {"exact": "/exact"}),
        ("/api/*", "", {"prefix": "/api/"}),
        ("*.json", "", {"suffix": ".json"}),
        ("*", "", {"safe_regex": {"regex": ".+"}}),
        ("*", "spiffe://", {"safe_regex": {"regex": ".+"}}),
        ("td/ns/a/sa/b", "spiffe://", {"exact": "spiffe://td/ns/a/sa/b"}),
        ("td/ns/a/*", "spiffe://", {"prefix": "spiffe://td/ns/a/"}),
        ("*/sa/b.c", "spiffe://", {"safe_regex": {"regex": r"spiffe://.*/sa/b\.c"}}),
    ],
)
def test_string_forms(value: str, prefix: str, expected: dict[str, Any]) -> None:
    assert string_matcher(value, prefix) == expected


def _principals(rule: str, target: Target = HTTP) -> list[Any]:
    policy = rbac_policy(_rule(rule), "default", target)
    assert policy is not None
    [p] = policy["principals"]
    return p["and_ids"]["ids"]  # type: ignore[no-any-return]


def _permissions(rule: str, target: Target = HTTP) -> list[Any]:
    policy = rbac_policy(_rule(rule), "default", target)
    assert policy is not None
    [p] = policy["permissions"]
    return p["and_rules"]["rules"]  # type: ignore[no-any-return]


def _one(terms: list[Any], kind: str = "or_ids") -> Any:
    [term] = terms
    [m] = term[kind]["ids" if kind == "or_ids" else "rules"]
    return m


PRINCIPAL_TABLE = [
    (
        "from: [{source: {principals: [cluster.local/ns/a/sa/b]}}]",
        {"authenticated": {"principal_name": {"exact": "spiffe://cluster.local/ns/a/sa/b"}}},
    ),
    (
        "from: [{source: {namespaces: [prod]}}]",
        {"authenticated": {"principal_name": {"safe_regex": {"regex": ".*/ns/prod/.*"}}}},
    ),
    (
        "from: [{source: {namespaces: [team-*]}}]",
        {"authenticated": {"principal_name": {"safe_regex": {"regex": r".*/ns/team\-.*/.*"}}}},
    ),
    (
        "from: [{source: {serviceAccounts: [sleep]}}]",
        {
            "authenticated": {
                "principal_name": {
                    "safe_regex": {"regex": "spiffe://.+/ns/default/(.+/|)sa/sleep(/.+)?"}
                }
            }
        },
    ),
    (
        "from: [{source: {ipBlocks: [10.1.0.0/16]}}]",
        {"direct_remote_ip": {"address_prefix": "10.1.0.0", "prefix_len": 16}},
    ),
    (
        "from: [{source: {remoteIpBlocks: ['2001:db8::1']}}]",
        {"remote_ip": {"address_prefix": "2001:db8::1", "prefix_len": 128}},
    ),
    (
        "when: [{key: source.ip, values: [127.0.0.1]}]",
        {"direct_remote_ip": {"address_prefix": "127.0.0.1", "prefix_len": 32}},
    ),
    (
        "when: [{key: 'request.headers[x-user]', values: [alice]}]",
        {"header": {"name": "x-user", "string_match": {"exact": "alice"}}},
    ),
    (
        "when: [{key: 'request.headers[x-user]', values: ['*']}]",
        {"header": {"name": "x-user", "present_match": True}},
    ),
]


@pytest.mark.parametrize(("rule", "expected"), PRINCIPAL_TABLE)
def test_principal_table(rule: str, expected: dict[str, Any]) -> None:
    assert _one(_principals(rule)) == expected


def _jwt(path: list[str], value: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "filter": "envoy.filters.http.jwt_authn",
            "path": [{"key": k} for k in ["payload", *path]],
            "value": value,
        }
    }


def test_request_principal_is_iss_and_sub_of_the_jwt_payload() -> None:
    m = _one(_principals("from: [{source: {requestPrincipals: [https://idp.example/a/alice]}}]"))
    assert m == {
        "and_ids": {
            "ids": [
                _jwt(["iss"], {"string_match": {"exact": "https://idp.example/a"}}),
                _jwt(["sub"], {"string_match": {"exact": "alice"}}),
            ]
        }
    }
    anything = {"string_match": {"safe_regex": {"regex": ".+"}}}
    m = _one(_principals("from: [{source: {requestPrincipals: ['*']}}]"))
    assert m["and_ids"]["ids"] == [_jwt(["iss"], anything), _jwt(["sub"], anything)]
    m = _one(_principals("from: [{source: {requestPrincipals: ['*/bob']}}]"))
    assert m["and_ids"]["ids"] == [
        _jwt(["iss"], anything),
        _jwt(["sub"], {"string_match": {"exact": "bob"}}),
    ]


def test_claims_match_a_value_or_a_list_holding_it() -> None:
    m = _one(_principals("when: [{key: 'request.auth.claims[realm][roles]', values: [admin]}]"))
    one = {"string_match": {"exact": "admin"}}
    assert m == _jwt(
        ["realm", "roles"], {"or_match": {"value_matchers": [{"list_match": {"one_of": one}}, one]}}
    )
    m = _one(_principals("when: [{key: request.auth.audiences, values: [web]}]"))
    assert m["metadata"]["path"] == [{"key": "payload"}, {"key": "aud"}]
    m = _one(_principals("when: [{key: request.auth.presenter, values: [app]}]"))
    assert m["metadata"]["path"] == [{"key": "payload"}, {"key": "azp"}]


PERMISSION_TABLE = [
    (
        "to: [{operation: {methods: [GET]}}]",
        {"header": {"name": ":method", "string_match": {"exact": "GET"}}},
    ),
    (
        "to: [{operation: {hosts: ['*.example.com']}}]",
        {
            "header": {
                "name": ":authority",
                "string_match": {"suffix": ".example.com", "ignore_case": True},
            }
        },
    ),
    ("to: [{operation: {paths: [/api/*]}}]", {"url_path": {"path": {"prefix": "/api/"}}}),
    (
        "to: [{operation: {paths: ['/books/{*}/pages/{**}']}}]",
        {
            "uri_template": {
                "name": "uri-template",
                "typed_config": {
                    "@type": "type.googleapis.com/"
                    "envoy.extensions.path.match.uri_template.v3.UriTemplateMatchConfig",
                    "path_template": "/books/*/pages/**",
                },
            }
        },
    ),
    ("to: [{operation: {ports: ['9080']}}]", ANY),
    ("to: [{operation: {ports: ['9090']}}]", NEVER_PERMISSION),
    ("when: [{key: destination.port, values: ['9080']}]", ANY),
    (
        "when: [{key: destination.ip, values: [127.0.0.0/8]}]",
        {"destination_ip": {"address_prefix": "127.0.0.0", "prefix_len": 8}},
    ),
    (
        "when: [{key: connection.sni, values: ['*.local']}]",
        {"requested_server_name": {"suffix": ".local"}},
    ),
]


@pytest.mark.parametrize(("rule", "expected"), PERMISSION_TABLE)
def test_permission_table(rule: str, expected: dict[str, Any]) -> None:
    assert _one(_permissions(rule), "or_rules") == expected


def test_fields_and_values_combine_as_istio_says() -> None:
    """Values of a field are ORed, notValues negated, fields ANDed, from/to entries ORed."""
    policy = rbac_policy(
        _rule(
            "{from: [{source: {principals: [a/ns/b/sa/c]}}, {source: {namespaces: [x]}}],"
            " to: [{operation: {methods: [GET, HEAD], notPaths: [/admin]}}]}"
        ),
        "default",
        HTTP,
    )
    assert policy is not None
    assert len(policy["principals"]) == 2
    [perm] = policy["permissions"]
    methods, not_paths = perm["and_rules"]["rules"]
    assert [m["header"]["string_match"]["exact"] for m in methods["or_rules"]["rules"]] == [
        "GET",
        "HEAD",
    ]
    assert not_paths == {
        "not_rule": {"or_rules": {"rules": [{"url_path": {"path": {"exact": "/admin"}}}]}}
    }


def test_empty_rule_matches_everything_and_no_rules_matches_nothing() -> None:
    assert rbac_policy(Rule(), "default", HTTP) == {
        "permissions": [{"and_rules": {"rules": [ANY]}}],
        "principals": [{"and_ids": {"ids": [ANY]}}],
    }
    [res] = _load(_policy("{}"))
    filters = authz.http_filters(WorkloadSecurity(authorization=(res,)), _node(), 9080)
    [f] = filters
    assert f["typed_config"]["rules"] == {
        "action": "ALLOW",
        "policies": {"ns[default]-policy[p]-rule[0]": MATCH_NEVER},
    }


# ---- TCP ports: Istio's rules for HTTP-only attributes ----


def test_tcp_allow_rule_with_http_fields_is_left_out() -> None:
    tcp = Target("ALLOW", 5432, tcp=True)
    assert rbac_policy(_rule("to: [{operation: {methods: [GET]}}]"), "default", tcp) is None
    assert rbac_policy(_rule("from: [{source: {requestPrincipals: ['*']}}]"), "d", tcp) is None
    kept = rbac_policy(_rule("from: [{source: {namespaces: [a]}}]"), "default", tcp)
    assert kept is not None


def test_tcp_deny_rule_drops_http_fields_so_it_denies_more() -> None:
    tcp = Target("DENY", 5432, tcp=True)
    policy = rbac_policy(_rule("to: [{operation: {methods: [GET], ports: ['5432']}}]"), "d", tcp)
    assert policy is not None
    assert policy["permissions"] == [{"and_rules": {"rules": [{"or_rules": {"rules": [ANY]}}]}}]


def test_filters_per_action_in_envoy_order() -> None:
    docs = _load(
        _policy("rules: [{}]", "allow"),
        _policy("action: DENY\nrules: [{to: [{operation: {methods: [GET]}}]}]", "deny"),
        _policy("action: AUDIT\nrules: [{}]", "audit"),
        _policy(
            "action: DENY\nrules: [{}]", "dry", meta=", annotations: {istio.io/dry-run: 'true'}"
        ),
    )
    world = World.build(1, docs, [])
    security = world.security_for(_node())
    http = authz.http_filters(security, _node(), 9080)
    assert [f["name"] for f in http] == ["envoy.filters.http.rbac"] * 3
    configs = [f["typed_config"] for f in http]
    assert [c.get("rules", {}).get("action") for c in configs] == ["LOG", "DENY", "ALLOW"]
    assert set(configs[1]["rules"]["policies"]) == {"ns[default]-policy[deny]-rule[0]"}
    assert set(configs[1]["shadow_rules"]["policies"]) == {"ns[default]-policy[dry]-rule[0]"}
    assert configs[1]["shadow_rules_stat_prefix"] == "istio_dry_run_deny_"
    tcp = authz.network_filters(security, _node(), 5432)
    assert [f["typed_config"]["stat_prefix"] for f in tcp] == ["tcp."] * 3
    # On TCP the DENY rule on a method denies every connection (Istio's widening).
    deny = tcp[1]["typed_config"]["rules"]["policies"]["ns[default]-policy[deny]-rule[0]"]
    assert deny["permissions"] == [{"and_rules": {"rules": [ANY]}}]


# ---- validation and apply's warnings ----


def _errors(spec: str) -> dict[str, str]:
    with pytest.raises(ValidationFailed) as info:
        _load(_policy(spec))
    return {e.path: e.reason for e in info.value.errors}


def test_custom_is_accepted_its_provider_judged_when_applied() -> None:
    # istiod too accepts any provider name; apply warns (tests/unit/test_ext_authz.py).
    [res] = _load(_policy("action: CUSTOM\nprovider: {name: opa}\nrules: [{}]"))
    assert isinstance(res.spec, AuthorizationPolicySpec) and res.spec.action == "CUSTOM"


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("/a/{*}/{name}", "unsupported path template"),
        ("/a/{*}/*", "unsupported path template"),
        ("a/{*}", "must start with '/'"),
        ("/a/{**}/b", "must be the last segment"),
    ],
)
def test_bad_path_templates(path: str, why: str) -> None:
    errs = _errors(f"rules: [{{to: [{{operation: {{paths: ['{path}']}}}}]}}]")
    assert why in errs["spec.rules[0].to[0].operation.paths[0]"]


def test_bad_bracketed_keys() -> None:
    errs = _errors(
        "rules:\n- when:\n  - {key: 'request.auth.claims[a][]', values: [x]}\n"
        "  - {key: 'experimental.envoy.filters.a.b', values: [x]}"
    )
    assert "request.auth.claims[NAME]" in errs["spec.rules[0].when[0].key"]
    assert "experimental.envoy.filters.NAME[KEY]" in errs["spec.rules[0].when[1].key"]


def test_authorization_policy_is_no_longer_pending_but_target_refs_say_they_apply_nowhere() -> None:
    plain, ref = _load(
        _policy("{}"),
        _policy("targetRef: {kind: Gateway, group: gateway.networking.k8s.io, name: gw}", "r"),
    )
    assert not_yet_enforced([plain]) == []
    [warning] = not_yet_enforced([ref])
    assert "spec.targetRef" in warning and "applies to no workload" in warning


def test_principals_naming_nobody_are_warned_about() -> None:
    docs = _load(
        _policy(
            """
            rules:
            - from:
              - source:
                  principals:
                  - cluster.local/ns/default/sa/sleep
                  - cluster.local/ns/default/sa/ghost
                  - other.domain/ns/default/sa/sleep
                  - cluster.local/ns/default/*
                  - just-a-name
            """
        )
    )
    sleep = Instance(
        name="sleep-1",
        service="sleep",
        namespace="default",
        port=80,
        address="127.0.0.1",
        target_port=20000,
    )
    world = World.build(1, docs, [sleep])
    warnings = principal_problems(world, docs, [sleep])
    assert len(warnings) == 3
    ghost, domain, name = warnings
    assert "principals[1]" in ghost and "'ghost'" in ghost and "--service-account ghost" in ghost
    assert "trust domain 'other.domain'" in domain
    assert "not a workload identity" in name


# ---- gateways ----


def _gateway_scope(world: World) -> Any:
    node = Node.from_metadata(
        "ingress-1.istio-system",
        {
            "kind": "gateway",
            "namespace": "istio-system",
            "service": "ingress",
            "labels": {"istio": "ingressgateway"},
            "gateway_address": "127.0.0.1",
        },
    )
    return world.scope_of(node)


def test_gateways_are_selected_by_their_labels_and_keyed_by_their_policies(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    allow = _policy(
        "selector: {matchLabels: {istio: ingressgateway}}\n"
        "rules: [{from: [{source: {ipBlocks: [10.0.0.0/8]}}], to: [{operation: {ports: ['80']}}]}]",
        "allowlist",
        "istio-system",
    )
    other = _policy("selector: {matchLabels: {app: web}}", "web-only", "istio-system")
    world = World.build(1, _load(allow, other), [])
    scope = _gateway_scope(world)
    [f80] = authz.gateway_filters(world, scope, 80)
    [policy] = f80["typed_config"]["rules"]["policies"].values()
    assert policy["permissions"] == [{"and_rules": {"rules": [{"or_rules": {"rules": [ANY]}}]}}]
    [f443] = authz.gateway_filters(world, scope, 443)
    [policy] = f443["typed_config"]["rules"]["policies"].values()
    assert policy["permissions"][0]["and_rules"]["rules"][0]["or_rules"]["rules"] == [
        NEVER_PERMISSION
    ]
    # The memo key of the gateway's listeners changes with a selected policy (a new revision
    # is a new parsed object, as the control plane's WorldBuilder makes them), not with a
    # policy that selects another workload.
    [allow_res, other_res] = world.resources

    def unserialized(*_: Any, **__: Any) -> Any:
        raise AssertionError("the key serializes no policy")

    monkeypatch.setattr(AuthorizationPolicySpec, "model_dump_json", unserialized)
    changed = World.build(2, [*_load(allow.replace("10.0.0.0/8", "10.0.0.0/16")), other_res], [])
    assert authz.gateway_key(world, scope) != authz.gateway_key(changed, _gateway_scope(changed))
    unrelated = World.build(3, [allow_res, *_load(other.replace("web", "api"))], [])
    same = authz.gateway_key(unrelated, _gateway_scope(unrelated))
    assert authz.gateway_key(world, scope) == same
    nothing = World.build(1, _load(other), [])
    assert authz.gateway_key(nothing, _gateway_scope(nothing)) == ()
    assert authz.gateway_filters(nothing, _gateway_scope(nothing), 80) == ()


def test_a_gateway_runs_jwt_then_rbac_before_cors_as_istio() -> None:
    """Istio's connection manager order (``buildHTTPConnectionManager``): JWT
    authentication, then RBAC, then fault and CORS, then the router; so a CORS preflight is
    judged by the policies like any request (Istio's users allow ``OPTIONS`` for it), on
    plain-text and HTTPS servers alike."""
    gateway = textwrap.dedent(
        """
        apiVersion: networking.istio.io/v1
        kind: Gateway
        metadata: {name: gw, namespace: istio-system}
        spec:
          selector: {istio: ingressgateway}
          servers:
          - port: {number: 80, name: http, protocol: HTTP}
            hosts: ["*"]
          - port: {number: 443, name: https, protocol: HTTPS}
            hosts: ["*"]
            tls: {mode: ISTIO_MUTUAL}
        """
    )
    jwt = textwrap.dedent(
        """
        apiVersion: security.istio.io/v1
        kind: RequestAuthentication
        metadata: {name: jwt, namespace: istio-system}
        spec:
          selector: {matchLabels: {istio: ingressgateway}}
          jwtRules: [{issuer: "https://issuer.example", jwksUri: "https://issuer.example/k"}]
        """
    )
    allow = _policy(
        "selector: {matchLabels: {istio: ingressgateway}}\n"
        "rules: [{to: [{operation: {methods: [GET]}}]}]",
        "get-only",
        "istio-system",
    )
    world = World.build(1, _load(gateway, jwt, allow), [])
    listeners, _ = gateway_translation.gateway_parts(world, _gateway_scope(world))
    orders = [
        [f["name"] for f in chain["filters"][0]["typed_config"]["http_filters"]]
        for listener in listeners
        for chain in listener["filter_chains"]
    ]
    assert len(orders) == 2
    for names in orders:
        assert names[:2] == ["envoy.filters.http.jwt_authn", "envoy.filters.http.rbac"]
        assert names.index("envoy.filters.http.rbac") < names.index("envoy.filters.http.cors")
        assert names.index("envoy.filters.http.rbac") < names.index("envoy.filters.http.fault")
        assert names[-1] == "envoy.filters.http.router"


def test_a_workload_entry_without_service_account_has_no_identity() -> None:
    """As in Istio: no ``serviceAccount``, no SPIFFE ID (the SAN lists clients check leave it
    out too), so a principal naming ``default`` there is still nobody's."""
    docs = _load(
        _policy("rules: [{from: [{source: {principals: [cluster.local/ns/vms/sa/default]}}]}]"),
        "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\n"
        "metadata: {name: vm-1, namespace: vms}\nspec: {address: 192.0.2.30}\n",
        "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\n"
        "metadata: {name: vm-2, namespace: vms}\n"
        "spec: {address: 192.0.2.31, serviceAccount: runner}\n",
    )
    world = World.build(1, docs, [])
    [warning] = principal_problems(world, docs, [])
    assert "'default'" in warning and "'vms'" in warning
    runner = "cluster.local/ns/vms/sa/runner"
    ok = _load(_policy(f"rules: [{{from: [{{source: {{principals: [{runner}]}}}}]}}]"))
    assert principal_problems(world, ok, []) == []
