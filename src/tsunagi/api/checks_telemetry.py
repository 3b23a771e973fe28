"""Istio's validation rules for telemetry.istio.io ``Telemetry``, and which provider names
Tsunagi knows (Istio's come from MeshConfig ``extensionProviders``; Tsunagi's are built in)."""

from __future__ import annotations

from collections.abc import Iterator

from .cel import check_expression
from .checks_common import Issue, Path, check_policy_target
from .names import check_header_name
from .telemetry import CustomTag, MetricsOverrides, TelemetrySpec

ZIPKIN = "zipkin"
"""The control plane's trace collector (``tsunagi up --zipkin-port``)."""
ENVOY = "envoy"
"""Envoy's file access log: the sidecar's output (``tsunagi up --access-log``)."""
PROMETHEUS = "prometheus"
"""The sidecar's Istio-standard metrics on its agent's ``/stats/prometheus``."""
TRACING_PROVIDERS = (ZIPKIN,)
ACCESS_LOG_PROVIDERS = (ENVOY,)
METRICS_PROVIDERS = (PROMETHEUS,)


def check_telemetry(spec: TelemetrySpec) -> Iterator[Issue]:
    """Istio's Telemetry rules: one of selector and targetRef(s), one provider per tracing
    entry, well-formed custom tags and metric overrides; and access log filters Envoy can
    load (Istio leaves those to Envoy, which then refuses the whole listener)."""
    yield from check_policy_target(spec.selector, spec.target_ref, spec.target_refs)
    for i, t in enumerate(spec.tracing):
        path: Path = ("tracing", i)
        yield from _check_providers(t.providers, (*path, "providers"))
        if len(t.providers) > 1:
            yield Issue(
                (*path, "providers"),
                "multiple providers are not supported in one tracing entry; name one",
            )
        for name, tag in (t.custom_tags or {}).items():
            yield from _check_custom_tag(name, tag, (*path, "customTags", name))
    for i, m in enumerate(spec.metrics):
        yield from _check_providers(m.providers, ("metrics", i, "providers"))
        if m.reporting_interval is not None and m.reporting_interval <= 0:
            yield Issue(("metrics", i, "reportingInterval"), "must be a positive duration")
        for j, o in enumerate(m.overrides):
            yield from _check_override(o, ("metrics", i, "overrides", j))
    for i, a in enumerate(spec.access_logging):
        yield from _check_providers(a.providers, ("accessLogging", i, "providers"))
        if a.filter is not None:
            where: Path = ("accessLogging", i, "filter", "expression")
            if not a.filter.expression.strip():
                yield Issue(where, "must not be empty; omit filter")
            elif (why := check_expression(a.filter.expression)) is not None:
                yield Issue(where, why)


def _check_providers(providers: tuple[object, ...], path: Path) -> Iterator[Issue]:
    for i, p in enumerate(providers):
        if not getattr(p, "name", ""):
            yield Issue((*path, i, "name"), "provider name is required")


_TAG_KINDS = ("literal", "environment", "header", "formatter")


def _check_custom_tag(name: str, tag: CustomTag, path: Path) -> Iterator[Issue]:
    if not name:
        yield Issue(path, "tag name must not be empty")
    kinds = [k for k in _TAG_KINDS if getattr(tag, k) is not None]
    if len(kinds) != 1:
        got = ", ".join(kinds) if kinds else "none"
        yield Issue(path, f"set exactly one of {', '.join(_TAG_KINDS)} (got {got})")
        return
    if tag.formatter is not None and not tag.formatter.value:
        yield Issue((*path, "formatter", "value"), "value is required")
    if tag.literal is not None and not tag.literal.value:
        yield Issue((*path, "literal", "value"), "value is required")
    if tag.environment is not None and not tag.environment.name:
        yield Issue((*path, "environment", "name"), "name is required")
    if tag.header is not None:
        if not tag.header.name:
            yield Issue((*path, "header", "name"), "name is required")
        elif (err := check_header_name(tag.header.name)) is not None:
            yield Issue((*path, "header", "name"), err)


def _check_override(o: MetricsOverrides, path: Path) -> Iterator[Issue]:
    if o.match is not None and o.match.metric is not None and o.match.custom_metric is not None:
        yield Issue((*path, "match"), "only one of metric and customMetric may be set")
    if o.match is not None and o.match.custom_metric == "":
        yield Issue((*path, "match", "customMetric"), "must not be empty")
    for tag, t in o.tag_overrides.items():
        where: Path = (*path, "tagOverrides", tag)
        if not tag:
            yield Issue(where, "tag name must not be empty")
        if t.operation == "REMOVE" and t.value is not None:
            yield Issue((*where, "value"), "value must not be set when operation is REMOVE")
        if t.operation == "UPSERT" and not t.value:
            yield Issue((*where, "value"), "value must be set when operation is UPSERT")
