"""Istio's Telemetry resources resolved for one proxy.

Three levels apply, each overriding the one before (Istio's ``applicableTelemetries``):
the root namespace's Telemetry without a selector, the proxy's namespace's without a
selector, and every one in the proxy's namespace whose ``selector.matchLabels`` the proxy's
labels contain, a later one overriding the earlier ones. Istio orders them by creation time
(and takes the oldest namespace-wide one); Tsunagi keeps none, so it orders by name
(``apply`` warns, see ``mesh/telemetry_analysis.py``). Under all three are the
mesh-wide defaults of ``tsunagi up`` (:class:`~tsunagi.mesh.telemetry.MeshTelemetry`).

Merging follows Istio's ``pilot/pkg/model/telemetry.go``: tracing fields set at a level
replace the parent's (``customTags`` as a whole), per direction (``match.mode``); access
logging is merged once per direction, from the entries matching it, keeping the providers a
level names (or inherits them) with their filter, and ``disabled`` removes them; metric
overrides apply in order per metric and direction, ``ALL_METRICS`` disabled turns a
direction off unless a later override for that direction turns something back on.

Resources with ``targetRef``/``targetRefs`` attach to Kubernetes Gateway API gateways,
which Tsunagi has none of: they apply to no sidecar (as in Istio). A ``tsunagi gateway`` is
selected like a sidecar, by its labels (Istio's gateway deployments are too)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import get_args

from tsunagi.api.checks_telemetry import ENVOY, PROMETHEUS, ZIPKIN
from tsunagi.api.common import ResourceOf
from tsunagi.api.telemetry import (
    AccessLogging,
    CustomTag,
    IstioMetric,
    Metrics,
    ProviderRef,
    TelemetrySpec,
)
from tsunagi.api.telemetry import Tracing as TracingRule
from tsunagi.mesh import telemetry as tm
from tsunagi.mesh.visibility import ROOT_NAMESPACE
from tsunagi.proxy_contract import canonical_names

STANDARD_METRICS = tuple(m for m in get_args(IstioMetric) if m != "ALL_METRICS")
_MODES = (tm.CLIENT, tm.SERVER)

Telemetry = ResourceOf[TelemetrySpec]
LabelKey = tuple[tuple[str, str], ...]


def _names(providers: Sequence[ProviderRef]) -> list[str]:
    # Istio matches provider names case-insensitively (fetchProvider uses EqualFold).
    return [p.name.lower() for p in providers]


def _modes(mode: str) -> tuple[str, ...]:
    return _MODES if mode == tm.CLIENT_AND_SERVER else (mode,)


def applies_to_sidecars(t: Telemetry) -> bool:
    """Whether ``t`` can select sidecars (``targetRef(s)`` name gateways instead)."""
    return t.spec.target_ref is None and not t.spec.target_refs


@dataclass
class _TraceSide:
    provider: str | None
    disabled: bool = False
    sampling: float | None = None
    tags: Mapping[str, CustomTag] | None = None
    use_request_id: bool = True
    istio_tags: bool = True


def _istio_tags(namespace: str, service: str, labels: Mapping[str, str]) -> list[tuple[str, str]]:
    """Istio's ``istio.*`` span tags (``buildServiceTags``), with the canonical names the
    proxy's metrics carry too."""
    name, revision = canonical_names(labels, service)
    name = name or "unknown"  # a proxy with no service or app label; Envoy needs a literal
    return [
        ("istio.canonical_revision", revision),
        ("istio.canonical_service", name),
        ("istio.cluster_id", "Kubernetes"),
        ("istio.mesh_id", "cluster.local"),
        ("istio.namespace", namespace),
    ]


