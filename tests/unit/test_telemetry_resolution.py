"""Telemetry resources resolved per proxy: Istio's precedence (root namespace < namespace <
workload selector), inheritance of unset fields, direction, access logs and metrics."""

from __future__ import annotations

import textwrap

from tsunagi import proxy_contract as pc
from tsunagi.api import load_documents
from tsunagi.mesh import Node, World
from tsunagi.mesh import telemetry as tm
from tsunagi.xds.translate.accesslog import INBOUND, OUTBOUND, http_access_loggers, metrics_token

COLLECTOR = ("127.0.0.1", 9411)
MESH = tm.MeshTelemetry(trace_sampling=1.0, collector=COLLECTOR)
PRODUCTPAGE = Node(
    id="pp", namespace="shop", service="productpage", labels={"app": "productpage", "version": "v1"}
)


def _telemetry(name: str, namespace: str, spec: str) -> str:
    body = textwrap.indent(textwrap.dedent(spec).strip(), "  ")
    return (
        "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\n"
        f"metadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n{body}\n---\n"
    )


def _for(docs: str, node: Node = PRODUCTPAGE, mesh: tm.MeshTelemetry = MESH) -> tm.ProxyTelemetry:
    return World.build(1, load_documents(docs), [], mesh).telemetry_for(node)


def _sampling(t: tm.ProxyTelemetry) -> tuple[float | None, float | None]:
    client, server = t.tracing, t.server_tracing
    return (client.sampling if client else None, server.sampling if server else None)


def _tags(t: tm.Tracing | None) -> dict[str, tuple[str, str, str]]:
    assert t is not None
    return {tag: (kind, name, default) for tag, kind, name, default in t.custom_tags}


def test_no_telemetry_is_the_mesh_default_with_istio_tags() -> None:
    t = _for("")
    assert _sampling(t) == (1.0, 1.0)
    assert _tags(t.tracing)["istio.canonical_service"] == ("literal", "productpage", "")
    assert _tags(t.tracing)["istio.canonical_revision"] == ("literal", "v1", "")
    assert _tags(t.tracing)["istio.namespace"] == ("literal", "shop", "")
    assert t.access_log == "" and t.metric_overrides == ()


def test_no_collector_no_tracing() -> None:
    t = _for(
        _telemetry("m", "istio-system", "tracing: [{randomSamplingPercentage: 50}]"),
        mesh=tm.MeshTelemetry(),
    )
    assert t.tracing is None and t.server_tracing is None


def test_mesh_sampling_zero_leaves_the_tracer_out_but_an_explicit_zero_keeps_it() -> None:
    off = tm.MeshTelemetry(trace_sampling=0.0, collector=COLLECTOR)
    t = _for("", mesh=off)
    assert t.tracing is None and t.server_tracing is None
    # A Telemetry's own 0 keeps the tracer: its "not sampled" travels with the request.
    explicit = _telemetry("quiet", "shop", "tracing: [{randomSamplingPercentage: 0}]")
    assert _sampling(_for(explicit, mesh=off)) == (0.0, 0.0)
    # A namespace that asks for tracing gets it over a mesh default of 0.
    on = _telemetry("traced", "shop", "tracing: [{randomSamplingPercentage: 5}]")
    assert _sampling(_for(on, mesh=off)) == (5.0, 5.0)


def test_precedence_root_then_namespace_then_workload() -> None:
    root = _telemetry("mesh", "istio-system", "tracing: [{randomSamplingPercentage: 10}]")
    ns = _telemetry("ns", "shop", "tracing: [{randomSamplingPercentage: 20}]")
    wl = _telemetry(
        "pp",
        "shop",
        "selector: {matchLabels: {app: productpage}}\ntracing: [{randomSamplingPercentage: 30}]",
    )
    other = _telemetry(
        "rv",
        "shop",
        "selector: {matchLabels: {app: reviews}}\ntracing: [{randomSamplingPercentage: 40}]",
    )
    assert _sampling(_for(root)) == (10, 10)
    assert _sampling(_for(root + ns)) == (20, 20)
    assert _sampling(_for(root + ns + wl + other)) == (30, 30)
    assert _sampling(_for(root + other)) == (10, 10)
    # another namespace's Telemetry does not apply
    assert _sampling(
        _for(_telemetry("ns", "elsewhere", "tracing: [{randomSamplingPercentage: 20}]"))
    ) == (1, 1)


