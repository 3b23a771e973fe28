"""Istio's Gateway binding rules: which Gateways a gateway proxy serves, which
VirtualServices bind to a Gateway's server, and the hosts they serve there.

Pure functions of the applied resources, shared by translation (``xds/translate/gateway.py``)
and ``apply``'s analysis (``mesh/analysis.py``), so that what a warning says is what Envoy runs.

Istio's rules, as its docs and pilot's gateway code have them:

- a Gateway applies to every gateway proxy whose labels include its ``selector``, in any
  namespace (Istio's default; ``PILOT_SCOPE_GATEWAY_TO_NAMESPACE`` is off);
- a VirtualService binds with ``gateways:`` entries ``name`` (in the VirtualService's own
  namespace) or ``namespace/name``; ``mesh`` means the sidecars; no entry means ``mesh`` only;
- a server host is ``[namespace/]dnsName``: the namespace part says whose VirtualServices may
  bind (``*`` or none: any, ``.``: the Gateway's own, ``~``: none), and the VirtualService must
  be exported to the Gateway's namespace;
- a VirtualService host and a server host (either may be a ``*.suffix`` wildcard, or ``*``)
  serve their intersection: the more specific of the two when one covers the other.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from tsunagi.api import GatewaySpec, ResourceOf, Server, VirtualServiceSpec, fqdn
from tsunagi.mesh.visibility import exported_to

MESH = "mesh"
"""The ``gateways:`` entry that means the sidecars."""

HTTP_SERVER_PROTOCOLS = frozenset({"HTTP", "HTTP2", "GRPC", "GRPC-WEB"})
"""Server protocols a gateway serves with plain-text HTTP routing (one route table a port;
the other kinds are :mod:`.gateway_ports`')."""


def selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """Whether a Gateway's ``selector`` picks a proxy with ``labels`` (an empty one picks all)."""
    return all(labels.get(k) == v for k, v in selector.items())


def gateway_ref(ref: str, namespace: str) -> tuple[str, str]:
    """``(namespace, name)`` of a ``gateways:`` entry of a VirtualService in ``namespace``:
    ``name``, ``namespace/name``, ``./name`` (its own namespace), or Istio's older
    ``name.namespace[.svc.cluster.local]``."""
    ns, slash, name = ref.partition("/")
    if slash:
        return (namespace if ns == "." else ns), name
    name, dot, rest = ref.partition(".")
    if dot:
        return rest.split(".", 1)[0], name
    return namespace, ref


def binds(vs: ResourceOf[VirtualServiceSpec], gateway: tuple[str, str]) -> bool:
    """Whether ``vs`` names the Gateway ``(namespace, name)`` in its ``gateways:``."""
    return any(g != MESH and gateway_ref(g, vs.namespace) == gateway for g in vs.spec.gateways)


def server_host(host: str, gateway_namespace: str) -> tuple[str, str]:
    """A server host as ``(namespace, dnsName)``: ``*`` for any namespace, ``~`` for none."""
    ns, slash, name = host.partition("/")
    if not slash:
        return "*", host.lower()
    return (gateway_namespace if ns == "." else ns), name.lower()


def covers(pattern: str, host: str) -> bool:
    """Whether ``pattern`` (a host, ``*.suffix`` or ``*``) covers every name ``host`` does."""
    if pattern == "*" or pattern == host:
        return True
    if not pattern.startswith("*."):
        return False
    suffix = pattern[1:]  # ".example.com"
    return host.endswith(suffix) and host != suffix[1:]


def intersect(a: str, b: str) -> str | None:
    """The names both hosts serve, as one host (the more specific one), or None."""
    if covers(a, b):
        return b
    if covers(b, a):
        return a
    return None


def server_protocol(server: Server) -> str:
    """The server's port protocol, upper-cased as Istio compares it."""
    return (server.port.protocol or "").upper()


@dataclass(frozen=True)
class Binding:
    """A VirtualService bound to one server, with the hosts it serves there (in its order)."""

    vs: ResourceOf[VirtualServiceSpec]
    hosts: tuple[str, ...]
    """The intersections of its hosts with the server's, e.g. ``bookinfo.example.com``."""
    vs_hosts: tuple[str, ...]
    """For each of :attr:`hosts`, the VirtualService host it came from (resolved to a FQDN)."""


def vs_hosts(vs: ResourceOf[VirtualServiceSpec]) -> list[str]:
    """The VirtualService's hosts resolved as Istio does (short names in its namespace)."""
    return [fqdn(h, vs.namespace) for h in vs.spec.hosts]


def server_bindings(
    gateway: ResourceOf[GatewaySpec],
    server: Server,
    virtual_services: Iterable[ResourceOf[VirtualServiceSpec]],
    proxy_namespace: str | None = None,
) -> list[Binding]:
    """The VirtualServices (in the given order) bound to ``server`` of ``gateway``, each with
    the hosts it serves there; those serving none are left out. ``exportTo`` is judged
    against the gateway proxy's namespace, as Istio does (the Gateway's own when no proxy is
    in question, as in ``apply``'s analysis)."""
    gw_key = (gateway.namespace, gateway.name)
    allowed = [server_host(h, gateway.namespace) for h in server.hosts]
    viewer = gateway.namespace if proxy_namespace is None else proxy_namespace
    out = []
    for vs in virtual_services:
        if not binds(vs, gw_key) or not exported_to(vs.spec.export_to, vs.namespace, viewer):
            continue
        hosts: dict[str, str] = {}
        for vh in vs_hosts(vs):
            for ns, sh in allowed:
                if ns not in ("*", vs.namespace):
                    continue
                both = intersect(vh, sh)
                if both is not None:
                    hosts.setdefault(both, vh)
        if hosts:
            out.append(Binding(vs, tuple(hosts), tuple(hosts.values())))
    return out


def selected(
    gateways: Sequence[ResourceOf[GatewaySpec]], labels: Mapping[str, str]
) -> list[ResourceOf[GatewaySpec]]:
    """The Gateways a gateway proxy with ``labels`` serves."""
    return [g for g in gateways if selects(g.spec.selector, labels)]