def _tracing(
    mesh: tm.MeshTelemetry,
    rules: Sequence[TracingRule],
    namespace: str,
    service: str,
    labels: Mapping[str, str],
) -> dict[str, tm.Tracing | None]:
    """Tracing per side (``CLIENT``, ``SERVER``), Istio's ``Telemetries.Tracing``."""
    sides = {m: _TraceSide(ZIPKIN if mesh.collector is not None else None) for m in _MODES}
    for rule in rules:
        targets = [
            sides[m] for m in _modes(rule.match.mode if rule.match else tm.CLIENT_AND_SERVER)
        ]
        names = _names(rule.providers)
        for side in targets:
            if names:
                # only the built-in collector exists; another name reports nowhere
                side.provider = names[0] if names[0] == ZIPKIN else None
            if rule.disable_span_reporting is not None:
                side.disabled = rule.disable_span_reporting
            if rule.custom_tags is not None:
                side.tags = rule.custom_tags
            if rule.random_sampling_percentage is not None:
                side.sampling = rule.random_sampling_percentage
            if rule.use_request_id_for_trace_sampling is not None:
                side.use_request_id = rule.use_request_id_for_trace_sampling
            if rule.enable_istio_tags is not None:
                side.istio_tags = rule.enable_istio_tags
    out: dict[str, tm.Tracing | None] = {}
    for mode, side in sides.items():
        sampling = mesh.trace_sampling if side.sampling is None else side.sampling
        # `tsunagi up --trace-sampling 0` leaves the tracer out altogether where no
        # Telemetry asks for tracing: with a tracer, Envoy makes (and propagates) a span for
        # every request, sampled or not, which costs ~10 % of its CPU per request
        # (docs/benchmarks.md). A Telemetry's explicit 0 keeps the tracer, as in Istio: its
        # "not sampled" decision travels with the request, so later hops do not trace it.
        off = side.sampling is None and mesh.trace_sampling == 0
        if side.disabled or side.provider is None or mesh.collector is None or off:
            out[mode] = None
            continue
        tags: list[tuple[str, str, str, str]] = []
        if side.istio_tags:
            tags += [(k, "literal", v, "") for k, v in _istio_tags(namespace, service, labels)]
        for name, tag in (side.tags or {}).items():
            if tag.formatter is None:  # not applied yet (apply warns)
                tags.append(_custom_tag(name, tag))
        out[mode] = tm.Tracing(
            sampling=sampling,
            collector=mesh.collector,
            custom_tags=tuple(sorted(tags)),
            use_request_id=side.use_request_id,
        )
    return out


def _custom_tag(name: str, tag: CustomTag) -> tuple[str, str, str, str]:
    if tag.literal is not None:
        return (name, "literal", tag.literal.value, "")
    if tag.environment is not None:
        return (name, "environment", tag.environment.name, tag.environment.default_value)
    if tag.header is not None:
        return (name, "header", tag.header.name, tag.header.default_value)
    raise ValueError(f"custom tag {name!r} has no type")  # checks_telemetry refuses it


def _access_log(
    mesh: tm.MeshTelemetry, levels: Sequence[Sequence[AccessLogging]]
) -> dict[str, str | None]:
    """Per side: the ``envoy`` provider's filter ("" none) if it logs, else ``None``
    (Istio's ``mergeLogs``, run once per side: an entry whose ``match.mode`` names the other
    side does not count, neither for which providers are in scope nor for the filter)."""
    defaults = [ENVOY] if mesh.access_log else []
    levels = [lv for lv in levels if lv]
    if not levels:
        on: str | None = "" if defaults else None
        return {m: on for m in _MODES}
    return {mode: _access_log_side(defaults, levels, mode) for mode in _MODES}


def _access_log_side(
    defaults: list[str], levels: Sequence[Sequence[AccessLogging]], mode: str
) -> str | None:
    def matches(entry: AccessLogging) -> bool:
        return mode in _modes(entry.match.mode if entry.match else tm.CLIENT_AND_SERVER)

    in_scope = list(defaults)
    filters: dict[str, str] = {}
    for level in levels:
        named: list[str] = []
        for entry in filter(matches, level):
            for p in _names(entry.providers):
                named.append(p)
                filters[p] = entry.filter.expression if entry.filter else ""
        if named:
            in_scope = named
    providers: dict[str, str | None] = {}  # None: disabled
    parent = list(defaults)
    for level in levels:
        for entry in level:
            names = _names(entry.providers) or parent
            parent = names
            if not matches(entry):
                continue
            for p in names:
                if p in in_scope:
                    providers[p] = None if entry.disabled else filters.get(p, "")
    if not providers:
        # Nothing speaks for this side: Istio falls back to the mesh's own access log
        # (``meshConfig.accessLogFile``, here ``tsunagi up --access-log``).
        return "" if defaults else None
    return providers.get(ENVOY)


@dataclass
class _MetricState:
    disabled: bool | None = None
    tags: dict[str, str] = field(default_factory=dict)