def test_unset_fields_inherit_and_custom_tags_replace() -> None:
    root = _telemetry(
        "mesh",
        "istio-system",
        "tracing: [{randomSamplingPercentage: 10, customTags: {team: {literal: {value: a}}}}]",
    )
    wl = _telemetry(
        "pp",
        "shop",
        "selector: {matchLabels: {app: productpage}}\n"
        "tracing: [{customTags: {user: {header: {name: x-user, defaultValue: anon}}}}]",
    )
    t = _for(root + wl)
    assert _sampling(t) == (10, 10)  # inherited
    tags = _tags(t.tracing)
    assert "team" not in tags  # replaced as a whole, as Istio does
    assert tags["user"] == ("header", "x-user", "anon")


def test_mode_sets_one_side_and_disable_span_reporting_removes_it() -> None:
    ns = _telemetry(
        "ns",
        "shop",
        "tracing:\n- match: {mode: SERVER}\n  randomSamplingPercentage: 0.25\n"
        "- match: {mode: CLIENT}\n  disableSpanReporting: true",
    )
    t = _for(ns)
    assert t.tracing is None
    assert t.server_tracing is not None and t.server_tracing.sampling == 0.25
    assert t.tracing_for("outbound") is None and t.tracing_for("inbound") is t.server_tracing
    # a child may turn reporting back on
    wl = _telemetry(
        "pp",
        "shop",
        "selector: {matchLabels: {app: productpage}}\ntracing: [{disableSpanReporting: false}]",
    )
    assert _sampling(_for(ns + wl)) == (1.0, 0.25)


def test_unknown_provider_reports_nowhere_and_zipkin_is_case_insensitive() -> None:
    assert (
        _for(_telemetry("ns", "shop", "tracing: [{providers: [{name: jaeger}]}]")).tracing is None
    )
    assert (
        _for(_telemetry("ns", "shop", "tracing: [{providers: [{name: Zipkin}]}]")).tracing
        is not None
    )


def test_use_request_id_and_istio_tags_switches() -> None:
    t = _for(
        _telemetry(
            "ns", "shop", "tracing: [{useRequestIdForTraceSampling: false, enableIstioTags: false}]"
        )
    )
    assert t.tracing is not None and not t.tracing.use_request_id
    assert t.tracing.custom_tags == ()


def test_several_at_one_level_first_by_name_and_target_refs_ignored() -> None:
    docs = (
        _telemetry("b", "shop", "tracing: [{randomSamplingPercentage: 2}]")
        + _telemetry("a", "shop", "tracing: [{randomSamplingPercentage: 3}]")
        + _telemetry(
            "0-gw",
            "shop",
            "targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: g}]\n"
            "tracing: [{randomSamplingPercentage: 4}]",
        )
    )
    assert _sampling(_for(docs)) == (3, 3)


def test_root_namespace_selector_only_selects_root_workloads() -> None:
    docs = _telemetry(
        "x",
        "istio-system",
        "selector: {matchLabels: {app: productpage}}\ntracing: [{randomSamplingPercentage: 9}]",
    )
    assert _sampling(_for(docs)) == (1, 1)


def test_access_log_on_off_by_level_and_mode() -> None:
    on = tm.MeshTelemetry(access_log="JSON")
    assert _for("", mesh=on).access_log == "JSON"
    off_ns = _telemetry("ns", "shop", "accessLogging: [{disabled: true}]")
    assert _for(off_ns, mesh=on).access_log == ""
    back_on = _telemetry(
        "pp",
        "shop",
        "selector: {matchLabels: {app: productpage}}\naccessLogging: [{disabled: false}]",
    )
    assert _for(off_ns + back_on, mesh=on).access_log == "JSON"
    # off mesh-wide, on for one namespace through the envoy provider, client side only
    named = _telemetry(
        "ns",
        "shop",
        "accessLogging: [{providers: [{name: envoy}], match: {mode: CLIENT}, "
        "filter: {expression: 'response.code >= 500'}}]",
    )
    t = _for(named)
    assert (t.access_log, t.access_log_mode, t.access_log_filter) == (
        "TEXT",
        tm.CLIENT,
        "response.code >= 500",
    )
    assert t.access_log_for("outbound") == "TEXT" and t.access_log_for("inbound") == ""
    # an unknown provider logs nothing
    assert (
        _for(
            _telemetry("ns", "shop", "accessLogging: [{providers: [{name: otel}]}]"), mesh=on
        ).access_log
        == ""
    )


