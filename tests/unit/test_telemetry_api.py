"""The Telemetry kind: parsing every version, Istio's validation rules, apply warnings."""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path

import pytest

from tsunagi.agent.envoy import envoy_binary
from tsunagi.api import TelemetrySpec, ValidationFailed, load_documents
from tsunagi.api.cel import check_expression
from tsunagi.controlplane.http_api import resolve_kind
from tsunagi.mesh import Node, World
from tsunagi.mesh.analysis import not_yet_enforced
from tsunagi.mesh.telemetry import ProxyTelemetry
from tsunagi.mesh.telemetry_analysis import telemetry_conflicts
from tsunagi.xds.translate.accesslog import OUTBOUND, http_access_loggers


def _doc(spec: str, name: str = "t", namespace: str = "foo", version: str = "v1") -> str:
    body = textwrap.indent(textwrap.dedent(spec).strip(), "  ")
    return (
        f"apiVersion: telemetry.istio.io/{version}\nkind: Telemetry\n"
        f"metadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n{body}\n"
    )


def _errors(spec: str) -> dict[str, str]:
    with pytest.raises(ValidationFailed) as info:
        load_documents(_doc(spec), filename="t.yaml")
    return {e.path: e.reason for e in info.value.errors}


FULL = """
selector:
  matchLabels: {app: reviews}
tracing:
- match: {mode: SERVER}
  providers: [{name: zipkin}]
  randomSamplingPercentage: 12.5
  disableSpanReporting: false
  useRequestIdForTraceSampling: true
  customTags:
    team: {literal: {value: shop}}
    pod: {environment: {name: HOSTNAME, defaultValue: none}}
    user: {header: {name: x-user}}
accessLogging:
- providers: [{name: envoy}]
  match: {mode: CLIENT}
  disabled: false
  filter: {expression: "response.code >= 400"}
metrics:
- providers: [{name: prometheus}]
  reportingInterval: 10s
  overrides:
  - match: {metric: REQUEST_COUNT, mode: CLIENT}
    disabled: true
    tagOverrides:
      response_code: {operation: REMOVE}
  - match: {customMetric: my_metric}
"""


@pytest.mark.parametrize("version", ["v1", "v1beta1", "v1alpha1"])
def test_every_istio_field_parses(version: str) -> None:
    [res] = load_documents(_doc(FULL, version=version))
    spec = res.spec
    assert isinstance(spec, TelemetrySpec)
    [tracing] = spec.tracing
    assert tracing.match is not None and tracing.match.mode == "SERVER"
    assert tracing.random_sampling_percentage == 12.5
    assert tracing.custom_tags is not None and tracing.custom_tags["pod"].environment is not None
    assert spec.access_logging[0].filter is not None
    assert spec.metrics[0].reporting_interval == 10.0
    override = spec.metrics[0].overrides[0]
    assert override.tag_overrides["response_code"].operation == "REMOVE"


def test_unset_wrappers_stay_unset_so_children_inherit() -> None:
    [res] = load_documents(_doc("tracing:\n- customTags: {}\n"))
    assert isinstance(res.spec, TelemetrySpec)
    [t] = res.spec.tracing
    assert t.random_sampling_percentage is None and t.disable_span_reporting is None
    assert t.custom_tags == {}  # set, and empty: it replaces the parent's tags


