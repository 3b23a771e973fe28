"""``apply`` warnings for Telemetry resources: fields stored but not applied, providers
Tsunagi does not have, and several resources competing for the same proxies."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from tsunagi.api import Resource
from tsunagi.api.checks_telemetry import (
    ACCESS_LOG_PROVIDERS,
    METRICS_PROVIDERS,
    TRACING_PROVIDERS,
)
from tsunagi.api.telemetry import ProviderRef, TelemetrySpec
from tsunagi.mesh.telemetry_policy import STANDARD_METRICS, Telemetry, applies_to_sidecars
from tsunagi.mesh.world import World, of_spec


def _unknown(
    where: str, path: str, providers: tuple[ProviderRef, ...], known: tuple[str, ...], then: str
) -> list[str]:
    return [
        f"{where}: {path}.providers[{i}].name {p.name!r} is not a provider Tsunagi has "
        f"(built in: {', '.join(known)}); {then}"
        for i, p in enumerate(providers)
        if p.name.lower() not in known
    ]


def telemetry_warnings(where: str, spec: TelemetrySpec) -> list[str]:
    """What in one Telemetry is stored but not applied, or names what does not exist."""
    out = []
    if spec.target_ref is not None or spec.target_refs:
        field = "targetRef" if spec.target_ref is not None else "targetRefs"
        out.append(
            f"{where}: spec.{field} is not applied yet (it attaches to Kubernetes Gateway API "
            "gateways and services, which Tsunagi has none of); this Telemetry applies to no "
            "proxy: select a `tsunagi gateway` by its labels with spec.selector instead"
        )
    for i, t in enumerate(spec.tracing):
        for name, ctag in (t.custom_tags or {}).items():
            if ctag.formatter is not None:
                out.append(
                    f"{where}: spec.tracing[{i}].customTags.{name}.formatter is not applied "
                    "yet; use literal, environment or header"
                )
        out += _unknown(
            where,
            f"spec.tracing[{i}]",
            t.providers,
            TRACING_PROVIDERS,
            "the workloads it selects report no spans",
        )
    for i, a in enumerate(spec.access_logging):
        out += _unknown(
            where, f"spec.accessLogging[{i}]", a.providers, ACCESS_LOG_PROVIDERS, "it is ignored"
        )
    for i, m in enumerate(spec.metrics):
        path = f"spec.metrics[{i}]"
        out += _unknown(where, path, m.providers, METRICS_PROVIDERS, "it is ignored")
        if m.reporting_interval is not None:
            out.append(f"{where}: {path}.reportingInterval is not applied yet")
        for j, o in enumerate(m.overrides):
            at = f"{path}.overrides[{j}]"
            custom = o.match.custom_metric if o.match is not None else None
            if custom and custom not in STANDARD_METRICS:
                out.append(
                    f"{where}: {at}.match.customMetric {custom!r}: Tsunagi's sidecars report "
                    "only Istio's standard metrics; this override matches nothing"
                )
            for tag, op in o.tag_overrides.items():
                if op.operation == "UPSERT":
                    out.append(
                        f"{where}: {at}.tagOverrides.{tag}: UPSERT (a label from an "
                        "expression) is not applied yet; REMOVE is"
                    )
    return out


def _selector(t: Telemetry) -> Mapping[str, str]:
    return t.spec.selector.match_labels if t.spec.selector is not None else {}


def _may_overlap(a: Mapping[str, str], b: Mapping[str, str]) -> bool:
    """Whether one workload can carry both label sets (no key with two values)."""
    return all(b.get(k, v) == v for k, v in a.items())


def telemetry_conflicts(world: World, applied: Iterable[Resource]) -> list[str]:
    """Warnings for Telemetries in ``applied`` that compete with another at the same level:
    of two namespace-wide ones Istio uses the oldest, Tsunagi the first by name; workload
    ones that may select the same workload all apply, Istio's in creation order, Tsunagi's
    in name order, so where both set a field the two may disagree."""
    everything = [t for t in of_spec(world.resources, TelemetrySpec) if applies_to_sidecars(t)]
    out = []
    for t in of_spec(applied, TelemetrySpec):
        if not applies_to_sidecars(t):
            continue
        mine = _selector(t)
        rivals = sorted(
            o.name
            for o in everything
            if o.namespace == t.namespace
            and o.name != t.name
            and bool(_selector(o)) == bool(mine)
            and (not mine or _may_overlap(mine, _selector(o)))
        )
        if not rivals:
            continue
        first = min([t.name, *rivals])
        if mine:
            out.append(
                f"Telemetry {t.namespace}/{t.name}: may select the same workloads as "
                f"{', '.join(rivals)}; all apply to such a workload, a later one over the "
                "earlier ones where both set a field: Istio orders them by creation time, "
                "Tsunagi by name. Merge them, or set each field in one only"
            )
            continue
        out.append(
            f"Telemetry {t.namespace}/{t.name}: is a second namespace-wide Telemetry (no "
            f"selector) beside {', '.join(rivals)}; only one applies: Istio takes the oldest, "
            f"Tsunagi the first by name ({first}). Merge them into one"
        )
    return out
