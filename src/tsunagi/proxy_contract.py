"""What a proxy's agent and the control plane both rely on, spelled in one place.

The agent writes the node metadata into Envoy's bootstrap and reads Envoy's stats; the
control plane reads that metadata (``mesh.Node``) and names the listeners and stats in the
config it sends (``xds/translate``). The package map forbids either side to import the
other, so what they must agree on lives here, in a module that imports nothing of tsunagi
and that any package may import. A name changed here changes on both sides at once.
"""

from __future__ import annotations

from collections.abc import Mapping

DEFAULT_OUTBOUND_PORT = 15001
"""Istio's outbound port: where the app's ``HTTP_PROXY`` points unless one is allocated."""

DEFAULT_KIND = "sidecar"
"""A proxy beside an app; the other kind is ``gateway``."""
GATEWAY_KIND = "gateway"
"""A standalone proxy with no app (``tsunagi gateway``): it serves the ``Gateway`` resources
whose selector matches its labels, on the ports their servers name."""

# Keys of the xDS node metadata the agent writes into the bootstrap.
META_NAMESPACE = "namespace"
META_SERVICE_ACCOUNT = "service_account"
"""``tsunagi run/gateway --service-account``. With :data:`META_NAMESPACE`, what the node
claims to be; the xDS server refuses the stream unless its client certificate's SPIFFE ID
names the same namespace and service account (:mod:`tsunagi.xds.peer_identity`)."""
META_SERVICE = "service"
META_LABELS = "labels"
META_OUTBOUND_PORT = "outbound_port"
META_INBOUND = "inbound"
"""service port → ``{META_INBOUND_LISTEN: inbound listener port, META_INBOUND_APP: app port}``."""
META_INBOUND_LISTEN = "listen"
META_INBOUND_APP = "app"
META_INBOUND_PROTOCOL = "protocol"
"""The service port's protocol (``tsunagi.protocols`` names); absent means HTTP. HTTP/2
protocols make the inbound cluster speak h2c to the app; non-HTTP ones get a TCP proxy."""
META_KIND = "kind"
META_INBOUND_ADDRESS = "inbound_address"
"""Where a sidecar's inbound listeners bind (``tsunagi run --address``): the address it
registers, so that sidecars on other hosts reach it there; absent: 127.0.0.1."""
DEFAULT_INBOUND_ADDRESS = "127.0.0.1"
META_INTERCEPT = "intercept"
"""``tsunagi run --intercept``: ``{META_INTERCEPT_CAPTURE: port, META_INTERCEPT_DNS: port,
META_INTERCEPT_RESOLVERS: ["IP[:PORT]", ...]}``; absent for a sidecar that is not captured."""
META_INTERCEPT_CAPTURE = "capture_port"
META_INTERCEPT_DNS = "dns_port"
META_INTERCEPT_RESOLVERS = "resolvers"
INTERCEPT_GID = 1337
"""The group Envoy runs as under ``--intercept`` (Istio's proxy uid/gid): iptables lets its
own connections and queries through (``-m owner --gid-owner``)."""
META_GATEWAY_ADDRESS = "gateway_address"
"""A gateway's listen address (``tsunagi gateway --address``, default 127.0.0.1): its
listeners bind there, on the port numbers its Gateways' servers name."""
META_GATEWAY_PORTS = "gateway_ports"
"""``tsunagi gateway --port SERVICEPORT:LISTENPORT``: ``{"SERVICEPORT": LISTENPORT}``. The
gateway is then also its service's endpoint at those ports (Kubernetes' Service port and
targetPort), and a server whose ``port.number`` is a SERVICEPORT listens on LISTENPORT, as
Istio translates a Gateway's port to its gateway Service's targetPort."""


SDS_DIR = "sds"
"""Where the agent writes its proxy's certificates as SDS files, relative to Envoy's working
directory (the agent's workdir): one path for every proxy, so the clusters and listeners
that name them are the same for all and stay shared. The agent replaces a file by renaming
a new one into the directory, which Envoy watches (measured: the new certificate is served
without a restart)."""
WORKLOAD_SECRET = "default"
"""The SDS name of the proxy's own certificate chain and key (Istio's name)."""
ROOT_CA_SECRET = "ROOTCA"
"""The SDS name of the mesh's trust bundle, what peers' certificates are checked against
(Istio's name)."""


def sds_file(name: str) -> str:
    """The SDS file of secret ``name``, relative to Envoy's working directory."""
    return f"{SDS_DIR}/{name}.json"


def sds_secret_config(name: str) -> dict[str, object]:
    """An ``SdsSecretConfig`` naming secret ``name`` from the agent's SDS files (for
    ``tls_certificate_sds_secret_configs`` and ``validation_context_sds_secret_config``)."""
    return {
        "name": name,
        "sds_config": {
            "path_config_source": {
                "path": sds_file(name),
                "watched_directory": {"path": SDS_DIR},
            },
            "resource_api_version": "V3",
        },
    }