def test_metric_overrides_normalized_per_metric_and_side() -> None:
    root = _telemetry(
        "mesh",
        "istio-system",
        "metrics:\n- overrides:\n  - match: {metric: REQUEST_COUNT}\n"
        "    tagOverrides: {response_code: {operation: REMOVE}}",
    )
    wl = _telemetry(
        "pp",
        "shop",
        "selector: {matchLabels: {app: productpage}}\n"
        "metrics:\n- overrides:\n  - match: {metric: REQUEST_COUNT, mode: SERVER}\n"
        "    disabled: true",
    )
    t = _for(root + wl)
    assert t.metric_overrides == (
        tm.MetricOverride("REQUEST_COUNT", tm.CLIENT, False, ("response_code",)),
        tm.MetricOverride("REQUEST_COUNT", tm.SERVER, True, ("response_code",)),
    )


def test_all_metrics_disabled_and_turned_back_on() -> None:
    off = _telemetry("mesh", "istio-system", "metrics: [{overrides: [{disabled: true}]}]")
    assert _for(off).metric_overrides == (tm.MetricOverride(disabled=True),)
    on = _telemetry(
        "ns", "shop", "metrics: [{overrides: [{match: {metric: REQUEST_COUNT}, disabled: false}]}]"
    )
    assert _for(off + on).metric_overrides == ()
    other_provider = _telemetry("ns", "shop", "metrics: [{providers: [{name: stackdriver}]}]")
    assert _for(other_provider).metric_overrides == (tm.MetricOverride(disabled=True),)


def test_answers_are_memoized_per_namespace_service_and_labels() -> None:
    world = World.build(1, load_documents(_telemetry("ns", "shop", "tracing: [{}]")), [], MESH)
    twin = Node(id="pp-2", namespace="shop", service="productpage", labels=dict(PRODUCTPAGE.labels))
    assert world.telemetry_for(PRODUCTPAGE) is world.telemetry_for(twin)


def test_all_metrics_disabled_for_one_side_leaves_the_other_on() -> None:
    client_off = _telemetry(
        "mesh",
        "istio-system",
        "metrics: [{overrides: [{match: {metric: ALL_METRICS, mode: CLIENT}, disabled: true}]}]",
    )
    t = _for(client_off)
    assert t.metric_overrides == (tm.MetricOverride(mode=tm.CLIENT, disabled=True),)
    # What the sidecar's Envoy gets: no metrics line on the client side, all on the server's.
    assert metrics_token(pc.METRICS_LINE_SOURCE, t.metric_overrides, tm.CLIENT) is None
    assert metrics_token(pc.METRICS_LINE_DESTINATION, t.metric_overrides, tm.SERVER) == "d"
    assert metrics_token(pc.METRICS_LINE_TCP, t.metric_overrides, tm.SERVER) == "t"
    # A later server-side override does not turn the client side back on...
    server = _telemetry(
        "ns",
        "shop",
        "metrics: [{overrides: [{match: {metric: REQUEST_COUNT, mode: SERVER}, disabled: true}]}]",
    )
    assert _for(client_off + server).metric_overrides == (
        tm.MetricOverride(mode=tm.CLIENT, disabled=True),
        tm.MetricOverride("REQUEST_COUNT", tm.SERVER, True),
    )
    # ...a later client-side one does (Istio: any override for that provider and mode).
    client = _telemetry(
        "ns",
        "shop",
        "metrics: [{overrides: [{match: {metric: REQUEST_SIZE, mode: CLIENT}, disabled: true}]}]",
    )
    t = _for(client_off + client)
    assert t.metric_overrides == (tm.MetricOverride("REQUEST_SIZE", tm.CLIENT, True),)
    assert metrics_token(pc.METRICS_LINE_SOURCE, t.metric_overrides, tm.CLIENT) == "s|REQUEST_SIZE!"
    # Both sides off, one side at a time, is the provider off.
    server_off = client_off.replace("mode: CLIENT", "mode: SERVER").replace("mesh", "ns")
    server_off = server_off.replace("istio-system", "shop")
    assert _for(client_off + server_off).metric_overrides == (tm.MetricOverride(disabled=True),)


