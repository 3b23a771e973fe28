"""``apply`` warnings about the Secrets a Gateway server's ``credentialName`` names: Istio's
IST0101 when the Secret is missing, and a Secret that gives the server no certificate, or no
CA where the server verifies clients.

Only servers a gateway serves with a certificate of its own are judged: those that end TLS
(SIMPLE, MUTUAL, OPTIONAL_MUTUAL; not PASSTHROUGH, which forwards the client's TLS untouched),
that are supported, and that are not left out for a port conflict (which has its own warning).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from tsunagi.api import GatewaySpec, Resource, ResourceOf
from tsunagi.mesh import gateway_ports as ports
from tsunagi.mesh import gateways as gw
from tsunagi.mesh.world import World, of_spec

VERIFYING_MODES = frozenset({"MUTUAL", "OPTIONAL_MUTUAL"})
"""Modes that verify client certificates, so need a CA (OPTIONAL_MUTUAL: those that send one)."""


def credential_problems(
    world: World,
    resources: Iterable[Resource],
    running: Iterable[tuple[str, Mapping[str, str]]] | None = None,
) -> list[str]:
    """Warnings for the Gateways in ``resources`` whose servers' credentials give their
    gateways nothing, judged in the namespace of each running gateway that serves them (a
    gateway reads only its own namespace's Secrets); with none running, in the Gateway's own
    namespace. ``running``: ``(namespace, labels)`` of each gateway proxy."""
    proxies = [(ns, dict(labels)) for ns, labels in running or ()]
    every = gw.gateways_of(world.resources)
    out: list[str] = []
    for g in of_spec(resources, GatewaySpec):
        serving = [(ns, ls) for ns, ls in proxies if gw.selects(g.spec.selector, ls)]
        for i, server in enumerate(g.spec.servers):
            if server.tls is None or not ports.terminates(server):
                continue
            if ports.unsupported(server) is not None:
                continue  # not served at all; its own warning says why
            names = ports.credentials(server)
            field = "credentialNames" if server.tls.credential_names else "credentialName"
            # Istio takes the CA of a verifying server from its first credential
            needs_ca = ports.tls_mode(server) in VERIFYING_MODES
            namespaces = _serving_namespaces(g, i, serving, every)
            for j, name in enumerate(names):
                at = f"Gateway {g.namespace}/{g.name}: spec.servers[{i}].tls.{field}"
                at += f"[{j}]" if server.tls.credential_names else ""
                for ns in namespaces or ([g.namespace] if not serving else []):
                    out += _warnings(
                        world,
                        at,
                        name,
                        ns,
                        ports.tls_mode(server),
                        needs_ca and j == 0,
                        not serving,
                    )
    return out


def _serving_namespaces(
    g: ResourceOf[GatewaySpec],
    index: int,
    serving: list[tuple[str, dict[str, str]]],
    every: list[ResourceOf[GatewaySpec]],
) -> list[str]:
    """The namespaces of the running gateways that serve ``g``'s server ``index`` (a
    gateway leaves out a server whose port another of its servers holds)."""
    out: dict[str, None] = {}
    for ns, labels in serving:
        _, left_out = ports.merge_ports(gw.selected(every, labels))
        if not any(lo.gateway.key == g.key and lo.index == index for lo in left_out):
            out[ns] = None
    return sorted(out)


def _warnings(
    world: World, at: str, name: str, namespace: str, mode: str, needs_ca: bool, assumed: bool
) -> list[str]:
    where = (
        f"namespace {namespace} (no running gateway serves this Gateway yet, so its own "
        "namespace was looked in)"
        if assumed
        else f"namespace {namespace}, where a gateway that serves this Gateway runs"
    )
    cred = world.credentials.get((namespace, name))
    if cred is None:
        return [
            f'{at}: [IST0101] Referenced credentialName not found: "{name}"; no Secret '
            f"{name} in {where}, so the server has no certificate. Create it with `tsunagi "
            f"create secret tls {name} --cert FILE --key FILE -n {namespace}`"
        ]
    out = []
    if not cred.has_certificate:
        out.append(
            f"{at}: Secret {namespace}/{name} holds no certificate and key (Istio reads "
            "cert and key, or tls.crt and tls.key), so the server has no certificate"
        )
    if needs_ca and not cred.ca:
        out.append(
            f"{at}: {mode} TLS verifies client certificates with a CA, but neither Secret "
            f"{namespace}/{name} (cacert or ca.crt) nor {namespace}/{name}-cacert holds one; "
            f"add it (`tsunagi create secret tls {name} ... --ca FILE`)"
        )
    return out
