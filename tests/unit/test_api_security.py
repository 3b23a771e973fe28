"""PeerAuthentication and AuthorizationPolicy models and rules."""

from __future__ import annotations

import textwrap

import pytest

from tsunagi.api import (
    AuthorizationPolicySpec,
    PeerAuthenticationSpec,
    ValidationFailed,
    load_documents,
)

from .examples import AUTHORIZATION_POLICY, PEER_AUTHENTICATION


def _doc(kind: str, spec: str) -> str:
    body = textwrap.indent(textwrap.dedent(spec).strip(), "  ")
    return (
        f"apiVersion: security.istio.io/v1\nkind: {kind}\n"
        f"metadata:\n  name: p\n  namespace: foo\nspec:\n{body}\n"
    )


def _errors(kind: str, spec: str) -> dict[str, str]:
    with pytest.raises(ValidationFailed) as info:
        load_documents(_doc(kind, spec))
    return {e.path: e.reason for e in info.value.errors}


def test_peer_authentication_parses() -> None:
    [res] = load_documents(_doc("PeerAuthentication", PEER_AUTHENTICATION))
    spec = res.spec
    assert isinstance(spec, PeerAuthenticationSpec)
    assert spec.mtls is not None and spec.mtls.mode == "STRICT"
    assert spec.port_level_mtls[8080].mode == "DISABLE"
    assert spec.selector is not None and spec.selector.match_labels == {"app": "reviews"}


def test_peer_authentication_mode_enum() -> None:
    errs = _errors("PeerAuthentication", "mtls: {mode: ON}")
    reason = errs["spec.mtls.mode"]
    for mode in ("UNSET", "DISABLE", "PERMISSIVE", "STRICT"):
        assert mode in reason


def test_port_level_mtls_needs_selector() -> None:
    errs = _errors("PeerAuthentication", "portLevelMtls: {8080: {mode: DISABLE}}")
    assert "selector" in errs["spec.portLevelMtls"]


def test_authorization_policy_parses() -> None:
    [res] = load_documents(_doc("AuthorizationPolicy", AUTHORIZATION_POLICY))
    spec = res.spec
    assert isinstance(spec, AuthorizationPolicySpec)
    rule = spec.rules[0]
    assert rule.from_[0].source is not None
    assert rule.from_[0].source.principals == ("cluster.local/ns/default/sa/sleep",)
    assert rule.to[0].operation is not None and rule.to[0].operation.methods == ("GET",)
    assert rule.when[0].key == "request.auth.claims[iss]"


def test_allow_nothing_policy() -> None:
    [res] = load_documents(_doc("AuthorizationPolicy", "{}"))
    assert isinstance(res.spec, AuthorizationPolicySpec)
    assert res.spec.action == "ALLOW" and res.spec.rules == ()


def test_custom_needs_provider() -> None:
    errs = _errors("AuthorizationPolicy", "action: CUSTOM\nrules: [{}]")
    assert "provider is required" in errs["spec.provider"]
    errs = _errors("AuthorizationPolicy", "action: DENY\nprovider: {name: ext}\nrules: [{}]")
    assert "only allowed with action CUSTOM" in errs["spec.provider"]


def test_action_enum() -> None:
    errs = _errors("AuthorizationPolicy", "action: REJECT")
    assert "CUSTOM" in errs["spec.action"]


def test_empty_from_to_when_lists() -> None:
    errs = _errors("AuthorizationPolicy", "action: DENY\nrules:\n- from: []\n  to: []\n  when: []")
    assert set(errs) == {"spec.rules[0].from", "spec.rules[0].to", "spec.rules[0].when"}


def test_empty_source_and_operation() -> None:
    errs = _errors(
        "AuthorizationPolicy", "rules:\n- from: [{source: {}}]\n  to: [{operation: {hosts: ['']}}]"
    )
    assert errs["spec.rules[0].from[0].source"] == "must set at least one field"
    assert errs["spec.rules[0].to[0].operation.hosts[0]"] == "empty value is not allowed"


def test_when_conditions() -> None:
    errs = _errors(
        "AuthorizationPolicy",
        "rules:\n- when:\n  - {key: request.colour, values: [red]}\n  - {key: source.ip}",
    )
    assert "unknown attribute" in errs["spec.rules[0].when[0].key"]
    assert "values or notValues" in errs["spec.rules[0].when[1]"]


def test_bad_ports_and_ip_blocks() -> None:
    errs = _errors(
        "AuthorizationPolicy",
        "rules:\n- from: [{source: {ipBlocks: [not-an-ip]}}]\n"
        "  to: [{operation: {ports: ['99999']}}]",
    )
    assert "not a valid IP" in errs["spec.rules[0].from[0].source.ipBlocks[0]"]
    assert "between 1 and 65535" in errs["spec.rules[0].to[0].operation.ports[0]"]


def test_unknown_field_in_rule() -> None:
    errs = _errors("AuthorizationPolicy", "rules:\n- form: [{source: {namespaces: [a]}}]")
    assert errs["spec.rules[0].form"] == 'unknown field "form"; did you mean "from"?'


def test_selector_and_target_ref_conflict() -> None:
    errs = _errors(
        "AuthorizationPolicy",
        "selector: {matchLabels: {app: a}}\n"
        "targetRef: {kind: Gateway, group: gateway.networking.k8s.io, name: gw}",
    )
    assert "selector cannot be combined" in errs["spec"]
