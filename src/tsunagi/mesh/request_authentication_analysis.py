"""What ``apply`` says of RequestAuthentications, and of routes that match JWT claims,
beyond what a single document's validation can: rules that select nothing here, and claim
routes that no gateway can serve (Istio's analyzer warns of the latter too)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from tsunagi.api import RequestAuthenticationSpec, Resource, VirtualServiceSpec
from tsunagi.api.jwt_claims import claim_path
from tsunagi.mesh import gateways as gw
from tsunagi.mesh import request_authentication as ra
from tsunagi.mesh.world import World, of_spec


def request_authentication_warnings(where: str, spec: RequestAuthenticationSpec) -> list[str]:
    """Fields stored but not applied."""
    if spec.target_ref is None and not spec.target_refs:
        return []
    field = "targetRef" if spec.target_ref is not None else "targetRefs"
    return [
        f"{where}: spec.{field} is not applied yet (it attaches to Kubernetes Gateway API "
        "gateways, which Tsunagi does not run): this RequestAuthentication selects no "
        "proxy; use selector.matchLabels instead"
    ]


def claim_routing_problems(
    world: World, resources: Iterable[Resource], running: Iterable[tuple[str, Mapping[str, str]]]
) -> list[str]:
    """Routes of the VirtualServices in ``resources`` that match ``@request.auth.claims``
    on gateways none of whose ``running`` proxies (``(namespace, labels)``) a
    RequestAuthentication selects: no token is verified there, so the match never holds."""
    proxies = list(running)
    by_key = {(g.namespace, g.name): g for g in world.gateways}
    out = []
    for vs in of_spec(resources, VirtualServiceSpec):
        claims = sorted(
            {
                key
                for http in vs.spec.http
                for m in http.match
                for key in (*m.headers, *m.without_headers)
                if claim_path(key) is not None
            }
        )
        if not claims:
            continue
        for ref in vs.spec.gateways:
            g = by_key.get(gw.gateway_ref(ref, vs.namespace))
            if g is None:
                continue  # gateway_analysis says so
            served = [(ns, ls) for ns, ls in proxies if gw.selects(g.spec.selector, ls)]
            if served and not any(ra.for_workload(world, ns, ls) for ns, ls in served):
                out.append(
                    f"VirtualService {vs.namespace}/{vs.name}: matches JWT claims "
                    f"({', '.join(claims)}) on gateway {g.namespace}/{g.name}, but no "
                    "RequestAuthentication selects its proxies, so no token is verified "
                    "there and these matches never hold; apply one whose selector matches "
                    "the gateway's labels"
                )
    return out
