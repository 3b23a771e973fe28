"""The HTTP API's route table, and its OpenAPI 3.1 description built from that table.

:data:`ROUTES` names, for every route, its method and path, the :class:`~.http_api.Api`
method that handles it, its query parameters, request body and responses. ``Api.app()``
registers exactly these routes and ``GET /v1/openapi.json`` serves :func:`build_spec` of the
same table, so the description cannot drift from the routes. Request bodies and query
parameters are pydantic models that the handlers validate with, so what the description
promises is what the server checks; responses are described by models too (extra fields are
allowed, so adding a field to a response never breaks a client that validates it).

Why not a framework that generates all this: the API is a dozen routes, the control plane
already depends on aiohttp and pydantic, and the agent-side client must stay tiny.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import ip_address
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    RootModel,
    WithJsonSchema,
    model_validator,
)
from pydantic.json_schema import models_json_schema

from tsunagi.api.durations import DurationError, parse_duration
from tsunagi.api.names import DNS1123_LABEL_PATTERN, check_dns_subdomain

MIB = 1024 * 1024

# ----------------------------------------------------------------------------- requests


class _Body(BaseModel):
    """A JSON request body: exact types, no unknown fields (a typo such as ``dryrun`` must
    not silently apply for real)."""

    model_config = ConfigDict(extra="forbid", strict=True)


class ApplyRequest(_Body):
    """Create or update every resource in ``text``; all or nothing."""

    text: str = Field(
        description="One or more YAML documents (Istio resources, Kubernetes Secrets), `---` apart."
    )
    filename: str = Field("", description="Named in error messages (default `<stdin>`).")
    dry_run: bool = Field(False, description="Validate and report, but store nothing.")


_NonEmpty = Annotated[str, Field(min_length=1)]


class DeleteRequest(_Body):
    """Delete the resources in ``text``, or one resource by ``kind`` and ``name``."""

    model_config = ConfigDict(
        json_schema_extra={"anyOf": [{"required": ["text"]}, {"required": ["kind", "name"]}]}
    )

    text: str | None = Field(None, description="YAML documents naming what to delete.")
    filename: str = Field("", description="Named in error messages (default `<stdin>`).")
    kind: _NonEmpty | None = Field(
        None, description="A kind or its short name: `VirtualService`, `vs`, `workloads`…"
    )
    name: _NonEmpty | None = Field(None, description="The resource's name.")
    namespace: str = Field("", description="The resource's namespace (default `default`).")

    @model_validator(mode="after")
    def _text_or_kind_and_name(self) -> DeleteRequest:
        if self.text is None and (self.kind is None or self.name is None):
            raise ValueError("give `text` (YAML documents) or both `kind` and `name`")
        return self


DNS_LABEL = DNS1123_LABEL_PATTERN
_DnsLabel = Annotated[str, Field(pattern=DNS_LABEL)]
_Port = Annotated[int, Field(ge=1, le=65535)]
_PortOrZero = Annotated[int, Field(ge=0, le=65535)]


def _check_ip(text: str) -> str:
    try:
        ip_address(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an IPv4 or IPv6 address") from None
    return text


def _check_service_account(text: str) -> str:
    problem = check_dns_subdomain(text, "service account")
    if problem:
        raise ValueError(problem)
    return text


_ServiceAccount = Annotated[
    str,
    AfterValidator(_check_service_account),
    WithJsonSchema({"type": "string", "maxLength": 253}, mode="validation"),
]

_Ip = Annotated[
    str,
    AfterValidator(_check_ip),
    WithJsonSchema(
        {"type": "string", "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}]}, mode="validation"
    ),
]


class InstanceRequest(_Body):
    """One running workload behind a service port, as ``tsunagi run`` registers it."""

    name: _DnsLabel = Field(description="Unique within the namespace.")
    service: _DnsLabel
    namespace: _DnsLabel = "default"
    port: _PortOrZero = Field(
        description="The service port clients use (0 for a gateway without `--port`)."
    )
    address: _Ip = Field(
        "127.0.0.1", description="Where the workload's sidecar (or the gateway) listens."
    )
    target_port: _PortOrZero = Field(
        description="The sidecar's inbound port at `address` (a gateway's listen port for "
        "`port`; 0 for a gateway without `--port`)."
    )
    labels: dict[str, str] = Field(default_factory=dict)
    locality: Annotated[str, Field(pattern=r"^[^/]*(/[^/]*){0,2}$")] = Field(
        "", description="`REGION[/ZONE[/SUBZONE]]`."
    )
    healthy: bool = True
    protocol: str = Field(
        "HTTP",
        description="The service port's protocol, one of Istio's names (case-insensitive): "
        "HTTP, HTTP2, GRPC, GRPC-WEB, HTTP_PROXY, HTTPS, TCP, TLS, MONGO, MYSQL, REDIS, UDP.",
    )
    metrics_port: Annotated[int, Field(ge=0, le=65535)] = Field(
        0,
        description="Where the proxy serves `/stats/prometheus` at `metrics_address` (else "
        "`address`; Istio's metrics); 0: none. Listed by `GET /v1/prometheus/targets`.",
    )
    kind: Literal["sidecar", "gateway"] = Field(
        "sidecar",
        description="`gateway` for `tsunagi gateway`: it listens on the ports its Gateways' "
        "servers name; with no service port (`port` 0) it is no service's endpoint, with one "
        "(`--port SERVICEPORT:LISTENPORT`, one registration each) an endpoint of its own "
        "service at `port`.",
    )
    metrics_address: _Ip | Literal[""] = Field(
        "",
        description="Where `metrics_port` listens when not at `address` (a gateway's "
        "`--metrics-address`, 127.0.0.1 by default); empty: `address`.",
    )
    binds_privileged_ports: bool = Field(
        False,
        description="A gateway that runs as root or with CAP_NET_BIND_SERVICE, so it may "
        "bind ports below 1024: `apply` does not warn about its Gateways' low ports.",
    )
    service_account: _ServiceAccount | Literal[""] = Field(
        "",
        description="The workload's service account (`tsunagi run --service-account`), the "
        "last part of its SPIFFE ID; empty: the service name. A workload token registers "
        "only instances of its own namespace and service account.",
    )


def _check_duration(text: str) -> str:
    try:
        seconds = parse_duration(text)
    except DurationError as e:
        raise ValueError(str(e)) from None
    if seconds < 1:
        raise ValueError(f"{text!r} is under a second; give e.g. 1h")
    return text


_Duration = Annotated[str, AfterValidator(_check_duration)]


class CertificateRequest(_Body):
    """A workload asks the CA to sign its key."""

    csr: str = Field(
        min_length=1,
        max_length=64 * 1024,
        description="PEM certificate signing request. Its key: ECDSA P-256 (or RSA of at "
        "least 2048 bits); its only SAN, if any, the SPIFFE ID asked for. Its subject and "
        "other extensions are ignored.",
    )
    namespace: _DnsLabel
    serviceAccount: _ServiceAccount
    ttl: _Duration | Literal[""] = Field(
        "",
        description="Lifetime asked for, e.g. `1h`; at most (and by default) `tsunagi up "
        "--workload-cert-ttl`.",
    )
    gateway: bool = Field(
        False,
        description="A gateway's certificate: its proxy may receive the private keys of its "
        "Gateways' credentials over xDS. 403 unless the token is the admin's or was made "
        "with `tsunagi token create --gateway`.",
    )
    proxy: str = Field(
        "",
        max_length=253,
        description="The proxy (node id `NAME.NAMESPACE`, in the identity's namespace) the "
        "certificate is for: `tsunagi proxy-config secret` then shows it as `default`.",
    )


class TokenRequest(_Body):
    """A workload token for one identity."""

    namespace: _DnsLabel
    serviceAccount: _ServiceAccount
    ttl: _Duration | Literal[""] = Field(
        "", description="Lifetime, e.g. `8h` (default 24h, at most 366 days)."
    )
    gateway: bool = Field(
        False,
        description="The token may also obtain a gateway's certificate (`tsunagi gateway`), "
        "whose proxy receives the private keys of its Gateways' credentials.",
    )


class _Query(BaseModel):
    """Query parameters: strings converted to the field's type; no unknown ones (a typo such
    as ``namespce`` must not silently widen a query)."""

    model_config = ConfigDict(extra="forbid")


class ResourcesQuery(_Query):
    kind: str = Field("", description="A kind or short name (`vs`, `workloads`…); all if empty.")
    namespace: str = Field("", description="Only this namespace; all if empty.")
    name: str = Field("", description="Only this name; 404 if nothing matches.")


def _local() -> Any:
    """The ``local`` query parameter of proxy listings (one definition, for its text)."""
    return Field(
        False,
        description="Only this replica's proxies (what replicas ask each other); by default "
        "the proxies of every live replica on the store.",
    )


class WaitQuery(_Query):
    revision: int = Field(0, ge=0, description="Wait until proxies have config this new.")
    timeout: float = Field(
        30.0, ge=0, allow_inf_nan=False, description="Seconds to wait before answering 504."
    )
    since: float = Field(
        0.0,
        ge=0,
        allow_inf_nan=False,
        description="Unix time the caller started (for `elapsed_ms`); 0 means now.",
    )
    local: bool = _local()


class ProxiesQuery(_Query):
    local: bool = _local()


class ProxySecretsQuery(_Query):
    namespace: str = Field(
        "",
        description="With a proxy name without its namespace (`NAME` rather than "
        "`NAME.NAMESPACE`): its namespace (default `default`).",
    )
    local: bool = Field(
        False,
        description="Only a proxy connected to this replica (what replicas ask each other); "
        "by default, one connected to any live replica on the store.",
    )


class GraphQuery(_Query):
    window: float = Field(
        60.0, ge=1, le=3600, allow_inf_nan=False, description="Seconds of traffic to draw."
    )


class SeriesQuery(_Query):
    kind: Literal["service", "workload"] = Field(
        "service", description="A service's or a workload's inbound requests."
    )
    namespace: str = Field("default", description="Its namespace.")
    name: str = Field(min_length=1, description="The service's or the workload's name.")
    window: float = Field(600.0, ge=10, le=3600, allow_inf_nan=False, description="Seconds back.")
    step: float = Field(10.0, ge=1, le=3600, allow_inf_nan=False, description="Seconds per point.")


# ----------------------------------------------------------------------------- responses


class ErrorResponse(BaseModel):
    """Every error: a one-line summary and the list of individual problems."""

    model_config = ConfigDict(extra="allow")

    error: str
    errors: list[str]


class HealthResponse(BaseModel):
    ok: bool
    revision: int


class XdsAddress(BaseModel):
    host: str
    port: int
    identity: str | None = Field(
        None,
        description="The SPIFFE ID the xDS port's serving certificate names: the only "
        "server a proxy accepts there. The port takes only mutual TLS; a proxy presents its "
        "workload certificate (`POST /v1/certificates`), whose namespace and service account "
        "must be those its node metadata claims.",
    )


class Trust(BaseModel):
    trustDomain: str = Field(description="The first part of every workload's SPIFFE ID.")
    rootCertificates: str = Field(
        description="The trust bundle (PEM): the xDS server's and every workload's "
        "certificate chain up to one of these."
    )


class XdsReplica(BaseModel):
    host: str
    port: int


class BootstrapResponse(BaseModel):
    """What a sidecar needs besides the API address and token."""

    xds: XdsAddress
    xdsReplicas: list[XdsReplica] = Field(
        default_factory=list,
        description="Every live replica's xDS address, this one's first (several control "
        "planes on one etcd store): the proxy's xDS cluster lists them all, so it reconnects "
        "to a live one when its replica goes away. Empty: this control plane alone.",
    )
    trust: Trust | None = None


class ResultItem(BaseModel):
    kind: str
    namespace: str
    name: str
    action: Literal["created", "configured", "unchanged", "deleted"]


class ApplyResponse(BaseModel):
    revision: int = Field(description="The store's revision after the apply; wait for this.")
    results: list[ResultItem]
    warnings: list[str]
    notes: list[str] = Field(
        default_factory=list,
        description="Not problems, but worth knowing: e.g. a RequestAuthentication's "
        "jwksUri the control plane fetches in the background (see its `status`).",
    )
    dry_run: bool


class DeleteResponse(BaseModel):
    revision: int
    results: list[ResultItem]


class ResourceItem(BaseModel):
    kind: str
    namespace: str
    name: str
    revision: int = Field(description="The store revision that last changed this resource.")
    document: dict[str, Any] = Field(
        description="The resource as applied (or registered). A Secret's values other than "
        "certificates (tls.crt, ca.crt, cert, cacert) read `<redacted>`: this API never "
        "returns private keys (gateways receive them over SDS, on their mutual-TLS xDS stream)."
    )
    status: dict[str, Any] | None = Field(
        None,
        description="Istio-style `validationMessages`, when translating it failed; for a "
        "RequestAuthentication that fetches keys, `conditions` (type `JwksFetched`) and "
        "`jwks`: per jwksUri (or OpenID discovery URL) its `state` (OK, FAILING or "
        "PENDING), `keys`, `lastFetched`, `error`, `failingSince` and `nextFetch` (computed "
        "when asked, never stored).",
    )


class ResourceList(BaseModel):
    revision: int
    items: list[ResourceItem]


class ResolveRequest(_Body):
    """Upstream hosts as a sidecar's Envoy logs them (``%UPSTREAM_HOST%``)."""

    addresses: list[Annotated[str, Field(max_length=64)]] = Field(
        max_length=256, description="`IP:PORT` (or `[IPv6]:PORT`) of endpoints a sidecar called."
    )


