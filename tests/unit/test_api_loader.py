"""Document-level loading: kinds/apiVersions, metadata, multi-doc, YAML errors."""

from __future__ import annotations

import textwrap

import pytest

from tsunagi.api import (
    KINDS,
    DestinationRuleSpec,
    FieldError,
    Resource,
    ValidationFailed,
    VirtualServiceSpec,
    load_documents,
    parse_document,
)

MINIMAL_SPECS: dict[str, str] = {
    "VirtualService": """
        hosts: [reviews]
        http:
        - route:
          - destination: {host: reviews}
    """,
    "DestinationRule": "host: reviews",
    "ServiceEntry": """
        hosts: [api.example.com]
        ports: [{number: 443, name: https, protocol: TLS}]
        resolution: DNS
    """,
    "WorkloadEntry": "address: 10.0.0.1",
    "Gateway": """
        selector: {istio: ingressgateway}
        servers:
        - port: {number: 80, name: http, protocol: HTTP}
          hosts: ["*"]
    """,
    "Sidecar": """
        egress:
        - hosts: ["./*", "istio-system/*"]
    """,
    "PeerAuthentication": "mtls: {mode: STRICT}",
    "AuthorizationPolicy": "action: ALLOW",
    "RequestAuthentication": "jwtRules: [{issuer: https://issuer.example}]",
    "Telemetry": "tracing: [{randomSamplingPercentage: 10}]",
    "EnvoyFilter": """
        configPatches:
        - applyTo: CLUSTER
          patch: {operation: REMOVE}
    """,
}

GROUP_VERSIONS = {
    "VirtualService": "networking.istio.io",
    "DestinationRule": "networking.istio.io",
    "ServiceEntry": "networking.istio.io",
    "WorkloadEntry": "networking.istio.io",
    "Gateway": "networking.istio.io",
    "Sidecar": "networking.istio.io",
    "PeerAuthentication": "security.istio.io",
    "AuthorizationPolicy": "security.istio.io",
    "RequestAuthentication": "security.istio.io",
    "EnvoyFilter": "networking.istio.io",
    "Telemetry": "telemetry.istio.io",
}
#: Kinds Istio serves at fewer versions than the rest of their group.
ONLY_VERSIONS = {"EnvoyFilter": ["v1alpha3"], "Telemetry": ["v1alpha1", "v1beta1", "v1"]}


def _doc(kind: str, api: str, spec: str, name: str = "x", namespace: str = "") -> str:
    ns = f"\n  namespace: {namespace}" if namespace else ""
    body = textwrap.indent(textwrap.dedent(spec).strip(), "  ")
    return f"apiVersion: {api}\nkind: {kind}\nmetadata:\n  name: {name}{ns}\nspec:\n{body}\n"


def _errors(text: str, filename: str = "t.yaml") -> list[FieldError]:
    with pytest.raises(ValidationFailed) as info:
        load_documents(text, filename)
    return info.value.errors


def _versions(group: str, kind: str = "") -> list[str]:
    if kind in ONLY_VERSIONS:
        return ONLY_VERSIONS[kind]
    return ["v1alpha3", "v1beta1", "v1"] if group.startswith("networking") else ["v1beta1", "v1"]


@pytest.mark.parametrize(
    ("kind", "api"),
    [(k, f"{g}/{v}") for k, g in GROUP_VERSIONS.items() for v in _versions(g, k)],
)
def test_every_kind_loads_at_every_api_version(kind: str, api: str) -> None:
    [res] = load_documents(_doc(kind, api, MINIMAL_SPECS[kind]))
    assert res.kind == kind
    assert res.api_version == api
    assert isinstance(res.spec, KINDS[kind])
    assert res.key == (kind, "default", "x")


def test_kinds_registry_is_complete() -> None:
    # Secret is Kubernetes' core kind, with no spec (tests/unit/test_api_secrets.py)
    assert set(KINDS) == set(GROUP_VERSIONS) | {"Secret"}
    assert KINDS["VirtualService"] is VirtualServiceSpec


