"""``apply`` warnings about the Secrets a Gateway server's ``credentialName`` names: Istio's
IST0101 when the Secret is missing, and a Secret that gives the server no certificate, or no
CA where the server verifies clients.

Only servers a gateway serves with a certificate of its own are judged: those that end TLS
(SIMPLE, MUTUAL, OPTIONAL_MUTUAL; not PASSTHROUGH, which forwards the client's TLS untouched),
that are supported, and that are not left out for a port conflict (which has its own warning).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

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
    every = world.gateways
    # Each running gateway: its namespace, labels, and the servers it leaves out because
    # another of its servers holds their port (merged once per gateway, not per server).
    proxies = [(ns, labels, _left_out(every, labels)) for ns, labels in running or ()]
    out: list[str] = []
    for g in of_spec(resources, GatewaySpec):
        serving = [
            (ns, left) for ns, labels, left in proxies if gw.selects(g.spec.selector, labels)
        ]
        for i, server in enumerate(g.spec.servers):
            if server.tls is None or not ports.terminates(server):
                continue
            if ports.unsupported(server) is not None:
                continue  # not served at all; its own warning says why
            namespaces = (
                sorted({ns for ns, left in serving if (g.key, i) not in left})
                if serving
                else [g.namespace]
            )
            mode = ports.tls_mode(server)
            field = "credentialNames" if server.tls.credential_names else "credentialName"
            for j, name in enumerate(ports.credentials(server)):
                at = f"Gateway {g.namespace}/{g.name}: spec.servers[{i}].tls.{field}"
                at += f"[{j}]" if server.tls.credential_names else ""
                # Istio takes the CA of a verifying server from its first credential
                needs_ca = mode in VERIFYING_MODES and j == 0
                for ns in namespaces:
                    out += _warnings(world, at, name, ns, mode, needs_ca, not serving)
    return out


def _left_out(
    every: Sequence[ResourceOf[GatewaySpec]], labels: Mapping[str, str]
) -> set[tuple[tuple[str, str, str], int]]:
    """``(Gateway key, server index)`` of each server a gateway with ``labels`` leaves out."""
    _, left_out = ports.merge_ports(gw.selected(every, labels))
    return {(lo.gateway.key, lo.index) for lo in left_out}


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
