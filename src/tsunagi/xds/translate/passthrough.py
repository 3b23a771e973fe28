"""``loadBalancer.simple: PASSTHROUGH``: send each request where its host name points.

Istio's PASSTHROUGH cluster forwards a connection to the address the app connected to, with
no load balancing by the proxy. An app here does not connect to an address: it names a host
in a request to its sidecar's HTTP proxy. The address it would have connected to without the
sidecar is what that name resolves to in DNS, so a PASSTHROUGH cluster is Envoy's dynamic
forward proxy: it resolves the request's ``:authority`` (a DNS cache shared by every such
cluster of the proxy) and connects there, one host per name and port. Mesh services have no
DNS name on this host (``apply`` warns); ServiceEntry hosts do.

The dynamic forward proxy needs its HTTP filter in the listener as well as the cluster. The
filter stays disabled in the listener and routes to a PASSTHROUGH cluster turn it on, so
routes that do not use it pay nothing.
"""

from __future__ import annotations

from typing import Any

from tsunagi.xds.translate.protos import (
    DFP_CLUSTER_TYPE,
    DFP_FILTER_TYPE,
    DFP_ROUTE_TYPE,
    FILTER_CONFIG_TYPE,
)

FILTER_NAME = "envoy.filters.http.dynamic_forward_proxy"

_DNS_CACHE = {
    "name": "passthrough",
    # Prefer what most apps connect to first; fall back to IPv6-only names.
    "dns_lookup_family": "V4_PREFERRED",
}

FILTER: dict[str, Any] = {
    "name": FILTER_NAME,
    "typed_config": {"@type": DFP_FILTER_TYPE, "dns_cache_config": _DNS_CACHE},
    "disabled": True,
}
"""The listener's filter (before the router), off unless a route turns it on."""

ROUTE_CONFIG: dict[str, Any] = {
    "@type": FILTER_CONFIG_TYPE,
    "config": {"@type": DFP_ROUTE_TYPE},
}
"""Per-route config that turns :data:`FILTER` on for a route to a PASSTHROUGH cluster."""


def make_passthrough(cluster: dict[str, Any]) -> None:
    """Turn an outbound cluster (EDS or DNS) into a dynamic forward proxy cluster, in place."""
    for key in ("type", "eds_cluster_config", "load_assignment"):
        cluster.pop(key, None)
    cluster["cluster_type"] = {
        "name": "envoy.clusters.dynamic_forward_proxy",
        "typed_config": {"@type": DFP_CLUSTER_TYPE, "dns_cache_config": _DNS_CACHE},
    }
    cluster["lb_policy"] = "CLUSTER_PROVIDED"