def test_envoy_filter_exists_at_v1alpha3_only() -> None:
    errs = _errors(_doc("EnvoyFilter", "networking.istio.io/v1", MINIMAL_SPECS["EnvoyFilter"]))
    assert [e.path for e in errs] == ["apiVersion"]


def test_kind_under_wrong_group_is_rejected() -> None:
    errs = _errors(_doc("VirtualService", "security.istio.io/v1", MINIMAL_SPECS["VirtualService"]))
    assert [e.path for e in errs] == ["apiVersion"]
    assert "networking.istio.io/v1" in errs[0].reason
    errs = _errors(_doc("PeerAuthentication", "security.istio.io/v1alpha3", "{}"))
    assert errs[0].path == "apiVersion"


def test_missing_api_version_and_unknown_kind() -> None:
    text = "kind: VirtualSevice\nmetadata: {name: a}\nspec: {}\n"
    errs = _errors(text)
    reasons = {e.path: e.reason for e in errs}
    assert reasons["apiVersion"] == "required field is missing"
    assert reasons["kind"] == 'unknown kind "VirtualSevice"; did you mean "VirtualService"?'


def test_resource_fields() -> None:
    text = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
  namespace: bookinfo
  labels: {app: reviews}
  annotations: {note: "hello world"}
  resourceVersion: "123"
spec:
  host: reviews
"""
    [res] = load_documents(text)
    assert isinstance(res, Resource)
    assert res.namespace == "bookinfo"
    assert res.name == "reviews"
    assert dict(res.labels) == {"app": "reviews"}
    assert dict(res.annotations) == {"note": "hello world"}
    assert isinstance(res.spec, DestinationRuleSpec)
    assert res.document["metadata"]["resourceVersion"] == "123"
    assert res.document["spec"] == {"host": "reviews"}
    assert res.key == ("DestinationRule", "bookinfo", "reviews")


def test_parse_document_direct() -> None:
    doc = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": "r"},
        "spec": {"host": "r"},
    }
    res = parse_document(doc, "f.yaml", 3)
    assert res.namespace == "default"
    with pytest.raises(ValidationFailed) as info:
        parse_document([1, 2], "f.yaml", 3)
    [err] = info.value.errors
    assert (err.file, err.document, err.path) == ("f.yaml", 3, "")
    assert "mapping" in err.reason


def test_multi_doc_one_bad_doc_reports_it_and_returns_nothing() -> None:
    good = _doc("DestinationRule", "networking.istio.io/v1", "host: reviews", name="reviews")
    bad = _doc(
        "VirtualService",
        "networking.istio.io/v1beta1",
        """
        hosts: [reviews]
        http:
        - route:
          - destination: {host: reviews, subset: v1}
            weight: 110
          - destination: {host: reviews, subset: v2}
            weight: -10
        """,
        name="reviews",
    )
    text = f"{good}---\n{bad}---\n"
    with pytest.raises(ValidationFailed) as info:
        load_documents(text, "reviews.yaml")
    [err] = info.value.errors
    assert str(err) == (
        "reviews.yaml: document 2 (VirtualService default/reviews): "
        "spec.http[0].route[1].weight: must be >= 0, got -10"
    )
    assert str(info.value) == str(err)


def test_errors_from_every_document_are_reported() -> None:
    text = (
        _doc("DestinationRule", "networking.istio.io/v1", "hots: a", name="one")
        + "---\n"
        + _doc("DestinationRule", "networking.istio.io/v1", "host: b", name="two")
        + "---\n"
        + _doc("Gateway", "networking.istio.io/v1", "servers: []", name="three")
    )
    errs = _errors(text)
    assert {e.document for e in errs} == {1, 3}
    assert any(e.reason == 'unknown field "hots"; did you mean "host"?' for e in errs)


def test_empty_documents_are_skipped_but_counted() -> None:
    text = "---\n---\n# just a comment\n---\n" + _doc(
        "DestinationRule", "networking.istio.io/v1", "host: [oops]"
    )
    errs = _errors(text)
    assert errs[0].document == 3
    assert load_documents("") == []
    assert load_documents("---\n---\n") == []


def test_malformed_yaml_reports_line_and_document() -> None:
    good = _doc("DestinationRule", "networking.istio.io/v1", "host: reviews")
    text = good + "---\napiVersion: networking.istio.io/v1\nkind: [unclosed\n"
    [err] = _errors(text, "bad.yaml")
    assert err.file == "bad.yaml"
    assert err.document == 2
    assert err.reason.startswith("invalid YAML: line ")
    assert "column" in err.reason


def test_duplicate_yaml_keys_are_rejected() -> None:
    text = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: a}\n"
    text += "spec:\n  host: a\n  host: b\n"
    [err] = _errors(text)
    assert err.document == 1
    assert err.reason.startswith("invalid YAML: line 6, column 3: ")
    assert 'duplicate key "host" (first at line 5)' in err.reason


def test_document_not_a_mapping() -> None:
    [err] = _errors("- a\n- b\n")
    assert err.path == ""
    assert "must be a mapping" in err.reason


def test_metadata_errors() -> None:
    text = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  namespace: Bad_NS
  nmae: x
  labels: {"app": 1}
spec: {host: a}
"""
    errs = _errors(text)
    reasons = {e.path: e.reason for e in errs}
    assert reasons["metadata.name"] == "required field is missing"
    assert "DNS-1123" in reasons["metadata.namespace"]
    assert reasons["metadata.nmae"] == 'unknown field "nmae"; did you mean "name"?'
    assert "must be a string" in reasons["metadata.labels.app"]
    assert all(e.name == "" for e in errs)


