"""Typed models for networking.istio.io kinds.

Only the data shape and per-field constraints live here; cross-field rules
(Istio's semantic validation) are in :mod:`.checks_networking`. Durations are
float seconds; list fields default to ``()`` and map fields to ``{}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from pydantic import Field

from .common import (
    IntPercent,
    IstioModel,
    Labels,
    NonNegativeInt,
    Percent,
    PortNumber,
    PortSelector,
    RE2Regex,
    Seconds,
    StrictBool,
    StrictInt,
    StringMatch,
    WorkloadSelector,
)

# --------------------------------------------------------------------------- shared


class Destination(IstioModel):
    """Where traffic goes: a service host, optional subset and port."""

    host: str
    subset: str | None = None
    port: PortSelector | None = None


class Port(IstioModel):
    """A port declaration (ServiceEntry, Gateway server, Sidecar listener)."""

    number: PortNumber
    protocol: str | None = None
    name: str | None = None
    target_port: PortNumber | None = None


class HeaderOperations(IstioModel):
    """Header edits: ``set`` overwrites, ``add`` appends, ``remove`` deletes."""

    set: Mapping[str, str] = Field(default_factory=dict)
    add: Mapping[str, str] = Field(default_factory=dict)
    remove: tuple[str, ...] = ()


class Headers(IstioModel):
    """Request and response header manipulation."""

    request: HeaderOperations | None = None
    response: HeaderOperations | None = None


# --------------------------------------------------------------------------- VirtualService


class HTTPMatchRequest(IstioModel):
    """Conditions an HTTP request must satisfy (all fields are ANDed)."""

    name: str | None = None
    uri: StringMatch | None = None
    scheme: StringMatch | None = None
    method: StringMatch | None = None
    authority: StringMatch | None = None
    headers: Mapping[str, StringMatch] = Field(default_factory=dict)
    port: PortNumber | None = None
    source_labels: Labels = Field(default_factory=dict)
    gateways: tuple[str, ...] = ()
    query_params: Mapping[str, StringMatch] = Field(default_factory=dict)
    ignore_uri_case: StrictBool = False
    without_headers: Mapping[str, StringMatch] = Field(default_factory=dict)
    source_namespace: str | None = None
    stat_prefix: str | None = None


class HTTPRouteDestination(IstioModel):
    """A weighted destination of an HTTP route."""

    destination: Destination
    weight: NonNegativeInt | None = None
    headers: Headers | None = None


class RouteDestination(IstioModel):
    """A weighted destination of a TCP or TLS route."""

    destination: Destination
    weight: NonNegativeInt | None = None


class HTTPRedirect(IstioModel):
    """Send a 3xx redirect instead of forwarding."""

    uri: str | None = None
    authority: str | None = None
    port: PortNumber | None = None
    derive_port: Literal["FROM_PROTOCOL_DEFAULT", "FROM_REQUEST_PORT"] | None = None
    scheme: str | None = None
    redirect_code: StrictInt | None = None


class HTTPBody(IstioModel):
    """Direct response body: ``string`` or base64 ``bytes``."""

    string: str | None = None
    bytes: str | None = None


class HTTPDirectResponse(IstioModel):
    """Answer the request directly with a fixed status and body."""

    status: StrictInt
    body: HTTPBody | None = None


class Delegate(IstioModel):
    """Delegate routing to another (hostless) VirtualService."""

    name: str
    namespace: str | None = None


class RegexRewrite(IstioModel):
    """Rewrite the path with a regex and a substitution (``\\1`` groups)."""

    match: RE2Regex
    rewrite: str


class HTTPRewrite(IstioModel):
    """Rewrite the path and/or authority before forwarding."""

    uri: str | None = None
    authority: str | None = None
    uri_regex_rewrite: RegexRewrite | None = None


class HTTPRetry(IstioModel):
    """Retry policy; ``per_try_timeout`` is in seconds."""

    attempts: NonNegativeInt | None = None
    per_try_timeout: Seconds | None = None
    retry_on: str | None = None
    retry_remote_localities: StrictBool | None = None
    retry_ignore_previous_hosts: StrictBool | None = None
    backoff: Seconds | None = None


class FaultDelay(IstioModel):
    """Inject a fixed delay into a percentage of requests."""

    fixed_delay: Seconds | None = None
    percentage: Percent | None = None
    percent: IntPercent | None = None


class FaultAbort(IstioModel):
    """Abort a percentage of requests with an HTTP or gRPC status."""

    http_status: StrictInt | None = None
    grpc_status: str | None = None
    percentage: Percent | None = None


class HTTPFaultInjection(IstioModel):
    """Fault injection: a delay and/or an abort."""

    delay: FaultDelay | None = None
    abort: FaultAbort | None = None


class HTTPMirrorPolicy(IstioModel):
    """One entry of ``mirrors``."""

    destination: Destination
    percentage: Percent | None = None


class CorsPolicy(IstioModel):
    """CORS settings; ``max_age`` is in seconds."""

    allow_origins: tuple[StringMatch, ...] = ()
    allow_origin: tuple[str, ...] = ()
    allow_methods: tuple[str, ...] = ()
    allow_headers: tuple[str, ...] = ()
    expose_headers: tuple[str, ...] = ()
    max_age: Seconds | None = None
    allow_credentials: StrictBool | None = None
    unmatched_preflights: Literal["UNSPECIFIED", "FORWARD", "IGNORE"] | None = None


class HTTPRoute(IstioModel):
    """One HTTP rule: matches plus what to do (route/redirect/directResponse/delegate)."""

    name: str | None = None
    match: tuple[HTTPMatchRequest, ...] = ()
    route: tuple[HTTPRouteDestination, ...] = ()
    redirect: HTTPRedirect | None = None
    direct_response: HTTPDirectResponse | None = None
    delegate: Delegate | None = None
    rewrite: HTTPRewrite | None = None
    timeout: Seconds | None = None
    retries: HTTPRetry | None = None
    fault: HTTPFaultInjection | None = None
    mirror: Destination | None = None
    mirrors: tuple[HTTPMirrorPolicy, ...] = ()
    mirror_percentage: Percent | None = None
    cors_policy: CorsPolicy | None = None
    headers: Headers | None = None


class L4MatchAttributes(IstioModel):
    """TCP route match conditions."""

    destination_subnets: tuple[str, ...] = ()
    port: PortNumber | None = None
    source_labels: Labels = Field(default_factory=dict)
    gateways: tuple[str, ...] = ()
    source_namespace: str | None = None


class TLSMatchAttributes(IstioModel):
    """TLS route match conditions (SNI based)."""

    sni_hosts: tuple[str, ...] = ()
    destination_subnets: tuple[str, ...] = ()
    port: PortNumber | None = None
    source_labels: Labels = Field(default_factory=dict)
    gateways: tuple[str, ...] = ()
    source_namespace: str | None = None


class TCPRoute(IstioModel):
    """Route for opaque TCP traffic."""

    match: tuple[L4MatchAttributes, ...] = ()
    route: tuple[RouteDestination, ...] = ()


class TLSRoute(IstioModel):
    """Route for TLS passthrough traffic by SNI."""

    match: tuple[TLSMatchAttributes, ...] = ()
    route: tuple[RouteDestination, ...] = ()


class VirtualServiceSpec(IstioModel):
    """``VirtualService.spec``."""

    hosts: tuple[str, ...] = ()
    gateways: tuple[str, ...] = ()
    http: tuple[HTTPRoute, ...] = ()
    tls: tuple[TLSRoute, ...] = ()
    tcp: tuple[TCPRoute, ...] = ()
    export_to: tuple[str, ...] = ()


# --------------------------------------------------------------------------- DestinationRule


class HTTPCookie(IstioModel):
    """Cookie used as the consistent-hash key; ``ttl`` in seconds."""

    name: str
    path: str | None = None
    ttl: Seconds | None = None


class RingHash(IstioModel):
    """Ring-hash consistent hashing parameters."""

    minimum_ring_size: NonNegativeInt | None = None


class Maglev(IstioModel):
    """Maglev consistent hashing parameters."""

    table_size: NonNegativeInt | None = None


class ConsistentHashLB(IstioModel):
    """Consistent hashing: exactly one hash key, optionally ringHash or maglev."""

    http_header_name: str | None = None
    http_cookie: HTTPCookie | None = None
    use_source_ip: StrictBool | None = None
    http_query_parameter_name: str | None = None
    ring_hash: RingHash | None = None
    maglev: Maglev | None = None
    minimum_ring_size: NonNegativeInt | None = None


class LocalityDistribute(IstioModel):
    """Send traffic from locality ``from`` to localities ``to`` by weight."""

    from_: str = Field(alias="from")
    to: Mapping[str, NonNegativeInt] = Field(default_factory=dict)


class LocalityFailover(IstioModel):
    """Fail over from region ``from`` to region ``to``."""

    from_: str = Field(alias="from")
    to: str


class LocalityLoadBalancerSetting(IstioModel):
    """Locality-weighted load balancing / failover."""

    distribute: tuple[LocalityDistribute, ...] = ()
    failover: tuple[LocalityFailover, ...] = ()
    failover_priority: tuple[str, ...] = ()
    enabled: StrictBool | None = None


LBAlgorithm = Literal[
    "UNSPECIFIED", "LEAST_CONN", "RANDOM", "PASSTHROUGH", "ROUND_ROBIN", "LEAST_REQUEST"
]


class LoadBalancerSettings(IstioModel):
    """Exactly one of ``simple`` or ``consistent_hash``."""

    simple: LBAlgorithm | None = None
    consistent_hash: ConsistentHashLB | None = None
    locality_lb_setting: LocalityLoadBalancerSetting | None = None
    warmup_duration_secs: Seconds | None = None


class TcpKeepalive(IstioModel):
    """TCP keepalive probes; ``time``/``interval`` in seconds."""

    probes: NonNegativeInt | None = None
    time: Seconds | None = None
    interval: Seconds | None = None


class TCPSettings(IstioModel):
    """TCP connection pool limits; durations in seconds."""

    max_connections: NonNegativeInt | None = None
    connect_timeout: Seconds | None = None
    tcp_keepalive: TcpKeepalive | None = None
    max_connection_duration: Seconds | None = None
    idle_timeout: Seconds | None = None


class HTTPSettings(IstioModel):
    """HTTP connection pool limits; ``idle_timeout`` in seconds."""

    http1_max_pending_requests: NonNegativeInt | None = None
    http2_max_requests: NonNegativeInt | None = None
    max_requests_per_connection: NonNegativeInt | None = None
    max_retries: NonNegativeInt | None = None
    idle_timeout: Seconds | None = None
    h2_upgrade_policy: Literal["DEFAULT", "DO_NOT_UPGRADE", "UPGRADE"] | None = None
    use_client_protocol: StrictBool | None = None
    max_concurrent_streams: NonNegativeInt | None = None


class ConnectionPoolSettings(IstioModel):
    """Connection pool settings for TCP and HTTP."""

    tcp: TCPSettings | None = None
    http: HTTPSettings | None = None


class OutlierDetection(IstioModel):
    """Passive health checking (ejection); durations in seconds."""

    consecutive_errors: NonNegativeInt | None = None
    consecutive_gateway_errors: NonNegativeInt | None = None
    consecutive_5xx_errors: NonNegativeInt | None = Field(
        default=None, alias="consecutive5xxErrors"
    )
    interval: Seconds | None = None
    base_ejection_time: Seconds | None = None
    max_ejection_percent: IntPercent | None = None
    min_health_percent: IntPercent | None = None
    split_external_local_origin_errors: StrictBool | None = None
    consecutive_local_origin_failures: NonNegativeInt | None = None


class ClientTLSSettings(IstioModel):
    """Upstream (client-side) TLS settings."""

    mode: Literal["DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL"] = "DISABLE"
    client_certificate: str | None = None
    private_key: str | None = None
    ca_certificates: str | None = None
    ca_crl: str | None = None
    credential_name: str | None = None
    subject_alt_names: tuple[str, ...] = ()
    sni: str | None = None
    insecure_skip_verify: StrictBool | None = None


class PortTrafficPolicy(IstioModel):
    """Traffic policy overrides for one port."""

    port: PortSelector | None = None
    load_balancer: LoadBalancerSettings | None = None
    connection_pool: ConnectionPoolSettings | None = None
    outlier_detection: OutlierDetection | None = None
    tls: ClientTLSSettings | None = None


class TunnelSettings(IstioModel):
    """Tunnel traffic over HTTP CONNECT/POST to ``target_host:target_port``."""

    protocol: Literal["CONNECT", "POST"] = "CONNECT"
    target_host: str
    target_port: PortNumber


class ProxyProtocol(IstioModel):
    """Send the PROXY protocol header upstream."""

    version: Literal["V1", "V2"] = "V1"


class TrafficPolicy(IstioModel):
    """Load balancing, connection pool, outlier detection and TLS policy."""

    load_balancer: LoadBalancerSettings | None = None
    connection_pool: ConnectionPoolSettings | None = None
    outlier_detection: OutlierDetection | None = None
    tls: ClientTLSSettings | None = None
    port_level_settings: tuple[PortTrafficPolicy, ...] = ()
    tunnel: TunnelSettings | None = None
    proxy_protocol: ProxyProtocol | None = None


class Subset(IstioModel):
    """A named subset of a service's endpoints, selected by labels."""

    name: str
    labels: Labels = Field(default_factory=dict)
    traffic_policy: TrafficPolicy | None = None


