"""The end of the outbound route table: requests for hosts no service's virtual host owns.

- ServiceEntry ``addresses`` given as CIDR ranges: a request whose authority is an address
  in the range goes to the entry's service port (single addresses are plain domains of the
  service's virtual hosts, see :func:`.names.service_domains`).
- Hosts the mesh knows on ports that are not HTTP: the sidecar answers 404 itself, saying
  how to reach them (``tsunagi run --upstream``), rather than passing them on as HTTP.
- Everything else follows the outbound traffic policy (Istio's catch-all virtual host):
  ``ALLOW_ANY`` sends it to :data:`~.passthrough.PASSTHROUGH_CLUSTER` (where the authority
  resolves in DNS), ``REGISTRY_ONLY`` answers 502 from the route ``block_all``, as Istio.

These virtual hosts match ``*`` or nothing a service's does, so Envoy looks at them only after
every service's exact domains missed: requests to mesh services cost nothing more.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from typing import Any

from tsunagi import protocols
from tsunagi.mesh import Service, World
from tsunagi.mesh.outbound_policy import ALLOW_ANY, Mode
from tsunagi.xds.translate import passthrough
from tsunagi.xds.translate.names import host_aliases, outbound_cluster

ALLOW_ANY_ROUTE = "allow_any"
"""Istio's name of the catch-all virtual host and route under ``ALLOW_ANY``."""
BLOCK_ALL_ROUTE = "block_all"
"""Istio's name of the catch-all virtual host and route under ``REGISTRY_ONLY``."""
NOT_HTTP_ROUTE = "not_http"
"""The virtual host and route answering 404 for known hosts' ports that are not HTTP."""

BLOCKED_BODY = (
    "502 blocked by the outbound traffic policy REGISTRY_ONLY: this host is neither a mesh "
    "service nor declared by a ServiceEntry visible to this workload. Declare it with a "
    "ServiceEntry, or set outboundTrafficPolicy ALLOW_ANY (Sidecar resource or "
    "`tsunagi up --outbound-policy`).\n"
)

_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"


def cidr_regex(cidr: str, port: int) -> str | None:
    """An RE2 regex for an ``:authority`` naming an address of IPv4 ``cidr`` and ``port``
    (port 80 may be left out); None for a single address or an IPv6 range (not matched)."""
    net = ipaddress.ip_network(cidr, strict=False)
    if net.version != 4 or net.prefixlen == 32:
        return None
    first = net.network_address.packed
    last = net.broadcast_address.packed
    parts = []
    for lo, hi in zip(first, last, strict=True):
        if lo == hi:
            parts.append(str(lo))
        elif lo == 0 and hi == 255:
            parts.append(_OCTET)
        else:
            parts.append("(" + "|".join(str(n) for n in range(lo, hi + 1)) + ")")
    suffix = "(:80)?" if port == 80 else f":{port}"
    return r"\.".join(parts) + suffix


def _http_ports(svc: Service) -> list[int]:
    return [p for p in svc.ports if protocols.is_http(svc.protocol(p))]


def cidr_routes(
    world: World, hidden: frozenset[str], passes_through: Callable[[Sequence[str]], bool]
) -> list[dict[str, Any]]:
    """Routes for requests whose authority is inside a ServiceEntry's CIDR ``addresses``;
    ``passes_through``: whether a route to these clusters reaches a PASSTHROUGH cluster."""
    routes = []
    for svc in world.services.values():
        if svc.hostname in hidden or not svc.addresses:
            continue
        for address in svc.addresses:
            for port in _http_ports(svc):
                regex = cidr_regex(address, port)
                if regex is None:
                    continue
                cluster = outbound_cluster(svc.hostname, port)
                name = f"{svc.hostname}:{port} {address}"
                match = {
                    "prefix": "/",
                    "headers": [
                        {"name": ":authority", "string_match": {"safe_regex": {"regex": regex}}}
                    ],
                }
                if passes_through([cluster]):
                    routes.append(passthrough.route(name, match, cluster))
                else:
                    action = {"cluster": cluster, "timeout": "0s"}
                    routes.append({"name": name, "match": match, "route": action})
    return routes


def not_http_domains(world: World, namespace: str, hidden: frozenset[str]) -> list[str]:
    """Domains of known hosts' ports that are not HTTP (``HOST:PORT`` only: a bare name
    means port 80, which an HTTP port of the host may own)."""
    out = []
    for svc in world.services.values():
        if svc.hostname in hidden:
            continue
        for port in svc.ports:
            if not protocols.is_http(svc.protocol(port)):
                out += [f"{alias}:{port}" for alias in host_aliases(svc.hostname, namespace)]
    return out


def not_http_route() -> dict[str, Any]:
    """404 from the sidecar for a non-HTTP port of a known host, saying what to do."""
    body = (
        "404: this port is not HTTP (ServiceEntry or `tsunagi run --port N/tcp`); the app's "
        "HTTP proxy has no route for it. Reach it with `tsunagi run --upstream HOST:PORT`.\n"
    )
    return {
        "name": NOT_HTTP_ROUTE,
        "match": {"prefix": "/"},
        "direct_response": {"status": 404, "body": {"inline_string": body}},
    }


def catch_all_route(policy: Mode) -> tuple[str, dict[str, Any]]:
    """The virtual host name and last route for unknown hosts, per the outbound ``policy``
    (:func:`~tsunagi.mesh.outbound_policy.outbound_policy`)."""
    if policy == ALLOW_ANY:
        return ALLOW_ANY_ROUTE, passthrough.route(ALLOW_ANY_ROUTE, {"prefix": "/"})
    return BLOCK_ALL_ROUTE, {
        "name": BLOCK_ALL_ROUTE,
        "match": {"prefix": "/"},
        "direct_response": {"status": 502, "body": {"inline_string": BLOCKED_BODY}},
    }