def test_invalid_name() -> None:
    [err] = _errors(_doc("DestinationRule", "networking.istio.io/v1", "host: a", name="My_Rule"))
    assert err.path == "metadata.name"
    assert "DNS-1123" in err.reason


def test_missing_metadata() -> None:
    errs = _errors("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nspec: {host: a}\n")
    assert [(e.path, e.reason) for e in errs] == [("metadata.name", "required field is missing")]


def test_unknown_top_level_field() -> None:
    text = _doc("DestinationRule", "networking.istio.io/v1", "host: a") + "specs: {}\n"
    [err] = _errors(text)
    assert err.path == "specs"
    assert 'did you mean "spec"?' in err.reason


def test_duplicate_resources_in_one_file() -> None:
    one = _doc("DestinationRule", "networking.istio.io/v1", "host: a", name="dup")
    other_ns = _doc("DestinationRule", "networking.istio.io/v1", "host: a", "dup", "prod")
    [err] = _errors(f"{one}---\n{other_ns}---\n{one}")
    assert err.document == 3
    assert err.path == "metadata.name"
    assert "document 1" in err.reason


def test_missing_spec_is_empty_spec() -> None:
    text = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny}\n"
    [res] = load_documents(text)
    assert res.spec.model_dump()["action"] == "ALLOW"
    errs = _errors(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: a}\n"
    )
    # No hosts is a delegate (valid in Istio), but a VirtualService needs some routes.
    assert any(e.path == "spec" and "http, tcp or tls" in e.reason for e in errs)


def test_snake_case_field_names_are_rejected_with_camel_suggestion() -> None:
    text = _doc(
        "DestinationRule",
        "networking.istio.io/v1",
        "host: a\ntraffic_policy: {}",
    )
    [err] = _errors(text)
    assert err.path == "spec.traffic_policy"
    assert 'did you mean "trafficPolicy"?' in err.reason


def test_wrong_types_are_reported_readably() -> None:
    text = _doc(
        "VirtualService",
        "networking.istio.io/v1",
        """
        hosts: reviews
        http:
        - route:
          - destination: {host: reviews, port: {number: "80"}}
          timeout: 10
        """,
    )
    reasons = {e.path: e.reason for e in _errors(text)}
    assert reasons["spec.hosts"] == 'must be a list, got "reviews"'
    assert reasons["spec.http[0].route[0].destination.port.number"] == (
        'must be an integer, got "80"'
    )
    assert "duration" in reasons["spec.http[0].timeout"]
