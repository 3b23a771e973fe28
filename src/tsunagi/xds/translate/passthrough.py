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

Envoy rejects such a cluster carrying ``HttpProtocolOptions`` (an HTTP/2 port, a connection
pool, TLS origination) unless they set ``auto_sni`` and ``auto_san_validation``, or the cluster
allows "insecure" options: see :func:`settle_options`. One rejected cluster would stop every
cluster update of the proxy.
"""

from __future__ import annotations

from typing import Any

from tsunagi.api import ClientTLSSettings
from tsunagi.xds.translate.origination import originates
from tsunagi.xds.translate.protos import (
    DFP_CLUSTER_TYPE,
    DFP_FILTER_TYPE,
    DFP_ROUTE_TYPE,
    FILTER_CONFIG_TYPE,
)

FILTER_NAME = "envoy.filters.http.dynamic_forward_proxy"
CLUSTER_TYPE = "envoy.clusters.dynamic_forward_proxy"
_HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

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


PASSTHROUGH_CLUSTER = "PassthroughCluster"
"""Istio's name for where ``ALLOW_ANY`` sends requests for hosts the mesh does not know."""


def route(
    name: str,
    match: dict[str, Any],
    cluster: str = PASSTHROUGH_CLUSTER,
    upgrade_configs: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A route to a dynamic forward proxy ``cluster`` (by default
    :data:`PASSTHROUGH_CLUSTER`), turning :data:`FILTER` on for it; ``upgrade_configs``: for
    a route that terminates CONNECT."""
    action: dict[str, Any] = {"cluster": cluster, "timeout": "0s"}
    if upgrade_configs:
        action["upgrade_configs"] = upgrade_configs
    return {
        "name": name,
        "match": match,
        "route": action,
        "typed_per_filter_config": {FILTER_NAME: ROUTE_CONFIG},
    }


def passthrough_cluster(connect_timeout: str, circuit_breakers: dict[str, Any]) -> dict[str, Any]:
    """:data:`PASSTHROUGH_CLUSTER`: a dynamic forward proxy to the request's authority."""
    cluster: dict[str, Any] = {
        "name": PASSTHROUGH_CLUSTER,
        "connect_timeout": connect_timeout,
        "circuit_breakers": circuit_breakers,
    }
    make_passthrough(cluster)
    return cluster


def make_passthrough(cluster: dict[str, Any]) -> None:
    """Turn an outbound cluster (EDS or DNS) into a dynamic forward proxy cluster, in place."""
    for key in ("type", "eds_cluster_config", "load_assignment"):
        cluster.pop(key, None)
    cluster["cluster_type"] = {
        "name": CLUSTER_TYPE,
        "typed_config": {"@type": DFP_CLUSTER_TYPE, "dns_cache_config": _DNS_CACHE},
    }
    cluster["lb_policy"] = "CLUSTER_PROVIDED"


def settle_options(cluster: dict[str, Any], tls: ClientTLSSettings | None) -> dict[str, Any]:
    """Make a dynamic forward proxy ``cluster`` (its protocol options and TLS final) one Envoy
    accepts, in place; returned. Other clusters are left alone.

    Envoy takes a forward proxy cluster's ``HttpProtocolOptions`` only with both
    ``auto_sni`` and ``auto_san_validation``, so that a request's host is the name its TLS
    connection asks for and checks. Those are set, unless the DestinationRule's ``tls`` fixes
    the SNI, names the SANs or skips verification: Istio then leaves them off (see
    :mod:`.origination`), and the cluster sets ``allow_insecure_cluster_options`` so that
    Envoy takes what the rule says."""
    if cluster.get("cluster_type", {}).get("name") != CLUSTER_TYPE:
        return cluster
    options = cluster.get("typed_extension_protocol_options", {}).get(_HTTP_OPTIONS)
    if options is None:
        return cluster
    fixed = (
        tls is not None
        and originates(tls)
        and bool(tls.sni or tls.subject_alt_names or tls.insecure_skip_verify)
    )
    if fixed:
        cluster["cluster_type"]["typed_config"]["allow_insecure_cluster_options"] = True
    else:
        auto = options.setdefault("upstream_http_protocol_options", {})
        auto["auto_sni"] = True
        auto["auto_san_validation"] = True
    return cluster