def _metrics(rules: Sequence[Metrics]) -> tuple[tm.MetricOverride, ...]:
    """The ``prometheus`` provider's overrides, normalized to one entry per metric and side
    (Istio's ``mergeMetrics``)."""
    in_scope = [PROMETHEUS]
    for rule in rules:
        if names := _names(rule.providers):
            in_scope = names
    if rules and PROMETHEUS not in in_scope:
        return (tm.MetricOverride(disabled=True),)
    state: dict[tuple[str, str], _MetricState] = {}
    # Per side, as Istio keys it by provider and mode (only ``prometheus`` is in scope here).
    all_disabled: set[str] = set()
    parent = [PROMETHEUS]
    for rule in rules:
        names = _names(rule.providers) or parent
        parent = names
        if PROMETHEUS not in names:
            continue
        for o in rule.overrides:
            match = o.match
            metric = (match.custom_metric or match.metric or "ALL_METRICS") if match else ""
            metric = metric or "ALL_METRICS"
            modes = _modes(match.mode if match else tm.CLIENT_AND_SERVER)
            if metric == "ALL_METRICS" and o.disabled:
                all_disabled.update(modes)
                continue
            all_disabled.difference_update(modes)  # a later override turns the side back on
            metrics = STANDARD_METRICS if metric == "ALL_METRICS" else (metric,)
            for mode in modes:
                for m in metrics:
                    s = state.setdefault((m, mode), _MetricState())
                    if o.disabled is not None:
                        s.disabled = o.disabled
                    for tag, t in o.tag_overrides.items():
                        s.tags[tag] = t.operation
    if all_disabled == set(_MODES):
        return (tm.MetricOverride(disabled=True),)
    # A side with every metric off gets one entry (accesslog.py then leaves its metrics
    # logger out); the other side keeps its per-metric entries.
    off = tuple(tm.MetricOverride(mode=m, disabled=True) for m in _MODES if m in all_disabled)
    return off + tuple(
        tm.MetricOverride(
            metric=m,
            mode=mode,
            disabled=bool(s.disabled),
            removed_tags=tuple(sorted(k for k, op in s.tags.items() if op == "REMOVE")),
        )
        for (m, mode), s in sorted(state.items())
        if mode not in all_disabled
        and (s.disabled or any(op == "REMOVE" for op in s.tags.values()))
    )


def resolve(
    mesh: tm.MeshTelemetry,
    chain: Sequence[TelemetrySpec],
    namespace: str,
    service: str = "",
    labels: Mapping[str, str] | None = None,
) -> tm.ProxyTelemetry:
    """A proxy's telemetry from the Telemetry specs that apply to it, parent first."""
    labels = labels or {}
    tracing = _tracing(mesh, [t for s in chain for t in s.tracing], namespace, service, labels)
    logs = _access_log(mesh, [s.access_logging for s in chain])
    client, server = logs[tm.CLIENT], logs[tm.SERVER]
    if client is not None and server is not None:
        mode = tm.CLIENT_AND_SERVER
    else:
        mode = tm.CLIENT if client is not None else tm.SERVER
    on = client if client is not None else server
    return tm.ProxyTelemetry(
        access_log=(mesh.access_log or tm.ACCESS_LOG_TEXT) if on is not None else "",
        access_log_filter=on or "",
        # Istio takes each side's filter from the entries that match that side.
        server_access_log_filter=server if server != on else None,
        tracing=tracing[tm.CLIENT],
        server_tracing=tracing[tm.SERVER],
        metric_overrides=_metrics([m for s in chain for m in s.metrics]),
        access_log_mode=mode,
    )


class TelemetryPolicies:
    """The Telemetry resources of one World, answering per proxy. Answers are memoized by
    (namespace, service, labels): at every push each proxy asks, and proxies alike share
    one answer."""

    def __init__(self, mesh: tm.MeshTelemetry, telemetries: Iterable[Telemetry]) -> None:
        self.mesh = mesh
        self._by_namespace: dict[str, list[Telemetry]] = {}
        for t in sorted(telemetries, key=lambda t: (t.namespace, t.name)):
            if applies_to_sidecars(t):
                self._by_namespace.setdefault(t.namespace, []).append(t)
        self._memo: dict[tuple[str, str, LabelKey], tm.ProxyTelemetry] = {}

    def namespace_wide(self, namespace: str) -> Telemetry | None:
        """The namespace's Telemetry without a selector (the first by name)."""
        for t in self._by_namespace.get(namespace, ()):
            if t.spec.selector is None or not t.spec.selector.match_labels:
                return t
        return None

    def chain(self, namespace: str, labels: Mapping[str, str]) -> list[Telemetry]:
        """The Telemetry resources that apply to a proxy, parent first: the root
        namespace's and the proxy's namespace-wide ones, then every one whose selector
        matches, in order (Istio's ``applicableTelemetries``)."""
        out = []
        if namespace != ROOT_NAMESPACE and (root := self.namespace_wide(ROOT_NAMESPACE)):
            out.append(root)
        if ns := self.namespace_wide(namespace):
            out.append(ns)
        for t in self._by_namespace.get(namespace, ()):
            sel = t.spec.selector.match_labels if t.spec.selector is not None else {}
            if sel and all(labels.get(k) == v for k, v in sel.items()):
                out.append(t)  # every match applies, a later one over the earlier ones
        return out

    def for_proxy(
        self, namespace: str, service: str, labels: Mapping[str, str]
    ) -> tm.ProxyTelemetry:
        """What a proxy in ``namespace`` with ``labels`` reports."""
        key = (namespace, service, tuple(sorted(labels.items())))
        found = self._memo.get(key)
        if found is None:
            chain = [t.spec for t in self.chain(namespace, labels)]
            found = self._memo[key] = resolve(self.mesh, chain, namespace, service, labels)
        return found
