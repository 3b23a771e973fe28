"""``apply`` warnings about mutual TLS that Istio users hit: PeerAuthentications that never
apply, and DestinationRules whose ``tls.mode: DISABLE`` sends plain text to workloads
that require mTLS (every such request fails)."""

from __future__ import annotations

from collections.abc import Iterable

from tsunagi.api import (
    ClientTLSSettings,
    DestinationRuleSpec,
    PeerAuthenticationSpec,
    Resource,
    fqdn,
)
from tsunagi.mesh import selectors
from tsunagi.mesh.peer_authentication import STRICT
from tsunagi.mesh.world import World, of_spec


def mtls_problems(world: World, resources: Iterable[Resource]) -> list[str]:
    """Warnings for ``resources`` (being applied), judged against ``world`` (which holds
    them)."""
    resources = list(resources)
    out = _ignored_policies(world, resources)
    # A rule and a policy conflict whichever of the two is applied last.
    if any(isinstance(r.spec, (PeerAuthenticationSpec, DestinationRuleSpec)) for r in resources):
        applied = {r.key for r in resources}
        pas = any(isinstance(r.spec, PeerAuthenticationSpec) for r in resources)
        for dr in of_spec(world.resources, DestinationRuleSpec):
            if pas or dr.key in applied:
                out += _disabled_to_strict(world, dr.namespace, dr.name, dr.spec)
    return out


def _ignored_policies(world: World, resources: list[Resource]) -> list[str]:
    root = world.mesh_security.root_namespace
    out = []
    wide = {
        (r.namespace, r.name)
        for r in world.resources
        if isinstance(r.spec, PeerAuthenticationSpec) and not selectors.narrows(r.spec.selector)
    }
    for r in of_spec(resources, PeerAuthenticationSpec):
        where = f"PeerAuthentication {r.namespace}/{r.name}"
        if selectors.narrows(r.spec.selector) and r.namespace == root:
            out.append(
                f"{where}: spec.selector is ignored in the root namespace {root!r}, as in "
                "Istio: this policy applies to no workload; put it in the workload's namespace"
            )
        elif not selectors.narrows(r.spec.selector):
            first = min(name for ns, name in wide if ns == r.namespace)
            if first != r.name:
                scope = "mesh-wide" if r.namespace == root else f"namespace {r.namespace!r}"
                out.append(
                    f"{where}: ignored: {scope} already has PeerAuthentication {first!r} "
                    "without a selector, and only one applies (Istio keeps the oldest; here "
                    "the first by name); merge them"
                )
    return out


def _port_tls(spec: DestinationRuleSpec, port: int) -> ClientTLSSettings | None:
    tp = spec.traffic_policy
    if tp is None:
        return None
    for pls in tp.port_level_settings:
        if pls.port is not None and pls.port.number == port and pls.tls is not None:
            return pls.tls
    return tp.tls


def _disabled_to_strict(
    world: World, namespace: str, name: str, spec: DestinationRuleSpec
) -> list[str]:
    host = fqdn(spec.host, namespace)
    svc = world.services.get(host)
    if svc is None:
        return []
    out = []
    for port in svc.ports:
        tls = _port_tls(spec, port)
        if tls is None or tls.mode != "DISABLE":
            continue
        strict = sorted(
            {
                f"{ep.namespace}/{ep.address}:{ep.port}"
                for ep in world.endpoints.get((host, port), ())
                if ep.registered
                and world.peer_authentications.policy_for(ep.namespace, ep.labels).mode_for(port)
                == STRICT
            }
        )
        if strict:
            out.append(
                f"DestinationRule {namespace}/{name}: tls.mode DISABLE for {host}:{port}, "
                f"whose workloads require mTLS (PeerAuthentication STRICT: {', '.join(strict)}): "
                "sidecars applying this rule send plain text and every request fails; remove "
                "the tls setting (auto mTLS) or use ISTIO_MUTUAL"
            )
    return out
