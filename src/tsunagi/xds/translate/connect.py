"""CONNECT: HTTPS from apps through the sidecar's HTTP proxy port.

``tsunagi run`` points ``HTTPS_PROXY`` at the outbound listener, so a client asks its sidecar
``CONNECT host:port``, gets ``200`` and speaks TLS through the tunnel. The route that matches
the CONNECT (``connect_matcher``) terminates it and decides where the tunnel's bytes go:

- ``host:port`` is a service port whose protocol is TLS or HTTPS (a ServiceEntry's
  ``api.example.test:443``, a mesh service's ``--port N/tls``): one virtual host per such
  port (domains ``ALIAS:PORT``) sends the bytes to an internal listener, ``connect|PORT|HOST``,
  that reads the client hello's SNI and routes it with the VirtualService ``tls:`` routes,
  exactly as an ``--upstream`` listener to that port does (:func:`.upstream_listeners.
  tls_chains`): Istio's outbound listener for the service's address. A hello whose SNI no
  ``tls`` route claims follows the outbound policy (``ALLOW_ANY``: on to the port's own
  cluster; ``REGISTRY_ONLY``: closed), never to the SNI's host. Connections are reported
  like an upstream listener's (outbound TCP metrics and access log). A plain request to the
  port gets a 404 that says to use ``https://`` through ``HTTPS_PROXY``.
  A port whose cluster passes through (``resolution: NONE``, wildcard hosts included) tunnels
  to the CONNECT target instead, where its name resolves.
- any other host follows the outbound traffic policy, decided from the CONNECT's authority
  before a tunnel exists: ``ALLOW_ANY`` tunnels to the CONNECT target itself (the original
  destination, resolved by DNS through ``PassthroughCluster``); ``REGISTRY_ONLY`` answers
  ``502`` with the body that says why, the same answer a plain HTTP request gets (Istio's
  ``block_all``), so the client fails at once (curl: "CONNECT tunnel failed, response 502")
  rather than in a TLS handshake with a closed connection. A tunnel that no internal
  listener reports (to ``PassthroughCluster``, or a port that passes through) is reported
  by the outbound listener's tunnel logger as outbound TCP (:mod:`.accesslog`), at its end.

Cost: the outbound connection manager allows CONNECT (``upgrade_configs``, looked at only for
requests that ask for an upgrade, so a REGISTRY_ONLY route can answer its own 502) and
accepts HTTP/1.0 (Python's ``http.client`` before 3.12 and ``openssl s_client`` send CONNECT
that way); only routes with ``connect_matcher`` and ``connect_config`` terminate a CONNECT.
Plain requests never look at the TLS ports' virtual hosts (their domains are ports that are
not HTTP) and meet one ``connect_matcher`` test only on the catch-all. What they do pay, on a
sidecar with a metric pipe: the metric loggers tell a tunnel (reported as TCP) from a request
by its ``:method``, two header tests per request (the request logger's ``NOT_CONNECT`` and the
tunnel logger's ``CONNECT_REQUEST``, :mod:`.accesslog`); callgrind's instructions per
request (``make bench``) show no change beyond the run-to-run drift. Internal listeners
need Envoy's ``envoy.bootstrap.internal_listener`` extension (:mod:`tsunagi.agent.bootstrap`);
they and their clusters are in :mod:`.connect_listeners`. A mesh without TLS ports has none.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from tsunagi import protocols
from tsunagi.mesh import Service, World
from tsunagi.mesh.outbound_policy import ALLOW_ANY, Mode
from tsunagi.proxy_contract import CONNECT_CLUSTER_PREFIX
from tsunagi.xds.translate import egress, passthrough
from tsunagi.xds.translate.names import host_aliases, outbound_cluster
from tsunagi.xds.translate.policy import Labels, route_passes_through

UPGRADE = [{"upgrade_type": "CONNECT", "connect_config": {}}]
"""Per-route: accept CONNECT and terminate it, sending the payload on as raw TCP."""

ALLOW_ANY_CONNECT = "allow_any_connect"
"""The catch-all's route tunnelling a CONNECT to an unknown host under ``ALLOW_ANY``."""
BLOCK_ALL_CONNECT = "block_all_connect"
"""The catch-all's route answering 502 to a CONNECT to an unknown host under
``REGISTRY_ONLY``."""