class DestinationRuleSpec(IstioModel):
    """``DestinationRule.spec``."""

    host: str
    traffic_policy: TrafficPolicy | None = None
    subsets: tuple[Subset, ...] = ()
    export_to: tuple[str, ...] = ()
    workload_selector: WorkloadSelector | None = None


# ------------------------------------------------------------- ServiceEntry / WorkloadEntry


class WorkloadEntrySpec(IstioModel):
    """``WorkloadEntry.spec``; also the shape of ``ServiceEntry.spec.endpoints[]``."""

    address: str = ""
    ports: Mapping[str, PortNumber] = Field(default_factory=dict)
    labels: Labels = Field(default_factory=dict)
    network: str | None = None
    locality: str | None = None
    weight: NonNegativeInt | None = None
    service_account: str | None = None


class ServiceEntrySpec(IstioModel):
    """``ServiceEntry.spec``."""

    hosts: tuple[str, ...] = ()
    addresses: tuple[str, ...] = ()
    ports: tuple[Port, ...] = ()
    location: Literal["MESH_EXTERNAL", "MESH_INTERNAL"] = "MESH_EXTERNAL"
    resolution: Literal["NONE", "STATIC", "DNS", "DNS_ROUND_ROBIN"] = "NONE"
    endpoints: tuple[WorkloadEntrySpec, ...] = ()
    workload_selector: WorkloadSelector | None = None
    export_to: tuple[str, ...] = ()
    subject_alt_names: tuple[str, ...] = ()


