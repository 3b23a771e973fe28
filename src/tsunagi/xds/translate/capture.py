"""The outbound capture listener of an intercepting sidecar (``tsunagi run --intercept``).

iptables in the sidecar's network namespace redirects the app's outbound TCP connections to
this listener (Istio's ``virtualOutbound`` on 15001); Envoy's ``original_dst`` listener
filter restores the address the app connected to, and the filter chains pick by it:

- a service address (its virtual IP, :mod:`tsunagi.mesh.virtual_ips`, or a ServiceEntry's own
  address) on one of the service's HTTP ports: the outbound HTTP connection manager, with the
  same route configuration as the ``HTTP_PROXY`` listener (routing by Host header, so one
  chain per port serves every service on it);
- on a TCP port: a TCP proxy to where the service port's ``tcp:`` routes send it (as an
  ``--upstream`` listener does); on a TLS or HTTPS port, to the port's own cluster; a
  ``resolution: NONE`` ServiceEntry's address: to the original destination;
- anything else follows the outbound traffic policy: ``ALLOW_ANY`` passes it to the address
  the app connected to (an ``ORIGINAL_DST`` cluster, Istio's PassthroughCluster for TCP),
  ``REGISTRY_ONLY`` has no chain for it, so Envoy closes the connection (Istio's
  BlackHoleCluster).

Only intercepting proxies get these; other sidecars' config is unchanged.
"""

from __future__ import annotations

from typing import Any

from envoy.extensions.filters.listener.original_dst.v3 import original_dst_pb2

from tsunagi import protocols
from tsunagi.mesh import Node, Upstream, World
from tsunagi.mesh.outbound_policy import ALLOW_ANY, outbound_policy
from tsunagi.mesh.telemetry import ProxyTelemetry
from tsunagi.xds.translate import accesslog
from tsunagi.xds.translate.clusters import CONNECT_TIMEOUT, UNLIMITED
from tsunagi.xds.translate.listeners import outbound_listener
from tsunagi.xds.translate.names import outbound_cluster
from tsunagi.xds.translate.tcp_proxies import tcp_proxy
from tsunagi.xds.translate.upstream_listeners import upstream_targets

CAPTURE_LISTENER = "virtualOutbound"
"""Istio's name for the outbound capture listener."""
ORIGINAL_DST_CLUSTER = "PassthroughCluster|original_dst"
"""Where ``ALLOW_ANY`` sends captured connections to unknown addresses: the address the app
connected to. (``PassthroughCluster`` itself is the HTTP proxy's dynamic forward proxy.)"""
ORIGINAL_DST = {
    "name": "envoy.filters.listener.original_dst",
    "typed_config": {
        "@type": "type.googleapis.com/" + original_dst_pb2.OriginalDst.DESCRIPTOR.full_name
    },
}


def original_dst_cluster() -> dict[str, Any]:
    """:data:`ORIGINAL_DST_CLUSTER`: connects where the captured connection was going."""
    return {
        "name": ORIGINAL_DST_CLUSTER,
        "type": "ORIGINAL_DST",
        "lb_policy": "CLUSTER_PROVIDED",
        "connect_timeout": CONNECT_TIMEOUT,
        "circuit_breakers": UNLIMITED,
    }


def _ranges(ips: list[str]) -> list[dict[str, Any]]:
    return [{"address_prefix": ip, "prefix_len": 32} for ip in ips]


def _tcp_targets(world: World, node: Node, host: str, port: int) -> list[tuple[str, int]]:
    svc = world.services[host]
    if svc.passthrough:
        return [(ORIGINAL_DST_CLUSTER, 100)]
    if svc.protocol(port) in (protocols.TLS, protocols.HTTPS):
        return [(outbound_cluster(host, port), 100)]
    return upstream_targets(world, node, Upstream(host, port, 0))


def _chains(
    world: World, node: Node, telemetry: ProxyTelemetry, loggers: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The filter chains of the capture listener for the services ``node`` sees (see the
    module doc), in port then address order; one (address, port) goes to one chain."""
    hidden = world.hidden_services(node.namespace)
    http: dict[int, list[str]] = {}
    tcp: list[tuple[int, str, str]] = []
    claimed: set[tuple[str, int]] = set()
    for host, ips in sorted(world.service_addresses.items()):
        svc = world.services[host]
        if host in hidden:
            continue
        for port in svc.ports:
            for ip in ips:
                if (ip, port) in claimed:
                    continue  # two ServiceEntries with one address: the first host keeps it
                claimed.add((ip, port))
                if protocols.is_http(svc.protocol(port)) and not svc.passthrough:
                    http.setdefault(port, []).append(ip)
                else:
                    tcp.append((port, ip, host))
    hcm = outbound_listener(node, telemetry)["filter_chains"][0]["filters"]
    chains: list[dict[str, Any]] = []
    for port, port_ips in sorted(http.items()):
        match = {"destination_port": port, "prefix_ranges": _ranges(sorted(port_ips))}
        chains.append({"filter_chain_match": match, "filters": hcm})
    for port, ip, host in sorted(tcp):
        targets = _tcp_targets(world, node, host, port)
        proxy = tcp_proxy(outbound_cluster(host, port), targets, loggers)
        match = {"destination_port": port, "prefix_ranges": _ranges([ip])}
        chains.append({"filter_chain_match": match, "filters": [proxy]})
    return chains


def capture_listener(world: World, node: Node) -> dict[str, Any]:
    """The outbound capture listener of an intercepting ``node`` (``node.intercept`` set), on
    loopback: iptables' REDIRECT sends locally made connections to 127.0.0.1."""
    assert node.intercept is not None
    telemetry = world.telemetry_for(node)
    loggers = accesslog.tcp_access_loggers(node, telemetry, outbound=True)
    listener: dict[str, Any] = {
        "name": CAPTURE_LISTENER,
        "address": {
            "socket_address": {"address": "127.0.0.1", "port_value": node.intercept.capture_port}
        },
        "listener_filters": [ORIGINAL_DST],
        "filter_chains": _chains(world, node, telemetry, loggers),
        "traffic_direction": "OUTBOUND",
    }
    if outbound_policy(world, node) == ALLOW_ANY:
        target = [(ORIGINAL_DST_CLUSTER, 100)]
        listener["default_filter_chain"] = {
            "filters": [tcp_proxy(ORIGINAL_DST_CLUSTER, target, loggers)]
        }
    return listener
