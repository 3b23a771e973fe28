"""Checks across resources that no single document can make: things that will fail at runtime
even though each resource is valid on its own."""

from __future__ import annotations

from collections.abc import Iterable

from tsunagi.api import DestinationRuleSpec, Resource, VirtualServiceSpec, fqdn
from tsunagi.mesh.world import World, of_spec


def undefined_subsets(world: World, resources: Iterable[Resource]) -> list[str]:
    """Warnings for routes in ``resources`` that name a subset no DestinationRule defines."""
    warnings = []
    for vs in of_spec(resources, VirtualServiceSpec):
        for i, http in enumerate(vs.spec.http):
            for j, dest in enumerate(http.route):
                subset = dest.destination.subset
                if not subset:
                    continue
                host = fqdn(dest.destination.host, vs.namespace)
                if world.subset_labels(host, subset) is None:
                    dr = world.destination_rules.get(host)
                    why = (
                        f"DestinationRule {dr.namespace}/{dr.name} has no subset {subset!r}"
                        if dr is not None
                        else f"no DestinationRule defines subsets for {host}"
                    )
                    warnings.append(
                        f"VirtualService {vs.namespace}/{vs.name}: "
                        f"spec.http[{i}].route[{j}].destination.subset: {why}; "
                        "requests routed there will get 503 until it exists"
                    )
    return warnings


_PENDING_KINDS = (
    "Gateway",
    "Sidecar",
    "PeerAuthentication",
    "AuthorizationPolicy",
    "WorkloadEntry",
)
_PENDING_HTTP = {
    "rewrite": "rewrite",
    "fault": "fault",
    "headers": "headers",
    "mirror": "mirror",
    "mirrors": "mirrors",
    "cors_policy": "corsPolicy",
    "delegate": "delegate",
}


def not_yet_enforced(resources: Iterable[Resource]) -> list[str]:
    """Warnings for valid fields that are stored but not yet turned into proxy config, so
    nobody believes a rule is in force when it is not."""
    out = []
    for r in resources:
        spec = r.spec
        where = f"{r.kind} {r.namespace}/{r.name}"
        if r.kind in _PENDING_KINDS:
            out.append(f"{where}: stored and validated; {r.kind} is not enforced yet")
        elif isinstance(spec, VirtualServiceSpec):
            for i, http in enumerate(spec.http):
                for attr, name in _PENDING_HTTP.items():
                    if getattr(http, attr, None):
                        out.append(f"{where}: spec.http[{i}].{name} is not applied yet")
                for j, m in enumerate(http.match):
                    if m.source_labels:
                        out.append(
                            f"{where}: spec.http[{i}].match[{j}].sourceLabels is not "
                            "supported yet; this match never applies"
                        )
            for field in ("tcp", "tls"):
                if getattr(spec, field, None):
                    out.append(f"{where}: spec.{field} routes are not applied yet")
        elif isinstance(spec, DestinationRuleSpec) and (
            spec.traffic_policy is not None
            or any(s.traffic_policy is not None for s in spec.subsets)
        ):
            out.append(f"{where}: trafficPolicy is not applied yet (subsets are)")
    return out