def parse_gateway_ports(value: object) -> dict[int, int]:
    """:data:`META_GATEWAY_PORTS` as service port → listen port (numbers may arrive as a
    protobuf Struct's doubles); an entry that is not two port numbers (another agent
    version's) is left out rather than failing the node. Empty for a sidecar. (No
    ``typing`` here: the agent imports this module and does without it.)"""
    out = {}
    for service_port, listen in (value if isinstance(value, dict) else {}).items():
        try:
            sp, lp = int(service_port), int(listen)
        except (TypeError, ValueError):
            continue
        if 0 < sp < 65536 and 0 < lp < 65536:
            out[sp] = lp
    return out


META_UPSTREAMS = "upstreams"
"""``tsunagi run --upstream``: a list of ``{META_UPSTREAM_SERVICE: host as the user wrote it,
META_UPSTREAM_PORT: service port, META_UPSTREAM_LISTEN: local port}``; each gets a TCP
listener on 127.0.0.1:listen that proxies to the service port (Consul's and Kuma's
upstreams), for clients that cannot use an HTTP proxy."""
META_UPSTREAM_SERVICE = "service"
META_UPSTREAM_PORT = "port"
META_UPSTREAM_LISTEN = "listen"
UPSTREAM_ENV_PREFIX = "TSUNAGI_UPSTREAM_"
META_LOCALITY = "locality"
"""``region/zone/subzone`` (also in the node's Envoy ``locality``; the metadata copy is what
the control plane reads, as it reads nothing else of the node)."""


def inbound_stat_prefix(port: int) -> str:
    """The stat prefix of the inbound listener for service ``port``."""
    return f"inbound_{port}"


def inbound_active_requests_stat(port: int) -> str:
    """Requests in flight on the inbound listener of ``port``: what draining waits on."""
    return f"http.{inbound_stat_prefix(port)}.downstream_rq_active"


def upstream_env(service: str, port: int) -> str:
    """The app's environment variable holding ``127.0.0.1:LOCALPORT`` of an upstream:
    ``TSUNAGI_UPSTREAM_<SERVICE>_<PORT>``, the service name upper-cased with every character
    that is not a letter or digit as ``_``: ``tcp-echo.ns`` port 9000 gives
    ``TSUNAGI_UPSTREAM_TCP_ECHO_NS_9000``."""
    name = "".join(c if c.isascii() and c.isalnum() else "_" for c in service.upper())
    return f"{UPSTREAM_ENV_PREFIX}{name}_{port}"


def locality_fields(locality: str) -> dict[str, str]:
    """``region/zone/sub_zone`` as Envoy's ``Locality`` fields, empty parts left out.

    Proxies (in their bootstrap) and endpoints (in load assignments) must spell a locality
    the same way for locality-aware load balancing to match them.
    """
    keys = ("region", "zone", "sub_zone")
    return {k: v for k, v in zip(keys, locality.split("/"), strict=False) if v}


RE2_MAX_PROGRAM_SIZE = 32768
"""The largest RE2 program (Envoy's regex complexity measure) a proxy accepts. Envoy's
default is 100, which refuses regexes Istio accepts; Istio's bootstrap raises it to this, so
does the agent's (``RE2_MAX_PROGRAM_SIZE_KEY`` in the runtime), and validation refuses what
is larger, so that Envoy never NACKs a regex that ``apply`` accepted."""
RE2_MAX_PROGRAM_SIZE_KEY = "re2.max_program_size.error_level"


