"""DestinationRule ``trafficPolicy`` on outbound clusters, as Istio applies it.

Which policy a cluster gets (Istio's ``MergeTrafficPolicy``): the top-level policy, with its
``portLevelSettings`` entry for the cluster's port in place of it when there is one; then, for
a subset cluster, each of the subset's ``loadBalancer`` / ``connectionPool`` /
``outlierDetection`` / ``tls`` replaces the setting of the same kind; then the subset's own
``portLevelSettings`` entry for the port, if any, replaces all four. A port-level entry never
inherits: what it leaves out gets the default (Istio's documented rule).

Enforced here: load balancing (simple algorithms, consistent hashing, warmup), connection
pools (circuit-breaker thresholds, HTTP protocol options, TCP keepalive) and outlier
detection; ``localityLbSetting`` in :mod:`.locality`, from the merged policy; ``tls`` (modes
SIMPLE and MUTUAL) in :mod:`.origination`, ISTIO_MUTUAL and DISABLE (over auto mTLS) in
:mod:`.mesh_tls`; ``tcp.idleTimeout`` on TCP proxies
(:func:`tcp_idle_timeout`) and, as Istio does, as the HTTP connection idle timeout when
``http.idleTimeout`` is unset. Not yet: ``tunnel`` and ``proxyProtocol``; ``tsunagi apply`` warns
about those, see :mod:`tsunagi.mesh.analysis`. ``PASSTHROUGH`` is in :mod:`.passthrough`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2

from tsunagi.api import (
    ClientTLSSettings,
    ConnectionPoolSettings,
    DestinationRuleSpec,
    LoadBalancerSettings,
    OutlierDetection,
    TrafficPolicy,
    format_duration,
)
from tsunagi.mesh import World
from tsunagi.xds.translate.names import parse_outbound_cluster
from tsunagi.xds.translate.passthrough import make_passthrough

Labels = tuple[tuple[str, str], ...]
"""A client's labels, sorted (``ClientScope.labels``)."""

DEFAULT_RING_SIZE = 1024
"""Istio's ring size when consistent hashing names none."""

HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_HTTP_OPTIONS_TYPE = (
    "type.googleapis.com/" + http_protocol_options_pb2.HttpProtocolOptions.DESCRIPTOR.full_name
)


@dataclass(frozen=True)
class ClusterPolicy:
    """The settings that apply to one cluster after Istio's merge; None means the default."""

    load_balancer: LoadBalancerSettings | None = None
    connection_pool: ConnectionPoolSettings | None = None
    outlier_detection: OutlierDetection | None = None
    tls: ClientTLSSettings | None = None
    """Upstream TLS (TLS origination), applied by :mod:`.origination`."""


NO_POLICY = ClusterPolicy()


def _at_port(tp: TrafficPolicy, port: int) -> ClusterPolicy | None:
    for pls in tp.port_level_settings:
        if pls.port is not None and pls.port.number == port:
            return ClusterPolicy(
                pls.load_balancer, pls.connection_pool, pls.outlier_detection, pls.tls
            )
    return None


def cluster_policy(dr: DestinationRuleSpec | None, port: int, subset: str = "") -> ClusterPolicy:
    """The merged policy for ``outbound|port|subset|host`` under ``dr``."""
    if dr is None:
        return NO_POLICY
    merged = NO_POLICY
    top = dr.traffic_policy
    if top is not None:
        merged = _at_port(top, port) or ClusterPolicy(
            top.load_balancer, top.connection_pool, top.outlier_detection, top.tls
        )
    if not subset:
        return merged
    sub = next((s.traffic_policy for s in dr.subsets if s.name == subset), None)
    if sub is None:
        return merged
    merged = ClusterPolicy(
        sub.load_balancer or merged.load_balancer,
        sub.connection_pool or merged.connection_pool,
        sub.outlier_detection or merged.outlier_detection,
        sub.tls or merged.tls,
    )
    return _at_port(sub, port) or merged


def policy_key(dr: DestinationRuleSpec | None) -> str:
    """Every trafficPolicy input of ``dr``, canonically: for memo keys."""
    if dr is None:
        return ""
    return json.dumps(
        [
            dr.traffic_policy.model_dump(mode="json") if dr.traffic_policy else None,
            [
                (s.name, s.traffic_policy.model_dump(mode="json") if s.traffic_policy else None)
                for s in dr.subsets
            ],
        ],
        sort_keys=True,
    )


# --------------------------------------------------------------------------- clusters


def apply(cluster: dict[str, Any], policy: ClusterPolicy) -> dict[str, Any]:
    """``cluster`` with ``policy`` applied (in place; returned for convenience)."""
    if policy.load_balancer is not None:
        _load_balancer(cluster, policy.load_balancer)
    if policy.connection_pool is not None:
        _connection_pool(cluster, policy.connection_pool)
    if policy.outlier_detection is not None:
        _outlier(cluster, policy.outlier_detection)
    return cluster


_SIMPLE = {
    "ROUND_ROBIN": "ROUND_ROBIN",
    "LEAST_REQUEST": "LEAST_REQUEST",
    "LEAST_CONN": "LEAST_REQUEST",  # Istio's deprecated name for the same thing
    "RANDOM": "RANDOM",
}