def connect_name(host: str, port: int) -> str:
    """``connect|443|api.example.test``: the internal listener and the cluster that reaches
    it, one per TLS or HTTPS service port."""
    return f"{CONNECT_CLUSTER_PREFIX}{port}|{host}"


class TlsPort(NamedTuple):
    """A service port that takes CONNECTs."""

    service: Service
    port: int
    passes_through: bool
    """Its cluster goes where the client asked (``resolution: NONE``, or a DestinationRule's
    ``PASSTHROUGH``): the tunnel goes to the CONNECT target, whatever the SNI, and there is no
    internal listener."""


def tls_ports(
    world: World, namespace: str, hidden: frozenset[str], labels: Labels = ()
) -> list[TlsPort]:
    """The service ports a CONNECT from ``namespace`` reaches: protocol TLS or HTTPS, of
    services visible there (``hidden``: those not exported to it). ``labels``: the client's,
    for its DestinationRule lookup (a selector rule's ``PASSTHROUGH``)."""
    return [
        TlsPort(
            svc,
            port,
            route_passes_through(world, [outbound_cluster(svc.hostname, port)], namespace, labels),
        )
        for svc in world.services.values()
        if svc.hostname not in hidden
        for port in svc.ports
        if svc.protocol(port) in (protocols.TLS, protocols.HTTPS)
    ]


def connect_virtual_hosts(
    world: World, namespace: str, hidden: frozenset[str], labels: Labels = ()
) -> list[tuple[str, list[str], list[dict[str, Any]]]]:
    """``(name, domains, routes)`` of the virtual hosts that take CONNECTs to TLS ports
    (see :func:`tls_ports`)."""
    out = []
    for svc, port, passes_through in tls_ports(world, namespace, hidden, labels):
        name = connect_name(svc.hostname, port)
        match: dict[str, Any] = {"connect_matcher": {}}
        if passes_through:  # the dynamic forward proxy reads the CONNECT's authority
            cluster = outbound_cluster(svc.hostname, port)
            route = passthrough.route(name, match, cluster, UPGRADE)
        else:
            action = {"cluster": name, "timeout": "0s", "upgrade_configs": UPGRADE}
            route = {"name": name, "match": match, "route": action}
        domains = [f"{alias}:{port}" for alias in host_aliases(svc.hostname, namespace)]
        # A plain request to the port gets the 404 that says how to reach it.
        out.append((name, domains, [route, tls_port_route()]))
    return out


TLS_PORT_ROUTE = "tls_port"
TLS_PORT_BODY = (
    "404: this port is TLS (ServiceEntry or `tsunagi run --port N/tls`); send it https:// "
    "through HTTPS_PROXY, which `tsunagi run` sets (the sidecar tunnels it and routes it by "
    "SNI), not plain HTTP.\n"
)


def tls_port_route() -> dict[str, Any]:
    """404 from the sidecar for a plain HTTP request to a TLS or HTTPS port, saying what to
    do (a CONNECT to the port is the other route of its virtual host)."""
    return {
        "name": TLS_PORT_ROUTE,
        "match": {"prefix": "/"},
        "direct_response": {"status": 404, "body": {"inline_string": TLS_PORT_BODY}},
    }


def unknown_host_route(policy: Mode) -> dict[str, Any]:
    """The catch-all's CONNECT route (first in it), per the outbound ``policy``."""
    if policy == ALLOW_ANY:
        return passthrough.route(
            ALLOW_ANY_CONNECT,
            {"connect_matcher": {}},
            passthrough.PASSTHROUGH_CLUSTER,
            UPGRADE,
        )
    return {
        "name": BLOCK_ALL_CONNECT,
        "match": {"connect_matcher": {}},
        "direct_response": {"status": 502, "body": {"inline_string": egress.BLOCKED_BODY}},
    }