@pytest.mark.parametrize(
    ("spec", "path", "reason"),
    [
        (
            "tracing:\n- randomSamplingPercentage: 101",
            "spec.tracing[0].randomSamplingPercentage",
            "between 0 and 100",
        ),
        (
            "tracing:\n- providers: [{name: a}, {name: b}]",
            "spec.tracing[0].providers",
            "multiple providers",
        ),
        ("tracing:\n- providers: [{}]", "spec.tracing[0].providers[0].name", "required"),
        (
            "tracing:\n- customTags: {a: {literal: {value: x}, header: {name: y}}}",
            "spec.tracing[0].customTags.a",
            "exactly one of literal, environment, header, formatter (got literal, header)",
        ),
        (
            "tracing:\n- customTags: {a: {literal: {}}}",
            "spec.tracing[0].customTags.a.literal.value",
            "required",
        ),
        (
            "tracing:\n- customTags: {a: {header: {name: 'bad header'}}}",
            "spec.tracing[0].customTags.a.header.name",
            "header",
        ),
        ("tracing:\n- match: {mode: BOTH}", "spec.tracing[0].match.mode", "CLIENT_AND_SERVER"),
        (
            "metrics:\n- overrides:\n  - match: {metric: REQUEST_COUNT, customMetric: x}",
            "spec.metrics[0].overrides[0].match",
            "only one of metric and customMetric",
        ),
        (
            "metrics:\n- overrides:\n  - match: {metric: REQUESTS}",
            "spec.metrics[0].overrides[0].match.metric",
            "REQUEST_COUNT",
        ),
        (
            "metrics:\n- overrides:\n  - tagOverrides: {a: {operation: REMOVE, value: x}}",
            "spec.metrics[0].overrides[0].tagOverrides.a.value",
            "must not be set when operation is REMOVE",
        ),
        (
            "metrics:\n- overrides:\n  - tagOverrides: {a: {}}",
            "spec.metrics[0].overrides[0].tagOverrides.a.value",
            "must be set when operation is UPSERT",
        ),
        (
            "accessLogging:\n- disabled: 'yes'",
            "spec.accessLogging[0].disabled",
            "true or false",
        ),
        (
            "selector: {matchLabels: {app: a}}\ntargetRefs: [{kind: Gateway, name: g}]",
            "spec",
            "selector cannot be combined",
        ),
        ("tracing:\n- sampling: 5", "spec.tracing[0].sampling", ""),
    ],
)
def test_istio_rules(spec: str, path: str, reason: str) -> None:
    errors = _errors(spec)
    assert path in errors, errors
    assert reason in errors[path]


def test_errors_name_the_file_and_resource() -> None:
    with pytest.raises(ValidationFailed) as info:
        load_documents(_doc("tracing:\n- randomSamplingPercentage: -1"), filename="t.yaml")
    assert "t.yaml" in str(info.value) and "Telemetry foo/t" in str(info.value)


def test_get_telemetry_and_telemetries() -> None:
    assert resolve_kind("telemetry") == "Telemetry"
    assert resolve_kind("telemetries") == "Telemetry"


def _warnings(spec: str) -> list[str]:
    return not_yet_enforced(load_documents(_doc(spec)))


def test_warnings_for_what_is_not_applied() -> None:
    assert _warnings(FULL) == [
        "Telemetry foo/t: spec.metrics[0].reportingInterval is not applied yet",
        "Telemetry foo/t: spec.metrics[0].overrides[1].match.customMetric 'my_metric': "
        "Tsunagi's sidecars report only Istio's standard metrics; this override matches "
        "nothing",
    ]
    [upsert] = _warnings("metrics:\n- overrides:\n  - tagOverrides: {a: {value: request.host}}")
    assert "tagOverrides.a: UPSERT" in upsert and "not applied yet" in upsert
    [target] = _warnings("targetRefs: [{kind: Gateway, name: g}]")
    assert "spec.targetRefs is not applied yet" in target
    [fmt] = _warnings("tracing:\n- customTags: {a: {formatter: {value: '%REQ(x-a)%'}}}")
    assert "customTags.a.formatter is not applied yet" in fmt
    [unknown] = _warnings("tracing:\n- providers: [{name: jaeger}]")
    assert "'jaeger' is not a provider" in unknown and "report no spans" in unknown