# Istio's standard metrics: Envoy writes one access-log line per request (and TCP events)
# to a FIFO the agent reads; the agent aggregates them (docs/design/metrics.md, option b).
META_METRICS_LOG = "metrics_log"
"""The FIFO the agent reads metric lines from; absent: the proxy gets no metrics logger."""
PEER_HEADER = "x-tsunagi-peer"
"""Istio's metadata exchange, in one header each way. On requests: added by the client
sidecar (its :func:`workload_metadata`) toward in-mesh destinations only, read and removed by
the server sidecar, which learns its ``source_*`` labels from it. On responses: added by the
server sidecar (its own :func:`workload_metadata`), read by the client sidecar for its
``destination_*`` labels; it reaches the calling app (removing it would hide it from the
access log too, and a filter to copy it costs each request more than the header). Endpoint
metadata (Istio's fallback) would do the same at no per-request cost, but nearly tripled
the endpoints every sidecar receives (docs/benchmarks.md). Taken as sent until mTLS binds
it to the peer (issue 10)."""
PEER_ENV = "TSUNAGI_PEER"
"""Envoy's environment variable holding this proxy's :func:`workload_metadata`; outbound
routes are shared by a namespace's sidecars, so their header value reads it per process."""
CLUSTER_ID = "Kubernetes"
"""Istio's default cluster id: the ``source_cluster`` / ``destination_cluster`` label."""
METRICS_LINE_SOURCE = "s"
"""First field of a metric line from the outbound listener (``reporter="source"``):
``TOKEN, upstream cluster, upstream host (the endpoint Envoy picked, whose workload the
registry names), the server's principal, code, flags, gRPC status, request content type,
duration ms, request bytes, response bytes`` (tab-separated). The principal is the upstream
certificate's URI SANs (``%UPSTREAM_PEER_URI_SAN%``, comma-joined), ``-`` over plain text.
Lines of older configs have no content type (a second logger wrote gRPC requests' lines,
with :data:`METRICS_TOKEN_GRPC` in their token), and the oldest no principal either."""
METRICS_LINE_DESTINATION = "d"
"""Inbound HTTP (``reporter="destination"``): ``TOKEN, peer (the PEER_HEADER value), the
caller's principal, code, flags, gRPC status, request content type, duration ms, request
bytes, response bytes``; older configs' lines as on :data:`METRICS_LINE_SOURCE`."""
METRICS_LINE_TCP = "t"
"""Inbound TCP: ``TOKEN, log type, connection id, received bytes, sent bytes, flags`` with
cumulative byte counts (Envoy's periodic and end-of-connection entries)."""
METRICS_LINE_TCP_SOURCE = "u"
"""Outbound TCP (``tsunagi run --upstream`` listeners, ``reporter="source"``): the
:data:`METRICS_LINE_TCP` fields, then the upstream cluster, the endpoint Envoy picked and
the server's principal (as on :data:`METRICS_LINE_SOURCE` lines). A CONNECT tunnel's line
(from the outbound HTTP listener, once, at its end: log type ``DownstreamEnd``) adds the
CONNECT's authority. Lines of an older config have no principal."""
CONNECT_CLUSTER_PREFIX = "connect|"
"""Clusters that carry a CONNECT tunnel to a TLS port's internal listener (``connect|PORT|
HOST``, xds/translate/connect.py). The tunnel's own metric line is not counted: the
internal listener reports the connection as outbound TCP, to the cluster it really reached."""
METRICS_TOKEN_SEP = "|"
"""A line's token is ``KIND`` then, per Telemetry metric override, ``|METRIC!`` (metric
disabled) or ``|METRIC-tag`` (label removed); the agent parses each distinct token once."""
METRICS_TOKEN_GRPC = "grpc"
"""A token part (``s|grpc``) that marks the lines of gRPC requests: the agent adds it when
a line's content type is gRPC's (Istio's ``request_protocol`` rule); an older config's
second logger wrote it, its filter matching that content type."""
METRICS_CONTENT_TYPE_CHARS = 24
"""How much of a request's content type an HTTP metric line carries: enough to tell
``application/grpc`` and ``application/grpc+…`` (gRPC, Istio's ``request_protocol``) from
the rest, and no more, whatever a client sends."""


def workload_name(labels: Mapping[str, str], service: str) -> str:
    """The workload a proxy belongs to, named as a Kubernetes Deployment in Istio's samples
    (Bookinfo's ``reviews-v1`` for ``app=reviews, version=v1``)."""
    app = labels.get("app") or service
    version = labels.get("version")
    return f"{app}-{version}" if version else app


def canonical_names(labels: Mapping[str, str], service: str) -> tuple[str, str]:
    """Istio's canonical service and revision of a workload, as its injector derives them:
    label ``service.istio.io/canonical-name``, else ``app.kubernetes.io/name``, else
    ``app``, else the workload's name; revision ``service.istio.io/canonical-revision``, else
    ``app.kubernetes.io/version``, else ``version``, else ``latest``. One rule for metrics
    labels and span tags alike."""
    canonical = (
        labels.get("service.istio.io/canonical-name")
        or labels.get("app.kubernetes.io/name")
        or labels.get("app")
        or workload_name(labels, service)
    )
    revision = (
        labels.get("service.istio.io/canonical-revision")
        or labels.get("app.kubernetes.io/version")
        or labels.get("version")
        or "latest"
    )
    return canonical, revision


def workload_metadata(labels: Mapping[str, str], service: str, namespace: str) -> str:
    """Istio's endpoint metadata ``istio.workload`` value:
    ``workload;namespace;canonical service;canonical revision;cluster``."""
    name = workload_name(labels, service)
    canonical, revision = canonical_names(labels, service)
    # ';' separates the fields and tabs/newlines separate log fields: keep them out.
    parts = (name, namespace, canonical, revision, CLUSTER_ID)
    return ";".join(p.replace(";", "_").replace("\t", " ").replace("\n", " ") for p in parts)


ISTIO_METRICS_PATH = "/stats/istio"
"""On a sidecar's metrics port: only Istio's request count and duration (no Envoy or app
metrics), which the control plane's own scraper reads. Prometheus reads the full, merged
``/stats/prometheus``."""
