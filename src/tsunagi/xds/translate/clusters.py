"""Clusters: one per service port and one per DestinationRule subset, plus inbound ones."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tsunagi.api import DestinationRuleSpec
from tsunagi.mesh import Node, Service
from tsunagi.xds.translate import locality, upstream
from tsunagi.xds.translate.mesh_tls import NO_PEERS, Peers, mesh_sni, secure
from tsunagi.xds.translate.names import inbound_cluster, outbound_cluster
from tsunagi.xds.translate.origination import Credentials, originate
from tsunagi.xds.translate.passthrough import (
    make_passthrough,
    passthrough_cluster,
    settle_options,
)
from tsunagi.xds.translate.policy import ClusterPolicy, apply, cluster_policy

MAX = 4294967295
CONNECT_TIMEOUT = "10s"
"""Istio's default connect timeout."""

# Istio leaves circuit breaking to DestinationRules: by default every threshold is maximal.
UNLIMITED = {
    "thresholds": [
        {
            "max_connections": MAX,
            "max_pending_requests": MAX,
            "max_requests": MAX,
            "max_retries": MAX,
        }
    ]
}


PASSTHROUGH = passthrough_cluster(CONNECT_TIMEOUT, UNLIMITED)
"""Istio's PassthroughCluster (see :mod:`.egress`)."""


def eds_cluster(name: str) -> dict[str, Any]:
    """An outbound cluster whose endpoints come over ADS."""
    return {
        "name": name,
        "type": "EDS",
        "eds_cluster_config": {
            "eds_config": {"ads": {}, "resource_api_version": "V3"},
            "service_name": name,
        },
        "connect_timeout": CONNECT_TIMEOUT,
        "lb_policy": "LEAST_REQUEST",
        "circuit_breakers": UNLIMITED,
        "common_lb_config": {},
    }


def dns_cluster(name: str, assignment: dict[str, Any], resolution: str) -> dict[str, Any]:
    """A cluster whose endpoints are host names Envoy resolves itself (ServiceEntry DNS):
    STRICT_DNS keeps every address; LOGICAL_DNS (DNS_ROUND_ROBIN, one host) uses one at a
    time."""
    hosts = sum(len(group["lb_endpoints"]) for group in assignment["endpoints"])
    logical = resolution == "DNS_ROUND_ROBIN" and hosts == 1  # LOGICAL_DNS takes exactly one
    return {
        "name": name,
        "type": "LOGICAL_DNS" if logical else "STRICT_DNS",
        "connect_timeout": CONNECT_TIMEOUT,
        # Envoy's default (AUTO) tries IPv6 first; sidecars here connect over IPv4, as an
        # IPv4-only Istio proxy does (V4_ONLY there), still reaching IPv6-only names.
        "dns_lookup_family": "V4_PREFERRED",
        "lb_policy": "LEAST_REQUEST" if resolution == "DNS" else "ROUND_ROBIN",
        "circuit_breakers": UNLIMITED,
        "load_assignment": assignment,
    }


def service_clusters(
    svc: Service,
    subsets: Sequence[str],
    dr: DestinationRuleSpec | None = None,
    peers: Peers = NO_PEERS,
    credentials: Credentials | None = None,
) -> list[dict[str, Any]]:
    """One cluster per port of ``svc``, and one per port and subset, each with the
    DestinationRule's traffic policy for it, speaking the port protocol's HTTP version,
    with mesh mTLS to ``peers`` (see :mod:`.mesh_tls`); ``credentials``: given for a proxy
    that ``credentialName`` applies to (:mod:`.origination`)."""
    out = []
    for port in svc.ports:
        for subset in ("", *subsets):
            cluster = eds_cluster(outbound_cluster(svc.hostname, port, subset))
            policy = cluster_policy(dr, port, subset)
            cluster = with_policy(cluster, svc, port, policy, peers, subset, credentials)
            out.append(locality.cluster_config(cluster, policy))
    return out


def with_policy(
    cluster: dict[str, Any],
    svc: Service,
    port: int,
    policy: ClusterPolicy,
    peers: Peers = NO_PEERS,
    subset: str = "",
    credentials: Credentials | None = None,
) -> dict[str, Any]:
    """An outbound ``cluster`` (EDS or DNS) of ``svc``'s ``port`` (``subset``) with the
    DestinationRule's ``policy``: load balancing and limits, the port protocol's HTTP
    version, mesh mTLS to sidecar ``peers`` or TLS origination (``credentials``: see
    :func:`service_clusters`); a dynamic forward proxy (resolution NONE: where the
    request's authority points) with options Envoy accepts."""
    cluster = upstream.outbound(apply(cluster, policy), svc.protocol(port), policy)
    sni = mesh_sni(svc.hostname, port, subset)
    if svc.passthrough or not secure(cluster, policy.tls, peers, sni):
        originate(cluster, policy.tls, svc.subject_alt_names, credentials)
    if svc.passthrough:
        make_passthrough(cluster)
    return settle_options(cluster, policy.tls)


def static_cluster(
    name: str, address: dict[str, Any], connect_timeout: str = CONNECT_TIMEOUT
) -> dict[str, Any]:
    """A cluster whose one endpoint is ``address`` (an Envoy ``Address``)."""
    endpoint = {"endpoint": {"address": address}}
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": connect_timeout,
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [endpoint]}]},
    }


def inbound_clusters(node: Node) -> list[dict[str, Any]]:
    """The local app behind each inbound port: a static address, nothing to discover; h2c
    for HTTP/2 and gRPC ports."""
    out = []
    for port, (_listen, app) in sorted(node.inbound.items()):
        address = {"socket_address": {"address": "127.0.0.1", "port_value": app}}
        cluster = {**static_cluster(inbound_cluster(port), address), "circuit_breakers": UNLIMITED}
        out.append(upstream.inbound(cluster, node.inbound_protocol(port)))
    return out
