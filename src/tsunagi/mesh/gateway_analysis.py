"""``apply`` warnings about Gateways and the VirtualServices bound to them, with Istio's
analyzer codes (``istioctl analyze``), so a user can look them up in Istio's docs."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from tsunagi.api import GatewaySpec, Resource, ResourceOf, VirtualServiceSpec
from tsunagi.mesh import gateways as gw
from tsunagi.mesh.world import World, of_spec


def gateway_problems(
    world: World,
    resources: Iterable[Resource],
    running: Iterable[Mapping[str, str]] | None = None,
) -> list[str]:
    """Warnings for the Gateways and VirtualServices in ``resources``, judged against
    ``world`` (the config as it will be once they are applied) and, when given, the labels
    of the ``running`` gateway proxies (registered by ``tsunagi gateway``)."""
    labels = None if running is None else [dict(r) for r in running]
    resources = list(resources)
    every = gw.gateways_of(world.resources)
    by_key = {(g.namespace, g.name): g for g in every}
    out: list[str] = []
    for vs in of_spec(resources, VirtualServiceSpec):
        out += _binding_problems(vs, by_key)
    for g in of_spec(resources, GatewaySpec):
        out += _server_warnings(g)
        if labels is not None and not any(gw.selects(g.spec.selector, ls) for ls in labels):
            selector = ",".join(f"{k}={v}" for k, v in sorted(g.spec.selector.items()))
            out.append(
                f"Gateway {g.namespace}/{g.name}: spec.selector: [IST0101] Referenced "
                f'selector not found: "{selector}"; no running gateway serves it yet (start '
                f"one with `tsunagi gateway --name NAME "
                + " ".join(f"--label {k}={v}" for k, v in sorted(g.spec.selector.items()))
                + "`)"
            )
        out += _conflicts(g, every)
    return out


def _binding_problems(
    vs: ResourceOf[VirtualServiceSpec], gateways: dict[tuple[str, str], ResourceOf[GatewaySpec]]
) -> list[str]:
    where = f"VirtualService {vs.namespace}/{vs.name}"
    out = []
    for i, ref in enumerate(vs.spec.gateways):
        if ref == gw.MESH:
            continue
        key = gw.gateway_ref(ref, vs.namespace)
        g = gateways.get(key)
        if g is None:
            out.append(
                f"{where}: spec.gateways[{i}]: [IST0101] Referenced gateway not found: "
                f'"{ref}"; no gateway serves these routes until Gateway {key[0]}/{key[1]} '
                "is applied"
            )
            continue
        bound = {
            h for s in g.spec.servers for b in gw.server_bindings(g, s, [vs]) for h in b.vs_hosts
        }
        missing = [h for h in gw.vs_hosts(vs) if h not in bound]
        if missing:
            out.append(
                f"{where}: [IST0132] one or more host {missing} defined in VirtualService "
                f"{vs.namespace}/{vs.name} not found in Gateway {g.namespace}/{g.name}; "
                "requests for them at that gateway get 404. Add them to a server's hosts "
                "(and check its namespace/host form and the VirtualService's exportTo)"
            )
    return out


def _server_warnings(g: ResourceOf[GatewaySpec]) -> list[str]:
    where = f"Gateway {g.namespace}/{g.name}"
    out = []
    for i, s in enumerate(g.spec.servers):
        proto = gw.server_protocol(s)
        at = f"{where}: spec.servers[{i}] ({proto} {s.port.number})"
        if proto in ("HTTPS", "TLS"):
            out.append(f"{at}: TLS at the gateway is not applied yet; no listener is opened")
        elif not gw.is_http_server(s):
            out.append(f"{at}: {proto} servers are not applied yet; no listener is opened")
        for field in ("bind", "default_endpoint"):
            if getattr(s, field) is not None:
                name = "defaultEndpoint" if field == "default_endpoint" else field
                out.append(f"{where}: spec.servers[{i}].{name} is not applied yet")
    return out


def _conflicts(g: ResourceOf[GatewaySpec], every: list[ResourceOf[GatewaySpec]]) -> list[str]:
    """Istio's IST0145: another Gateway with the same selector serves an overlapping host on
    the same port; which one a gateway proxy uses for that host is not up to the user."""
    out = []
    selector = ",".join(f"{k}={v}" for k, v in sorted(g.spec.selector.items()))
    for other in every:
        if other.key == g.key or dict(other.spec.selector) != dict(g.spec.selector):
            continue
        for s in g.spec.servers:
            hosts = sorted(
                {
                    both
                    for o in other.spec.servers
                    if o.port.number == s.port.number
                    for a in s.hosts
                    for b in o.hosts
                    if (both := gw.intersect(gw.server_host(a, "")[1], gw.server_host(b, "")[1]))
                }
            )
            if hosts:
                out.append(
                    f"Gateway {g.namespace}/{g.name}: [IST0145] Conflict with gateways "
                    f"{other.namespace}/{other.name} (workload selector {selector}, port "
                    f"{s.port.number}, hosts {', '.join(hosts)}); the gateway merges the "
                    "routes bound to both for those hosts, in Gateway order. Merge the "
                    "servers into one Gateway or give them distinct hosts"
                )
                break
    return out
