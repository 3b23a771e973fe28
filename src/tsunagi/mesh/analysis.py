"""Checks across resources that no single document can make: things that will fail at runtime
even though each resource is valid on its own."""

from __future__ import annotations

from collections.abc import Iterable

from pydantic.alias_generators import to_camel

from tsunagi.api import (
    DestinationRuleSpec,
    PortTrafficPolicy,
    Resource,
    TrafficPolicy,
    VirtualServiceSpec,
    fqdn,
)
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
                code = http.redirect.redirect_code if http.redirect is not None else None
                if code is not None and code not in (301, 302, 303, 307, 308):
                    out.append(
                        f"{where}: spec.http[{i}].redirect.redirectCode {code} is not supported "
                        "by Envoy (301, 302, 303, 307, 308); this route is left out, as Istio does"
                    )
                for j, m in enumerate(http.match):
                    if m.source_labels:
                        out.append(
                            f"{where}: spec.http[{i}].match[{j}].sourceLabels is not "
                            "supported yet; this match never applies"
                        )
            for field in ("tcp", "tls"):
                if getattr(spec, field, None):
                    out.append(f"{where}: spec.{field} routes are not applied yet")
        elif isinstance(spec, DestinationRuleSpec):
            out += _traffic_policy_warnings(where, spec)
    return out


def _traffic_policy_warnings(where: str, spec: DestinationRuleSpec) -> list[str]:
    """Load balancing, connection pools and outlier detection are enforced (see
    ``xds/translate/policy.py``); say which parts are not, and which deprecated fields are
    honoured under their documented meaning."""
    policies: list[tuple[str, TrafficPolicy]] = []
    if spec.traffic_policy is not None:
        policies.append(("spec.trafficPolicy", spec.traffic_policy))
    for i, s in enumerate(spec.subsets):
        if s.traffic_policy is not None:
            policies.append((f"spec.subsets[{i}].trafficPolicy", s.traffic_policy))
    out = []
    for path, tp in policies:
        for name in ("tunnel", "proxy_protocol"):
            if getattr(tp, name) is not None:
                out.append(f"{where}: {path}.{to_camel(name)} is not applied yet")
        parts: list[tuple[str, PortTrafficPolicy | TrafficPolicy]] = [(path, tp)]
        parts += [
            (f"{path}.portLevelSettings[{j}]", p) for j, p in enumerate(tp.port_level_settings)
        ]
        for at, part in parts:
            lb, pool, outlier = part.load_balancer, part.connection_pool, part.outlier_detection
            if part.tls is not None:
                out.append(f"{where}: {at}.tls is not applied yet")
            if lb is not None and lb.locality_lb_setting is not None:
                out.append(f"{where}: {at}.loadBalancer.localityLbSetting is not applied yet")
            if lb is not None and lb.simple == "PASSTHROUGH":
                out.append(
                    f"{where}: {at}.loadBalancer.simple PASSTHROUGH is not applied yet; "
                    "the default (LEAST_REQUEST) is used"
                )
            ch = lb.consistent_hash if lb is not None else None
            if ch is not None and ch.minimum_ring_size is not None:
                out.append(
                    f"{where}: {at}.loadBalancer.consistentHash.minimumRingSize is "
                    "deprecated; use consistentHash.ringHash.minimumRingSize"
                )
            if pool is not None and pool.tcp is not None and pool.tcp.idle_timeout is not None:
                out.append(f"{where}: {at}.connectionPool.tcp.idleTimeout is not applied yet")
            if outlier is not None and outlier.consecutive_errors is not None:
                out.append(
                    f"{where}: {at}.outlierDetection.consecutiveErrors is deprecated; use "
                    "consecutiveGatewayErrors (it counts 502, 503 and 504, and is applied as "
                    "such) or consecutive5xxErrors"
                )
    return out
