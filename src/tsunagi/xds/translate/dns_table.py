"""The DNS listener of an intercepting sidecar (``tsunagi run --intercept``).

iptables redirects the app's DNS queries (UDP port 53) here. It is Envoy's own DNS filter on
a UDP listener, with the table inline: it costs the sidecar no process of its own, and a new
service reaches it over LDS like any other change (Istio's DNS proxy answers from a table the
control plane pushes too).

Names answered, as Istio's DNS proxy answers them for a workload in namespace ``NS`` (where
Kubernetes' search domains would make ``reviews`` mean ``reviews.NS.svc.cluster.local``):
``SVC.NS.svc.cluster.local``, ``SVC.NS.svc``, ``SVC.NS`` and, for services of the proxy's
own namespace, ``SVC``; a ServiceEntry host by its name. Each answer is the service's
addresses (:attr:`~tsunagi.mesh.World.service_addresses`), with Istio's 30 s TTL. Any other
name goes to the host's resolvers (the agent names them, from ``/etc/resolv.conf``); with
none known, it is answered NXDOMAIN. Only IPv4 addresses are answered: an AAAA query for a
mesh name gets NXDOMAIN, and clients use the A answer.
"""

from __future__ import annotations

from typing import Any

from envoy.extensions.filters.udp.dns_filter.v3 import dns_filter_pb2
from envoy.extensions.network.dns_resolver.cares.v3 import cares_dns_resolver_pb2

from tsunagi.mesh import Node, World
from tsunagi.xds.translate.names import host_aliases

DNS_LISTENER = "dns"
DNS_FILTER_TYPE = "type.googleapis.com/" + dns_filter_pb2.DnsFilterConfig.DESCRIPTOR.full_name
CARES_TYPE = (
    "type.googleapis.com/" + cares_dns_resolver_pb2.CaresDnsResolverConfig.DESCRIPTOR.full_name
)
ANSWER_TTL = "30s"


def dns_names(world: World, node: Node) -> dict[str, tuple[str, ...]]:
    """Every name ``node``'s app may ask for, with its addresses (see the module doc)."""
    hidden = world.hidden_services(node.namespace)
    out: dict[str, tuple[str, ...]] = {}
    for host, ips in sorted(world.service_addresses.items()):
        if host in hidden:
            continue
        for name in host_aliases(host, node.namespace):
            out.setdefault(name.lower(), ips)
    return out


def _resolver(entry: str) -> dict[str, Any]:
    host, sep, port = entry.rpartition(":")
    if not sep or ":" in host:  # no port, or a bare IPv6 address
        host, port = entry, "53"
    host = host.strip("[]")
    return {"socket_address": {"address": host, "port_value": int(port)}}


def dns_listener(world: World, node: Node) -> dict[str, Any]:
    """The UDP DNS listener of an intercepting ``node`` (``node.intercept`` set)."""
    assert node.intercept is not None
    domains = [
        {
            "name": name,
            "endpoint": {"address_list": {"address": list(ips)}},
            "answer_ttl": ANSWER_TTL,
        }
        for name, ips in sorted(dns_names(world, node).items())
    ]
    config: dict[str, Any] = {
        "@type": DNS_FILTER_TYPE,
        "stat_prefix": "dns",
        "server_config": {"inline_dns_table": {"virtual_domains": domains}},
    }
    resolvers = node.intercept.resolvers
    if resolvers:
        config["client_config"] = {
            "resolver_timeout": "5s",
            "typed_dns_resolver_config": {
                "name": "envoy.network.dns_resolver.cares",
                "typed_config": {
                    "@type": CARES_TYPE,
                    "resolvers": [_resolver(r) for r in resolvers],
                },
            },
            "max_pending_lookups": 256,
        }
    return {
        "name": DNS_LISTENER,
        "address": {
            "socket_address": {
                "address": "127.0.0.1",
                "port_value": node.intercept.dns_port,
                "protocol": "UDP",
            }
        },
        "listener_filters": [{"name": "envoy.filters.udp.dns_filter", "typed_config": config}],
    }