class ResolveResponse(BaseModel):
    workloads: dict[str, str] = Field(
        description="Of the addresses asked about, those of registered instances, each with "
        "its workload in Istio's `istio.workload` form "
        "(`workload;namespace;canonical service;canonical revision;cluster`); others are left "
        "out."
    )


class RegisterResponse(BaseModel):
    revision: int
    ttl: float = Field(description="Heartbeat at least this often (seconds) or be removed.")


class CertificateResponse(BaseModel):
    """A signed workload certificate."""

    certificateChain: str = Field(description="PEM: the leaf, then intermediates.")
    rootCertificates: str = Field(description="PEM: the trust bundle.")
    spiffeId: str = Field(description="`spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT`.")
    serial: str = Field(description="Hex, lower case.")
    notBefore: int = Field(description="Unix seconds.")
    notAfter: int = Field(description="Unix seconds.")
    token: str | None = Field(
        None,
        description="Only for a workload token's caller: a fresh workload token for the same "
        "identity, to use from now on (the agent switches to it), so a running workload "
        "outlives the token it started with.",
    )
    tokenExpires: int | None = Field(
        None, description="Unix seconds: one certificate lifetime after `notAfter`."
    )


class TokenResponse(BaseModel):
    """A workload token: pass it as `--token` or `TSUNAGI_TOKEN` to `tsunagi run`."""

    token: str
    namespace: str
    serviceAccount: str
    spiffeId: str = Field(description="The one identity the token may obtain.")
    expires: int = Field(description="Unix seconds.")
    gateway: bool = Field(False, description="It may obtain a gateway's certificate.")