# --------------------------------------------------------------------------- Gateway

TLSVersion = Literal["TLS_AUTO", "TLSV1_0", "TLSV1_1", "TLSV1_2", "TLSV1_3"]


class ServerTLSSettings(IstioModel):
    """Downstream (server-side) TLS settings of a Gateway server."""

    https_redirect: StrictBool = False
    mode: (
        Literal[
            "PASSTHROUGH",
            "SIMPLE",
            "MUTUAL",
            "AUTO_PASSTHROUGH",
            "ISTIO_MUTUAL",
            "OPTIONAL_MUTUAL",
        ]
        | None
    ) = None
    server_certificate: str | None = None
    private_key: str | None = None
    ca_certificates: str | None = None
    ca_crl: str | None = None
    credential_name: str | None = None
    credential_names: tuple[str, ...] = ()
    subject_alt_names: tuple[str, ...] = ()
    verify_certificate_spki: tuple[str, ...] = ()
    verify_certificate_hash: tuple[str, ...] = ()
    min_protocol_version: TLSVersion | None = None
    max_protocol_version: TLSVersion | None = None
    cipher_suites: tuple[str, ...] = ()


class Server(IstioModel):
    """One listener of a Gateway."""

    port: Port
    hosts: tuple[str, ...] = ()
    tls: ServerTLSSettings | None = None
    bind: str | None = None
    name: str | None = None
    default_endpoint: str | None = None