def _selected(name: str, labels: str, spec: str) -> str:
    return _telemetry(name, "shop", f"selector: {{matchLabels: {labels}}}\n{spec}")


def test_every_matching_workload_telemetry_applies_in_order() -> None:
    first = _selected(
        "a",
        "{app: productpage}",
        "tracing: [{randomSamplingPercentage: 10, customTags: {team: {literal: {value: x}}}}]",
    )
    second = _selected("b", "{version: v1}", "tracing: [{randomSamplingPercentage: 20}]")
    other = _selected("c", "{app: reviews}", "tracing: [{randomSamplingPercentage: 30}]")
    t = _for(first + second + other)
    # b (later by name) overrides a's sampling; a's tags, which b leaves unset, stay.
    assert _sampling(t) == (20.0, 20.0)
    assert _tags(t.tracing)["team"] == ("literal", "x", "")
    world = World.build(1, load_documents(first + second + other), [], MESH)
    chain = world.telemetry_policies.chain("shop", PRODUCTPAGE.labels)
    assert [c.name for c in chain] == ["a", "b"]


def test_access_log_mode_is_matched_before_providers_and_filters() -> None:
    client = _telemetry(
        "ns",
        "shop",
        "accessLogging: [{providers: [{name: envoy}], match: {mode: CLIENT}, "
        "filter: {expression: 'response.code >= 500'}}]",
    )
    server = _selected(
        "pp",
        "{app: productpage}",
        "accessLogging: [{providers: [{name: envoy}], match: {mode: SERVER}, "
        "filter: {expression: 'request.url_path == \"/admin\"'}}]",
    )
    t = _for(client + server)
    assert t.access_log_for("outbound") == "TEXT" and t.access_log_for("inbound") == "TEXT"
    assert t.access_log_filter_for("outbound") == "response.code >= 500"
    assert t.access_log_filter_for("inbound") == 'request.url_path == "/admin"'
    node = Node(id="pp", namespace="shop", service="productpage")
    [outbound] = http_access_loggers(node, t, OUTBOUND)
    [inbound] = http_access_loggers(node, t, INBOUND)
    cel = "extension_filter"
    assert outbound["filter"][cel]["typed_config"]["expression"] == "response.code >= 500"
    assert inbound["filter"][cel]["typed_config"]["expression"] == 'request.url_path == "/admin"'
    # A server-side entry naming another provider leaves the client side's envoy logging.
    otel = server.replace("name: envoy", "name: otel")
    t = _for(client + otel)
    assert t.access_log_for("outbound") == "TEXT" and t.access_log_for("inbound") == ""
    # A client-side "disabled" does not turn the server side off.
    on = tm.MeshTelemetry(access_log="JSON")
    off = _telemetry("ns", "shop", "accessLogging: [{disabled: true, match: {mode: CLIENT}}]")
    t = _for(off, mesh=on)
    assert t.access_log_for("outbound") == "" and t.access_log_for("inbound") == "JSON"
    assert t.access_log_filter_for("inbound") == ""


def test_span_tags_and_metrics_share_the_canonical_names() -> None:
    # No app label: Istio falls back to the workload's name, for metrics and spans alike.
    node = Node(id="r", namespace="shop", service="reviews", labels={"version": "v2"})
    tags = _tags(_for("", node=node).tracing)
    meta = pc.workload_metadata(node.labels, node.service, node.namespace).split(";")
    assert meta[2:4] == ["reviews-v2", "v2"]
    assert tags["istio.canonical_service"] == ("literal", "reviews-v2", "")
    assert tags["istio.canonical_revision"] == ("literal", "v2", "")
    labels = {
        "service.istio.io/canonical-name": "shop-reviews",
        "app.kubernetes.io/name": "k8s-reviews",
        "app": "reviews",
        "app.kubernetes.io/version": "2.0",
        "version": "v2",
    }
    assert pc.canonical_names(labels, "reviews") == ("shop-reviews", "2.0")
    del labels["service.istio.io/canonical-name"], labels["app.kubernetes.io/version"]
    assert pc.canonical_names(labels, "reviews") == ("k8s-reviews", "v2")
    assert pc.canonical_names({}, "reviews") == ("reviews", "latest")