def _load_balancer(cluster: dict[str, Any], lb: LoadBalancerSettings) -> None:
    ch = lb.consistent_hash
    if ch is not None:
        if ch.maglev is not None:
            cluster["lb_policy"] = "MAGLEV"
            if ch.maglev.table_size:
                cluster["maglev_lb_config"] = {"table_size": ch.maglev.table_size}
        else:
            size = (ch.ring_hash.minimum_ring_size if ch.ring_hash else None) or (
                ch.minimum_ring_size or DEFAULT_RING_SIZE
            )
            cluster["lb_policy"] = "RING_HASH"
            cluster["ring_hash_lb_config"] = {"minimum_ring_size": str(size)}
        return
    if lb.simple == "PASSTHROUGH":
        make_passthrough(cluster)
        return
    if lb.simple in _SIMPLE:
        cluster["lb_policy"] = _SIMPLE[lb.simple]
    if lb.warmup_duration_secs:
        slow_start = {
            "slow_start_config": {"slow_start_window": format_duration(lb.warmup_duration_secs)}
        }
        if cluster["lb_policy"] == "ROUND_ROBIN":
            cluster["round_robin_lb_config"] = slow_start
        elif cluster["lb_policy"] == "LEAST_REQUEST":
            cluster["least_request_lb_config"] = slow_start


def _connection_pool(cluster: dict[str, Any], pool: ConnectionPoolSettings) -> None:
    thresholds = dict(cluster["circuit_breakers"]["thresholds"][0])
    common: dict[str, Any] = {}
    tcp, http = pool.tcp, pool.http
    if tcp is not None:
        if tcp.max_connections:
            thresholds["max_connections"] = tcp.max_connections
        if tcp.connect_timeout:
            cluster["connect_timeout"] = format_duration(tcp.connect_timeout)
        if tcp.max_connection_duration:
            common["max_connection_duration"] = format_duration(tcp.max_connection_duration)
        ka = tcp.tcp_keepalive
        if ka is not None:
            keepalive: dict[str, Any] = {}
            if ka.probes:
                keepalive["keepalive_probes"] = ka.probes
            if ka.time:
                keepalive["keepalive_time"] = max(1, int(ka.time))
            if ka.interval:
                keepalive["keepalive_interval"] = max(1, int(ka.interval))
            cluster["upstream_connection_options"] = {"tcp_keepalive": keepalive}
    h2: dict[str, Any] = {}
    protocol: dict[str, Any] = {"explicit_http_config": {"http_protocol_options": {}}}
    if http is not None:
        if http.http1_max_pending_requests:
            thresholds["max_pending_requests"] = http.http1_max_pending_requests
        if http.http2_max_requests:
            thresholds["max_requests"] = http.http2_max_requests
        if http.max_retries:
            thresholds["max_retries"] = http.max_retries
        if http.max_requests_per_connection:
            common["max_requests_per_connection"] = http.max_requests_per_connection
        if http.idle_timeout:
            common["idle_timeout"] = format_duration(http.idle_timeout)
        if http.max_concurrent_streams:
            h2["max_concurrent_streams"] = http.max_concurrent_streams
        if http.use_client_protocol:
            protocol = {
                "use_downstream_protocol_config": {
                    "http_protocol_options": {},
                    "http2_protocol_options": h2,
                }
            }
        elif http.h2_upgrade_policy == "UPGRADE":
            protocol = {"explicit_http_config": {"http2_protocol_options": h2}}
    # Istio's fallback: the HTTP connection idle timeout is the TCP one when unset.
    if "idle_timeout" not in common and tcp is not None and tcp.idle_timeout is not None:
        common["idle_timeout"] = format_duration(tcp.idle_timeout)
    cluster["circuit_breakers"] = {"thresholds": [thresholds]}
    upgraded = http is not None and (
        http.use_client_protocol or http.h2_upgrade_policy == "UPGRADE"
    )
    if common or upgraded:
        options: dict[str, Any] = {"@type": _HTTP_OPTIONS_TYPE, **protocol}
        if common:
            options["common_http_protocol_options"] = common
        cluster["typed_extension_protocol_options"] = {HTTP_OPTIONS: options}


