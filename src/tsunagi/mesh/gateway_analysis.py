"""``apply`` warnings about Gateways and the VirtualServices bound to them, with Istio's
analyzer codes (``istioctl analyze``), so a user can look them up in Istio's docs."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from tsunagi.api import GatewaySpec, Resource, ResourceOf, Server, VirtualServiceSpec
from tsunagi.mesh import gateway_ports as ports
from tsunagi.mesh import gateways as gw
from tsunagi.mesh.vs_host_analysis import mesh_host_conflicts
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
    every = world.gateways
    by_key = {(g.namespace, g.name): g for g in every}
    out: list[str] = []
    for vs in of_spec(resources, VirtualServiceSpec):
        out += _binding_problems(vs, by_key)
    out += mesh_host_conflicts(world, resources)  # the mesh gateway's IST0109
    every_vs = world.virtual_services_in_order
    for g in of_spec(resources, GatewaySpec):
        out += _server_warnings(g)
        out += _unrouted(g, every_vs)
        if labels is not None and not any(gw.selects(g.spec.selector, ls) for ls in labels):
            selector = ",".join(f"{k}={v}" for k, v in sorted(g.spec.selector.items()))
            out.append(
                f"Gateway {g.namespace}/{g.name}: spec.selector: [IST0101] Referenced "
                f'selector not found: "{selector}"; no running gateway serves it yet (start '
                f"one with `tsunagi gateway --name NAME "
                + " ".join(f"--label {k}={v}" for k, v in sorted(g.spec.selector.items()))
                + "`)"
            )
        out += _left_out(g, every, labels)
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
        why = ports.unsupported(s)
        if why is not None:
            out.append(f"{at}: {why}")
        out += _tls_field_warnings(at, s)
        for field in ("bind", "default_endpoint"):
            if getattr(s, field) is not None:
                name = "defaultEndpoint" if field == "default_endpoint" else field
                out.append(f"{where}: spec.servers[{i}].{name} is not applied yet")
    return out


def _tls_field_warnings(at: str, s: Server) -> list[str]:
    """What of a served TLS server's settings Envoy does not get, as Istio warns."""
    tls = s.tls
    if tls is None or ports.unsupported(s) is not None or not ports.terminates(s):
        return []
    out = []
    _, ignored = ports.cipher_suites(s)
    if ignored:
        out.append(
            f"{at}: tls.cipherSuites: ignoring unknown or repeated cipher suites {ignored}, as "
            f"Istio does; known ones: {', '.join(sorted(ports.CIPHER_SUITES))}, ALL, and "
            "OpenSSL expressions ([A|B], -A, !A, +A)"
        )
    if tls.min_protocol_version in ("TLSV1_0", "TLSV1_1") and not tls.cipher_suites:
        out.append(
            f"{at}: tls.minProtocolVersion {tls.min_protocol_version}: TLS versions below "
            "TLSV1_2 need compatible ciphers set in cipherSuites (the default ones are not)"
        )
    if tls.ca_certificates:
        first = ports.credentials(s)[0]
        out.append(
            f"{at}: tls.caCertificates (a file) is not applied; the client CA comes from "
            f"the {first}-cacert secret or the ca.crt of {first}"
        )
    return out


def _unrouted(
    g: ResourceOf[GatewaySpec], every_vs: Sequence[ResourceOf[VirtualServiceSpec]]
) -> list[str]:
    """TCP servers, TLS servers that end the TLS, and PASSTHROUGH servers forward along
    routes of the VirtualServices bound to them (``tcp:``, ``tls:``); with none, their
    connections have nowhere to go, and Envoy gets no filter chain for them."""
    out = []
    for i, s in enumerate(g.spec.servers):
        kind = ports.server_kind(s)
        if kind == "http" or ports.unsupported(s) is not None:
            continue
        if ports.https_table(s):
            continue  # HTTP routes, as on a plain-text port (IST0132 covers their hosts)
        field = "tls" if kind == "tls" and not ports.terminates(s) else "tcp"
        bound = gw.server_bindings(g, s, every_vs)
        if not any(getattr(b.vs.spec, field) for b in bound):
            at = f"Gateway {g.namespace}/{g.name}: spec.servers[{i}]"
            out.append(
                f"{at} ({gw.server_protocol(s)} {s.port.number}): no VirtualService bound to "
                f"it (gateways: [{g.name}], a host it serves) has {field}: routes, so its "
                f"connections have nowhere to go and the gateway closes them (the port "
                f"stays closed if nothing else serves it). Add {field}: routes"
            )
    return out


def _left_out(
    g: ResourceOf[GatewaySpec],
    every: Sequence[ResourceOf[GatewaySpec]],
    running: list[dict[str, str]] | None,
) -> list[str]:
    """Servers of ``g`` that a gateway proxy serving it leaves out (another server holds
    their port or name), judged for each running proxy that serves ``g`` (else for the
    Gateways with ``g``'s selector)."""
    groups = [gw.selected(every, ls) for ls in running or () if gw.selects(g.spec.selector, ls)]
    if not groups:
        groups = [[o for o in every if dict(o.spec.selector) == dict(g.spec.selector)]]
    out: dict[str, None] = {}
    for group in groups:
        for lo in ports.merge_ports(group)[1]:
            if lo.gateway.key == g.key:
                s = g.spec.servers[lo.index]
                where = f"Gateway {g.namespace}/{g.name}: spec.servers[{lo.index}]"
                out[f"{where} ({gw.server_protocol(s)} {s.port.number}): {lo.reason}"] = None
    return list(out)


def _conflicts(g: ResourceOf[GatewaySpec], every: Sequence[ResourceOf[GatewaySpec]]) -> list[str]:
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