def test_warning_when_two_telemetries_compete() -> None:
    resources = load_documents(
        _doc("tracing: [{}]", "a")
        + "---\n"
        + _doc("tracing: [{}]", "b")
        + "---\n"
        + _doc("selector: {matchLabels: {app: x}}", "c")
        + "---\n"
        + _doc("selector: {matchLabels: {version: v1}}", "d")
        + "---\n"
        + _doc("selector: {matchLabels: {app: y}}", "e")
        + "---\n"
        + _doc("tracing: [{}]", "f", namespace="bar")
    )
    world = World.build(1, resources, [])
    warnings = telemetry_conflicts(world, resources)
    assert len(warnings) == 5, warnings
    by_name = {w.split(":")[0]: w for w in warnings}
    assert "namespace-wide" in by_name["Telemetry foo/b"]
    assert "Tsunagi the first by name (a)" in by_name["Telemetry foo/b"]
    # app=x and version=v1 can be one workload; app=x and app=y cannot
    assert "may select the same workloads as d;" in by_name["Telemetry foo/c"]
    assert "may select the same workloads as c, e;" in by_name["Telemetry foo/d"]
    assert "all apply to such a workload" in by_name["Telemetry foo/d"]
    assert "Telemetry bar/f" not in by_name


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        ("response.code >= ", "not valid CEL: 1:18: Syntax error"),
        ('request.headers["x"] == "a', "not valid CEL"),
        ("lower(request.path) == 'a'", "undeclared reference to 'lower'"),
        ("request.headers.exists(k, k == 'a')", "without the macros all, exists"),
        ("reqest.path == '/'", "undeclared reference to 'reqest.path'"),
    ],
)
def test_malformed_access_log_filter_is_refused_at_apply(expression: str, reason: str) -> None:
    spec = f"accessLogging:\n- filter: {{expression: {json.dumps(expression)}}}"
    with pytest.raises(ValidationFailed) as info:
        load_documents(_doc(spec), filename="t.yaml")
    [error] = info.value.errors
    assert error.path == "spec.accessLogging[0].filter.expression"
    assert reason in error.reason
    assert "t.yaml" in str(info.value) and "Telemetry foo/t" in str(info.value)


ACCEPTED = (
    "response.code >= 400",
    'request.url_path.startsWith("/admin") && response.code != 404',
    "response.code in [500, 503] || response.flags != 0u",
    'has(request.headers.authorization) && request.headers["x-debug"] == "1"',
    "size(request.path) > 2u && request.duration > duration('1s')",
    'connection.mtls && source.address != "" && xds.cluster_name.endsWith("9080")',
    'request.path.matches("^/v[0-9]+/") && !(upstream.port == 9080)',
)
REFUSED = (
    "response.code >= ",
    "lower(request.path) == 'a'",
    "request.headers.exists(k, k == 'a')",
)


def _envoy_validates(expressions: tuple[str, ...], tmp_path: Path) -> bool:
    """Whether real Envoy loads a listener whose access loggers filter on ``expressions``
    (the loggers exactly as translation writes them)."""
    loggers = []
    for expression in expressions:
        telemetry = ProxyTelemetry(access_log="TEXT", access_log_filter=expression)
        loggers += http_access_loggers(Node("x.default"), telemetry, OUTBOUND)
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network."
        "http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "t",
        "route_config": {"name": "r"},
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            }
        ],
        "access_log": loggers,
    }
    listener = {
        "name": "l",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [
            {
                "filters": [
                    {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                ]
            }
        ],
    }
    config = tmp_path / "bootstrap.json"
    config.write_text(json.dumps({"static_resources": {"listeners": [listener]}}))
    command = [envoy_binary(), "--mode", "validate", "-c", str(config), "--use-dynamic-base-id"]
    result = subprocess.run([*command, "--log-level", "error"], capture_output=True, timeout=60)
    return result.returncode == 0


def test_what_apply_accepts_envoy_accepts_and_what_it_refuses_envoy_refuses(
    tmp_path: Path,
) -> None:
    for expression in ACCEPTED:
        assert check_expression(expression) is None, expression
    assert _envoy_validates(ACCEPTED, tmp_path)
    for expression in REFUSED:
        assert check_expression(expression) is not None, expression
        assert not _envoy_validates((expression,), tmp_path), expression