def _outlier(cluster: dict[str, Any], o: OutlierDetection) -> None:
    out: dict[str, Any] = {}
    if o.consecutive_errors:
        # Deprecated: counted 502/503/504 only, i.e. Envoy's gateway failures (apply warns).
        out["consecutive_gateway_failure"] = o.consecutive_errors
        out["enforcing_consecutive_gateway_failure"] = 100
        out["enforcing_consecutive_5xx"] = 0
    if o.consecutive_gateway_errors is not None:
        out["consecutive_gateway_failure"] = o.consecutive_gateway_errors
        out["enforcing_consecutive_gateway_failure"] = 100 if o.consecutive_gateway_errors else 0
    if o.consecutive_5xx_errors is not None:
        out["consecutive_5xx"] = o.consecutive_5xx_errors
        out["enforcing_consecutive_5xx"] = 100 if o.consecutive_5xx_errors else 0
    if o.interval:
        out["interval"] = format_duration(o.interval)
    if o.base_ejection_time:
        out["base_ejection_time"] = format_duration(o.base_ejection_time)
    if o.max_ejection_percent is not None:
        out["max_ejection_percent"] = o.max_ejection_percent
    if o.split_external_local_origin_errors:
        out["split_external_local_origin_errors"] = True
        if o.consecutive_local_origin_failures:
            out["consecutive_local_origin_failure"] = o.consecutive_local_origin_failures
            out["enforcing_consecutive_local_origin_failure"] = 100
    out["enforcing_success_rate"] = 0  # Istio exposes no success-rate ejection
    cluster["outlier_detection"] = out
    # Istio: with outlier detection, panic mode starts below minHealthPercent (default 0,
    # i.e. never: ejected hosts stay ejected).
    cluster["common_lb_config"] = {
        **cluster.get("common_lb_config", {}),
        "healthy_panic_threshold": {"value": float(o.min_health_percent or 0)},
    }


# --------------------------------------------------------------------------- routes


def hash_policy(policy: ClusterPolicy) -> list[dict[str, Any]] | None:
    """The route ``hash_policy`` that consistent hashing on ``policy``'s cluster needs."""
    lb = policy.load_balancer
    ch = lb.consistent_hash if lb is not None else None
    if ch is None:
        return None
    if ch.http_header_name is not None:
        return [{"header": {"header_name": ch.http_header_name}}]
    if ch.http_cookie is not None:
        cookie: dict[str, Any] = {"name": ch.http_cookie.name}
        if ch.http_cookie.path:
            cookie["path"] = ch.http_cookie.path
        if ch.http_cookie.ttl is not None:
            # Envoy generates the cookie when it is missing and a ttl is given.
            cookie["ttl"] = format_duration(ch.http_cookie.ttl)
        return [{"cookie": cookie}]
    if ch.use_source_ip:
        return [{"connection_properties": {"source_ip": True}}]
    if ch.http_query_parameter_name is not None:
        return [{"query_parameter": {"name": ch.http_query_parameter_name}}]
    return None


def _route_policies(
    world: World, clusters: Sequence[str], namespace: str, labels: Labels = ()
) -> list[ClusterPolicy]:
    """The policy of each of ``clusters`` (outbound cluster names) for clients of
    ``namespace`` (its DestinationRule lookup; "" for the shared view) with ``labels`` (a
    rule whose ``workloadSelector`` selects them comes first, as for their clusters)."""
    policies = []
    for name in clusters:
        ref = parse_outbound_cluster(name)
        if ref is None:
            policies.append(NO_POLICY)
            continue
        dr = world.destination_rule(ref.host, namespace, labels)
        policies.append(cluster_policy(dr.spec if dr else None, ref.port, ref.subset))
    return policies


def route_hash_policy(
    world: World, clusters: Sequence[str], namespace: str = "", labels: Labels = ()
) -> list[dict[str, Any]] | None:
    """The ``hash_policy`` for a route to ``clusters`` (outbound cluster names): the one their
    consistent hashing needs, when they all agree on it. ``namespace`` and ``labels``: the
    client's, whose DestinationRule lookup applies ("" for the shared view)."""
    hashes = [hash_policy(p) for p in _route_policies(world, clusters, namespace, labels)]
    first = hashes[0] if hashes else None
    return first if all(h == first for h in hashes) else None


def tcp_idle_timeout(
    world: World, targets: Sequence[str], namespace: str, labels: Labels = ()
) -> str | None:
    """A TCP proxy's ``idle_timeout`` toward ``targets`` (outbound cluster names, the first
    decides, as in Istio): the top-level ``connectionPool.tcp.idleTimeout`` of the first
    target host's DestinationRule for clients of ``namespace`` with ``labels`` (Istio reads
    neither subsets nor port-level settings here); None leaves Envoy's default (1 h, Istio's
    too)."""
    ref = parse_outbound_cluster(targets[0]) if targets else None
    dr = world.destination_rule(ref.host, namespace, labels) if ref is not None else None
    tp = dr.spec.traffic_policy if dr is not None else None
    pool = tp.connection_pool if tp is not None else None
    if pool is None or pool.tcp is None or pool.tcp.idle_timeout is None:
        return None
    return format_duration(pool.tcp.idle_timeout)


def route_passes_through(
    world: World, clusters: Sequence[str], namespace: str = "", labels: Labels = ()
) -> bool:
    """Whether a route to ``clusters`` reaches a PASSTHROUGH cluster (see :mod:`.passthrough`):
    a DestinationRule's (as clients of ``namespace`` with ``labels`` look it up), or one of
    a ServiceEntry with ``resolution: NONE``."""
    for name in clusters:
        ref = parse_outbound_cluster(name)
        svc = world.services.get(ref.host) if ref is not None else None
        if svc is not None and svc.passthrough:
            return True
    return any(
        p.load_balancer is not None and p.load_balancer.simple == "PASSTHROUGH"
        for p in _route_policies(world, clusters, namespace, labels)
    )