class GatewaySpec(IstioModel):
    """``Gateway.spec``."""

    selector: Labels = Field(default_factory=dict)
    servers: tuple[Server, ...] = ()


# --------------------------------------------------------------------------- Sidecar

CaptureMode = Literal["DEFAULT", "IPTABLES", "NONE"]


class IstioIngressListener(IstioModel):
    """Inbound listener of a Sidecar."""

    port: Port
    bind: str | None = None
    capture_mode: CaptureMode | None = None
    default_endpoint: str | None = None
    tls: ServerTLSSettings | None = None
    connection_pool: ConnectionPoolSettings | None = None


class IstioEgressListener(IstioModel):
    """Outbound listener of a Sidecar: which ``namespace/host`` it may reach."""

    port: Port | None = None
    bind: str | None = None
    capture_mode: CaptureMode | None = None
    hosts: tuple[str, ...] = ()


class OutboundTrafficPolicy(IstioModel):
    """What to do with traffic to hosts not in the registry."""

    mode: Literal["REGISTRY_ONLY", "ALLOW_ANY"] = "REGISTRY_ONLY"
    egress_proxy: Destination | None = None


class SidecarSpec(IstioModel):
    """``Sidecar.spec``."""

    workload_selector: WorkloadSelector | None = None
    ingress: tuple[IstioIngressListener, ...] = ()
    egress: tuple[IstioEgressListener, ...] = ()
    outbound_traffic_policy: OutboundTrafficPolicy | None = None
    inbound_connection_pool: ConnectionPoolSettings | None = None