class OkResponse(BaseModel):
    ok: bool


class RevisionResponse(BaseModel):
    revision: int


class TypeState(BaseModel):
    state: Literal["SYNCED", "STALE", "NACKED"]
    acked: str | None
    expected: str | None
    message: str | None


class ProxyStatus(BaseModel):
    id: str
    service: str
    namespace: str
    kind: str
    outbound_port: Any = Field(description="From the proxy's bootstrap metadata.")
    gateway_ports: dict[str, int] = Field(
        default_factory=dict,
        description="A gateway's service port → the port it listens on (tsunagi gateway --port).",
    )
    revision: int
    connected_at: float
    synced: bool
    nacked: bool
    message: str
    types: dict[str, TypeState] = Field(description="Keyed by short xDS type name (CDS, EDS…).")
    translation_errors: list[str] = Field(
        default_factory=list, description="Config left out of this proxy's: it failed to translate."
    )
    mtls: str = Field(
        default="-",
        description="Its inbound ports' PeerAuthentication mode (STRICT, PERMISSIVE, DISABLE; "
        "PORT:MODE pairs when they differ; - without inbound ports).",
    )
    replica: str = Field(
        default="",
        description="The control plane (its API address) this proxy's xDS stream is "
        "connected to, when several replicas share the store.",
    )


class ReplicaReport(BaseModel):
    name: str = Field(description="A replica's API address; `etcd` when etcd did not answer.")
    api: str
    complete: bool = Field(description="It answered (for a wait: its proxies are in sync).")
    error: str = Field(description="Why it did not answer; empty when it did.")


class ProxyList(BaseModel):
    proxies: list[ProxyStatus]
    replicas: list[ReplicaReport] = Field(
        default_factory=list,
        description="Every live replica asked, when several share the store.",
    )


class CertificateInfo(BaseModel):
    """One certificate's public facts (never a key)."""

    serial_number: str = Field(description="Hex, as `openssl x509 -serial` and istioctl show it.")
    not_before: str = Field(description="UTC, `2006-01-02T15:04:05Z`.")
    not_after: str = Field(description="UTC, `2006-01-02T15:04:05Z`.")
    valid: bool = Field(description="Now is between not-before and not-after.")
    subject: str
    issuer: str
    sans: list[str] = Field(description="`DNS:…`, `IP:…`, `URI:…`.")


class ProxySecret(BaseModel):
    """One SDS secret of a proxy; its columns are those of its first certificate (the leaf
    of a chain), as `istioctl proxy-config secret` shows them."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(
        description="The SDS resource name: `default`, `ROOTCA`, `kubernetes://NAME`, `…-cacert`."
    )
    type: Literal["Cert Chain", "CA", ""] = Field(
        description="`Cert Chain`: a certificate and its key; `CA`: certificates that verify "
        "peers; empty when the control plane has nothing of this name."
    )
    status: Literal["ACTIVE", "WARMING", "PENDING"] = Field(
        description="`ACTIVE`: the proxy ACKed this version; `WARMING`: it asked for it and "
        "has not ACKed this version (yet); `PENDING`: it has not asked for it yet."
    )
    source: Literal["control-plane", "agent"] = Field(
        description="Who serves it to Envoy: the control plane over ADS, or the proxy's agent "
        "over local SDS (workload certificates)."
    )
    version: str | None = Field(description="The version the control plane has for it.")
    acked_version: str | None = Field(description="The version the proxy last ACKed of it.")
    valid: bool
    serial_number: str
    not_after: str
    not_before: str
    subject: str
    issuer: str
    sans: list[str]
    certificates: list[CertificateInfo] = Field(description="Every certificate, in order.")
    message: str | None = Field(description="Why a row lacks certificates.")


class ProxySecrets(BaseModel):
    proxy: str = Field(description="The proxy's name, as `GET /v1/proxies` gives its `id`.")
    kind: str
    namespace: str
    secrets: list[ProxySecret] = Field(
        description="The proxy's own certificate (`default`) and trust bundle (`ROOTCA`) "
        "first, when the CA issued them to it by name; then the pushed ones, sorted by name."
    )
    replica: str = Field(
        "",
        description="The replica (its API address, `host:port`) the proxy is connected to, "
        "when several replicas share the store.",
    )


class WaitResponse(BaseModel):
    complete: bool = Field(description="Every connected proxy ACKed (or NACKed) the revision.")
    elapsed_ms: float
    proxies: list[ProxyStatus]
    replicas: list[ReplicaReport] = Field(
        default_factory=list,
        description="Every live replica asked, when several share the store; a replica that "
        "did not answer makes the wait incomplete.",
    )


class MetricsText(RootModel[str]):
    """Prometheus' text exposition format 0.0.4: istiod's ``pilot_*`` metrics (pushes,
    push time, ACK/NACK, connected proxies, convergence time) and ``process_*``."""


class TargetGroup(BaseModel):
    """One group of Prometheus' HTTP service discovery."""

    targets: list[str] = Field(description="`host:port` to scrape.")
    labels: dict[str, str] = Field(
        description="`__metrics_path__`, `__meta_tsunagi_role` (`control-plane`, `sidecar` or "
        "`gateway`), "
        "and Istio's pod labels: `namespace`, `pod`, `app`, `version`."
    )


class TargetGroups(RootModel[list[TargetGroup]]):
    """Prometheus HTTP SD: the control plane, then each sidecar with a metrics port."""


class GraphNode(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    type: Literal["app", "workload", "service", "unknown"] = Field(
        description="`app`: a workload by app and version; `unknown`: callers outside the mesh."
    )
    label: str
    health: Literal["healthy", "degraded", "failure", "idle"]


class GraphEdge(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    source: str
    target: str
    rate: float = Field(description="Requests per second over the window.")
    requests: float
    error_pct: float = Field(description="% of requests with 5xx, no response, or Envoy flags.")
    p99_ms: float | None
    health: Literal["healthy", "degraded", "failure", "idle"] = Field(
        description="Kiali's defaults: any 5xx degrades, 10 % fails; 4xx: 10 % / 20 %."
    )


class GraphResponse(BaseModel):
    """Kiali's versioned-app graph from `istio_requests_total` and
    `istio_request_duration_milliseconds`."""

    window: float
    nodes: list[GraphNode]
    edges: list[GraphEdge]


class SeriesResponse(BaseModel):
    """Per step: requests per second, success rate (%) and latency percentiles (ms); null
    where there were no requests."""

    model_config = ConfigDict(extra="allow")

    kind: str
    namespace: str
    name: str
    window: float
    step: float
    times: list[float] = Field(description="Each step's end, Unix seconds.")
    rps: list[float]
    success_pct: list[float | None]
    p50_ms: list[float | None]
    p90_ms: list[float | None]
    p99_ms: list[float | None]


class OpenApiDocument(BaseModel):
    """This description."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"required": ["openapi"]})


# ----------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: str
    """The name of the :class:`~.http_api.Api` method that serves it."""
    summary: str
    ok: type[BaseModel]
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    errors: tuple[int, ...] = ()
    """Error statuses besides those every route can answer (401, 403, 503)."""
    other: Mapping[int, tuple[str, type[BaseModel]]] = field(default_factory=dict)
    """Non-error answers besides 200."""
    content_type: str = "application/json"
    """The media type of the 200 answer."""

    @property
    def operation_id(self) -> str:
        return self.handler


_BODY_ERRORS = (400, 408, 413)

ROUTES: tuple[Route, ...] = (
    Route("GET", "/healthz", "healthz", "The control plane is up; its store revision.",
          HealthResponse),
    Route("GET", "/v1/openapi.json", "openapi", "This description of the API.", OpenApiDocument),
    Route("GET", "/v1/bootstrap", "bootstrap", "Where sidecars find the xDS server, whom "
          "to expect there, and the mesh's trust domain and trust bundle.",
          BootstrapResponse),
    Route("POST", "/v1/apply", "apply", "Create or update resources from YAML (all or nothing).",
          ApplyResponse, body=ApplyRequest, errors=_BODY_ERRORS),
    Route("POST", "/v1/delete", "delete", "Delete resources (all or nothing).", DeleteResponse,
          body=DeleteRequest, errors=(*_BODY_ERRORS, 404)),
    Route("GET", "/v1/resources", "list_resources", "Stored resources and workload instances.",
          ResourceList, query=ResourcesQuery, errors=(400, 404)),
    Route("POST", "/v1/certificates", "certificates", "Sign a workload's CSR: its SPIFFE "
          "certificate and the trust bundle (403 for an identity the token may not obtain).",
          CertificateResponse, body=CertificateRequest, errors=_BODY_ERRORS),
    Route("POST", "/v1/tokens", "tokens", "Make a workload token for one identity (admin "
          "token only).", TokenResponse, body=TokenRequest, errors=_BODY_ERRORS),
    Route("POST", "/v1/instances", "register", "Register (or refresh) a workload instance.",
          RegisterResponse, body=InstanceRequest, errors=_BODY_ERRORS),
    Route("POST", "/v1/instances/resolve", "resolve", "The workloads behind endpoint "
          "addresses (what a sidecar's metrics name as destination).", ResolveResponse,
          body=ResolveRequest, errors=_BODY_ERRORS),
    Route("POST", "/v1/instances/{namespace}/{name}/heartbeat", "heartbeat",
          "Extend an instance's lease; 404 means register again.", OkResponse, errors=(404,)),
    Route("DELETE", "/v1/instances/{namespace}/{name}", "deregister",
          "Remove a workload instance.", RevisionResponse, errors=(404,)),
    Route("GET", "/v1/proxies", "proxies", "Connected proxies and what config each has ACKed.",
          ProxyList, query=ProxiesQuery, errors=(400,)),
    Route("GET", "/v1/proxies/{proxy}/secrets", "proxy_secrets",
          "The certificates one proxy holds, and whether it ACKed them (never a key).",
          ProxySecrets, query=ProxySecretsQuery, errors=(400, 404)),
    Route("GET", "/v1/wait", "wait",
          "Wait until every connected proxy has ACKed (or NACKed) a revision.", WaitResponse,
          query=WaitQuery, errors=(400,),
          other={504: ("Timed out; `proxies` shows who is not in sync.", WaitResponse)}),
    Route("GET", "/v1/graph", "graph", "The service graph: workloads, services, and calls with "
          "rate, error % and p99.", GraphResponse, query=GraphQuery, errors=(400, 502)),
    Route("GET", "/v1/metrics/series", "metrics_series", "A service's or workload's request "
          "volume, success rate and latency percentiles over time.", SeriesResponse,
          query=SeriesQuery, errors=(400, 502)),
    Route("GET", "/metrics", "metrics_text",
          "The control plane's own metrics for Prometheus (istiod's `pilot_*` names).",
          MetricsText, content_type="text/plain; version=0.0.4"),
    Route("GET", "/v1/prometheus/targets", "prometheus_targets",
          "Prometheus HTTP service discovery: what to scrape, with Istio's labels.",
          TargetGroups),
)  # fmt: skip


# ----------------------------------------------------------------------------- the document

_ERROR_DESCRIPTIONS = {
    400: "Invalid input: not JSON, a wrong type, an unknown field, a bad query parameter, an "
    "invalid resource. `errors` lists every problem (for resources: file, document, field path).",
    401: "No `Authorization: Bearer <token>` header, or a token this control plane does not "
    "know or that has expired.",
    403: "A workload token asking for more than its identity may: another identity, another "
    "namespace's instances, or an admin route.",
    404: "Not found.",
    408: "The request body did not arrive in time.",
    413: "The request body is over the size limit.",
    502: "The metrics backend (the Prometheus given with `tsunagi up --prometheus`) did not "
    "answer or refused the query.",
    503: "Too many concurrent connections from this client address; sent as soon as the "
    "connection opens, which is then closed.",
}
_ALWAYS = (401, 403, 503)


@dataclass(frozen=True)
class Limits:
    """The numbers the description states (they are :class:`~.http_api.Api` settings)."""

    max_body_size: int
    max_connections_per_client: int
    idle_timeout: float
    body_timeout: float
    max_wait_timeout: float


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _parameters(route: Route, schemas: Mapping[str, Any]) -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in re.findall(r"{(\w+)}", route.path)
    ]
    if route.query is not None:
        props = schemas[route.query.__name__]["properties"]
        for name, info in route.query.model_fields.items():
            schema = dict(props[name])
            description = schema.pop("description", "")
            schema.pop("title", None)
            params.append(
                {
                    "name": name,
                    "in": "query",
                    "required": info.is_required(),
                    "description": description,
                    "schema": schema,
                }
            )
    return params


def _json(schema: Mapping[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": dict(schema)}}


def build_spec(limits: Limits, version: str = "") -> dict[str, Any]:
    """The OpenAPI 3.1 document for :data:`ROUTES`, stating ``limits``."""
    models: set[type[BaseModel]] = {ErrorResponse}
    for r in ROUTES:
        models |= {r.ok, *(m for _, m in r.other.values())}
        models |= {m for m in (r.body, r.query) if m is not None}
    _, defs = models_json_schema(
        [(m, "validation") for m in sorted(models, key=lambda m: m.__name__)],
        ref_template="#/components/schemas/{model}",
    )
    schemas: dict[str, Any] = defs["$defs"]
    wait_timeout = schemas["WaitQuery"]["properties"]["timeout"]
    wait_timeout["maximum"] = limits.max_wait_timeout
    wait_timeout["description"] += f" At most {limits.max_wait_timeout:g}."
    query_models = {r.query.__name__ for r in ROUTES if r.query is not None}

    paths: dict[str, dict[str, Any]] = {}
    for r in ROUTES:
        responses: dict[str, Any] = {
            "200": {
                "description": "OK",
                "content": {r.content_type: {"schema": _ref(r.ok.__name__)}},
            }
        }
        for status, (description, model) in r.other.items():
            responses[str(status)] = {
                "description": description,
                "content": _json(_ref(model.__name__)),
            }
        for status in sorted({*r.errors, *_ALWAYS}):
            responses[str(status)] = {"$ref": f"#/components/responses/Error{status}"}
        op: dict[str, Any] = {
            "operationId": r.operation_id,
            "summary": r.summary,
            "responses": responses,
        }
        if r.body is not None:
            op["requestBody"] = {
                "required": True,
                "content": _json(_ref(r.body.__name__)),
            }
        if params := _parameters(r, schemas):
            op["parameters"] = params
        paths.setdefault(r.path, {})[r.method.lower()] = op

    used = sorted({s for r in ROUTES for s in (*r.errors, *_ALWAYS)})
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Tsunagi control plane API",
            "version": version or "1",
            "description": (
                "The JSON API the `tsunagi` CLI and sidecar agents use. Every request needs "
                "`Authorization: Bearer <token>`: the admin token `tsunagi up` writes in its "
                "state directory, or a workload token (`tsunagi token create`, `POST "
                "/v1/tokens`), which may only run its own identity's sidecars: `/healthz`, "
                "`/v1/bootstrap`, its own certificates and instances, `/v1/instances/resolve` "
                'and `/v1/wait`. Every error is `{"error": str, "errors": [str]}`.\n\n'
                f"Limits: request bodies up to {limits.max_body_size} bytes (413 beyond), "
                f"read within {limits.body_timeout:g} s (408); at most "
                f"{limits.max_connections_per_client} concurrent connections per client "
                f"address (503 beyond); connections idle for {limits.idle_timeout:g} s, or "
                "that take that long to send a request's headers, are closed."
            ),
        },
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {k: v for k, v in sorted(schemas.items()) if k not in query_models},
            "responses": {
                f"Error{s}": {
                    "description": _ERROR_DESCRIPTIONS[s],
                    "content": _json(_ref("ErrorResponse")),
                }
                for s in used
            },
        },
    }
