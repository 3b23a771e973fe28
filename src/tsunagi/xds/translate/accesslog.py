"""Access loggers on a sidecar's listeners: the line the agent turns into Istio's metrics,
and Istio's access log when the proxy's telemetry asks for one.

The metric line (docs/design/metrics.md, option b) is a short tab-separated record written
to the FIFO the agent named in the node metadata; its first field is a literal token
(``proxy_contract.METRICS_TOKEN_SEP``) that carries the line's kind and the proxy's metric
overrides, so everything the agent needs to know arrives in the line itself.
"""

from __future__ import annotations

from typing import Any

from envoy.extensions.access_loggers.file.v3 import file_pb2
from envoy.extensions.access_loggers.filters.cel.v3 import cel_pb2
from envoy.extensions.access_loggers.stream.v3 import stream_pb2

from tsunagi import proxy_contract as pc
from tsunagi.mesh import Node
from tsunagi.mesh.telemetry import (
    ACCESS_LOG_JSON,
    ACCESS_LOG_TEXT,
    CLIENT,
    CLIENT_AND_SERVER,
    SERVER,
    MetricOverride,
    ProxyTelemetry,
)

OUTBOUND = "outbound"
INBOUND = "inbound"

FILE_TYPE = "type.googleapis.com/" + file_pb2.FileAccessLog.DESCRIPTOR.full_name
STDOUT_TYPE = "type.googleapis.com/" + stream_pb2.StdoutAccessLog.DESCRIPTOR.full_name
CEL_TYPE = "type.googleapis.com/" + cel_pb2.ExpressionFilter.DESCRIPTOR.full_name

TCP_REPORT_INTERVAL = "15s"
"""How often a long TCP connection reports its bytes (Istio's filter reports periodically
too, not only at close)."""

TCP_ACCESS_LOG_OPTIONS = {
    "flush_access_log_on_connected": True,
    "access_log_flush_interval": TCP_REPORT_INTERVAL,
}
"""``access_log_options`` of an inbound TCP proxy that has a metrics logger."""

_UPSTREAM_PRINCIPAL = "%UPSTREAM_PEER_URI_SAN%"
"""The upstream certificate's URI SANs (comma-joined; "-" without TLS), in every source line."""

HTTP_METRICS = ("REQUEST_COUNT", "REQUEST_DURATION", "REQUEST_SIZE", "RESPONSE_SIZE")
TCP_METRICS = (
    "TCP_OPENED_CONNECTIONS",
    "TCP_CLOSED_CONNECTIONS",
    "TCP_SENT_BYTES",
    "TCP_RECEIVED_BYTES",
)

# 9 operators on the source side (docs/design/metrics.md, "filelog8", plus the principal).
_SOURCE_FIELDS = (
    "%UPSTREAM_CLUSTER%",
    # The endpoint Envoy picked; the agent asks the registry whose it is. A response header
    # from the server sidecar (Istio's exchange) cost ≈ 8 k instructions per request.
    "%UPSTREAM_HOST%",
    # The server's identity from its certificate when the upstream connection is TLS ("-"
    # over plain text): Istio's destination_principal on the client side.
    _UPSTREAM_PRINCIPAL,
    "%RESPONSE_CODE%",
    "%RESPONSE_FLAGS%",
    # Read only for a gRPC request (Envoy derives one from the HTTP status otherwise).
    "%GRPC_STATUS_NUMBER%",
    # Istio's request_protocol is grpc when the request's content type is exactly
    # application/grpc or starts with application/grpc+ (not grpc-web), whatever the
    # response: the agent decides from this field. Cut to what that test needs, so a
    # client's long header costs the line nothing. One logger for every request: header
    # filters picking a gRPC and a plain logger cost ≈ 3 % of saturated throughput
    # (docs/benchmarks-notes.md).
    f"%REQ(CONTENT-TYPE):{pc.METRICS_CONTENT_TYPE_CHARS}%",
    "%DURATION%",
    "%DOWNSTREAM_WIRE_BYTES_RECEIVED%",
    "%DOWNSTREAM_WIRE_BYTES_SENT%",
)
_DESTINATION_FIELDS = (
    f"%REQ({pc.PEER_HEADER})%",
    # The caller's identity from its mTLS certificate ("-" over plain text): Istio's
    # source_principal and connection_security_policy.
    "%DOWNSTREAM_PEER_URI_SAN%",
    *_SOURCE_FIELDS[3:],
)

_CONNECT = {"header": {"name": ":method", "string_match": {"exact": "CONNECT"}}}
CONNECT_REQUEST = {"header_filter": _CONNECT}
"""The filter of the outbound tunnels' metric logger: Istio reports a tunnel (HTTPS through
``HTTPS_PROXY``) as a TCP connection, not as an HTTP request."""
NOT_CONNECT = {"header_filter": {"header": {**_CONNECT["header"], "invert_match": True}}}
"""The filter of the outbound requests' metric logger: every request but a tunnel."""

_TCP_FIELDS = (
    "%ACCESS_LOG_TYPE%",
    "%CONNECTION_ID%",
    "%BYTES_RECEIVED%",
    "%BYTES_SENT%",
    "%RESPONSE_FLAGS%",
)

_TCP_SOURCE_FIELDS = (*_TCP_FIELDS, "%UPSTREAM_CLUSTER%", "%UPSTREAM_HOST%", _UPSTREAM_PRINCIPAL)
"""An outbound TCP proxy's line (``--upstream`` listeners, CONNECT's internal listeners,
gateways' TCP servers); its principal is the server sidecar's once the cluster speaks mTLS."""

_TUNNEL_FIELDS = (*_TCP_SOURCE_FIELDS, "%REQ(:AUTHORITY)%")
"""A CONNECT tunnel's line, written by the outbound connection manager when the tunnel ends:
an outbound TCP line plus the CONNECT's target (Istio's ``destination_service`` of a
connection through PassthroughCluster). Its principal is "-" today: a tunnel's upstream is
plain TCP (PassthroughCluster; the app's own TLS goes through it) or an internal listener,
whose own line carries the principal of the mTLS connection it makes."""

ISTIO_TEXT_FORMAT = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% "
    '%CONNECTION_TERMINATION_DETAILS% "%UPSTREAM_TRANSPORT_FAILURE_REASON%" '
    "%BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "
    '"%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" "%REQ(X-REQUEST-ID)%" '
    '"%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%" %UPSTREAM_CLUSTER_RAW% %UPSTREAM_LOCAL_ADDRESS% '
    "%DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% "
    "%ROUTE_NAME%\n"
)
"""Istio's default text access log (``EnvoyTextLogFormat``, pilot/pkg/model/
telemetry_logging.go)."""

ISTIO_JSON_FORMAT = {
    "start_time": "%START_TIME%",
    "route_name": "%ROUTE_NAME%",
    "method": "%REQ(:METHOD)%",
    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
    "protocol": "%PROTOCOL%",
    "response_code": "%RESPONSE_CODE%",
    "response_flags": "%RESPONSE_FLAGS%",
    "response_code_details": "%RESPONSE_CODE_DETAILS%",
    "connection_termination_details": "%CONNECTION_TERMINATION_DETAILS%",
    "bytes_received": "%BYTES_RECEIVED%",
    "bytes_sent": "%BYTES_SENT%",
    "duration": "%DURATION%",
    "upstream_service_time": "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
    "x_forwarded_for": "%REQ(X-FORWARDED-FOR)%",
    "user_agent": "%REQ(USER-AGENT)%",
    "request_id": "%REQ(X-REQUEST-ID)%",
    "authority": "%REQ(:AUTHORITY)%",
    "upstream_host": "%UPSTREAM_HOST%",
    "upstream_cluster": "%UPSTREAM_CLUSTER_RAW%",
    "upstream_local_address": "%UPSTREAM_LOCAL_ADDRESS%",
    "downstream_local_address": "%DOWNSTREAM_LOCAL_ADDRESS%",
    "downstream_remote_address": "%DOWNSTREAM_REMOTE_ADDRESS%",
    "requested_server_name": "%REQUESTED_SERVER_NAME%",
    "upstream_transport_failure_reason": "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
}
"""Istio's default JSON access log keys (``EnvoyJSONLogFormatIstio``)."""

SIDECAR_KEY = "sidecar"
"""The JSON access log's extra key naming the sidecar: what tells its lines apart from the
app's own output on ``tsunagi run``'s stdout (text lines start with ``[sidecar NAME] ``)."""


GATEWAY_KEY = "gateway"
"""The same key of a gateway's JSON access log (text lines start with ``[gateway NAME] ``)."""


def access_log_marker(node: Node) -> str:
    """The prefix of this proxy's text access log lines (``[sidecar ID] ``, or
    ``[gateway ID] `` for a gateway)."""
    return f"[{GATEWAY_KEY if node.is_gateway else SIDECAR_KEY} {node.id}] "


def metrics_token(kind: str, overrides: tuple[MetricOverride, ...], mode: str) -> str | None:
    """The literal first field of a metric line of ``kind`` for a proxy with ``overrides``
    (``mode`` is CLIENT or SERVER); ``None`` when every metric of the kind is disabled."""
    tcp = kind in (pc.METRICS_LINE_TCP, pc.METRICS_LINE_TCP_SOURCE)
    metrics = TCP_METRICS if tcp else HTTP_METRICS
    disabled = dict.fromkeys(metrics, False)
    removed: dict[str, list[str]] = {m: [] for m in metrics}
    for o in overrides:
        if o.mode not in (mode, CLIENT_AND_SERVER):
            continue
        for m in metrics if o.metric == "ALL_METRICS" else (o.metric,):
            if m not in disabled:
                continue  # a metric of the other kind (or one never produced here)
            if o.disabled or not o.removed_tags:
                disabled[m] = o.disabled  # a later entry wins; tag removals keep the state
            removed[m].extend(t for t in o.removed_tags if t not in removed[m])
    if all(disabled.values()):
        return None
    parts = [kind]
    for m in metrics:
        if disabled[m]:
            parts.append(f"{m}!")
        elif removed[m]:
            parts.extend(f"{m}-{t}" for t in removed[m])
    return pc.METRICS_TOKEN_SEP.join(parts)


def _line(token: str, fields: tuple[str, ...]) -> str:
    return "\t".join((token, *fields)) + "\n"


def _file_logger(path: str, line: str, only: dict[str, Any] | None = None) -> dict[str, Any]:
    logger: dict[str, Any] = {
        "name": "envoy.access_loggers.file",
        "typed_config": {
            "@type": FILE_TYPE,
            "path": path,
            "log_format": {"text_format_source": {"inline_string": line}},
        },
    }
    if only is not None:
        logger["filter"] = only
    return logger


def _user_logger(
    node: Node, telemetry: ProxyTelemetry, direction: str, tcp: bool
) -> list[dict[str, Any]]:
    """Istio's access log on Envoy's stdout (which the agent passes on to its own)."""
    encoding = telemetry.access_log_for(direction)
    if encoding == ACCESS_LOG_TEXT:
        fmt: dict[str, Any] = {
            "text_format_source": {"inline_string": access_log_marker(node) + ISTIO_TEXT_FORMAT}
        }
    elif encoding == ACCESS_LOG_JSON:
        fmt = {
            "json_format": {
                GATEWAY_KEY if node.is_gateway else SIDECAR_KEY: node.id,
                **ISTIO_JSON_FORMAT,
            },
            "json_format_options": {"sort_properties": False},
        }
    else:
        return []
    filters: list[dict[str, Any]] = []
    if expression := telemetry.access_log_filter_for(direction):
        filters.append(
            {
                "extension_filter": {
                    "name": "envoy.access_loggers.extension_filters.cel",
                    "typed_config": {"@type": CEL_TYPE, "expression": expression},
                }
            }
        )
    if tcp:
        # One line per connection, at its end: not the periodic entries the metrics need.
        filters.append({"log_type_filter": {"types": ["TcpConnectionEnd"]}})
    logger: dict[str, Any] = {
        "name": "envoy.access_loggers.stdout",
        "typed_config": {"@type": STDOUT_TYPE, "log_format": fmt},
    }
    if len(filters) == 1:
        logger["filter"] = filters[0]
    elif filters:
        logger["filter"] = {"and_filter": {"filters": filters}}
    return [logger]


def http_access_loggers(
    node: Node, telemetry: ProxyTelemetry, direction: str, port: int = 0
) -> list[dict[str, Any]]:
    """The ``access_log`` list of an HTTP connection manager; ``direction`` is
    :data:`OUTBOUND` (the ``source`` reporter) or :data:`INBOUND` (``destination``, for
    service ``port``)."""
    out = []
    if node.metrics_log:
        if direction == OUTBOUND:
            token = metrics_token(pc.METRICS_LINE_SOURCE, telemetry.metric_overrides, CLIENT)
            fields: tuple[str, ...] = _SOURCE_FIELDS
        else:
            token = metrics_token(pc.METRICS_LINE_DESTINATION, telemetry.metric_overrides, SERVER)
            fields = _DESTINATION_FIELDS
        if token is not None:
            # Only a sidecar's outbound side takes CONNECT (HTTPS_PROXY); its tunnels are TCP.
            tunnels = direction == OUTBOUND and not node.is_gateway
            only = NOT_CONNECT if tunnels else None
            out.append(_file_logger(node.metrics_log, _line(token, fields), only))
        if direction == OUTBOUND and not node.is_gateway:
            kind, overrides = pc.METRICS_LINE_TCP_SOURCE, telemetry.metric_overrides
            tunnel = metrics_token(kind, overrides, CLIENT)
            if tunnel is not None:
                line = _line(tunnel, _TUNNEL_FIELDS)
                out.append(_file_logger(node.metrics_log, line, CONNECT_REQUEST))
    return out + _user_logger(node, telemetry, direction, tcp=False)


def tcp_access_loggers(
    node: Node, telemetry: ProxyTelemetry, outbound: bool = False
) -> list[dict[str, Any]]:
    """The ``access_log`` list of a TCP proxy: an inbound service port's
    (``reporter="destination"``), or with ``outbound`` an upstream listener's (``"source"``)."""
    kind, fields, mode, direction = (
        (pc.METRICS_LINE_TCP_SOURCE, _TCP_SOURCE_FIELDS, CLIENT, OUTBOUND)
        if outbound
        else (pc.METRICS_LINE_TCP, _TCP_FIELDS, SERVER, INBOUND)
    )
    out = []
    if node.metrics_log:
        token = metrics_token(kind, telemetry.metric_overrides, mode)
        if token is not None:
            out.append(_file_logger(node.metrics_log, _line(token, fields)))
    return out + _user_logger(node, telemetry, direction, tcp=True)


def has_metrics_logger(loggers: list[dict[str, Any]]) -> bool:
    """Whether ``loggers`` include the metrics line (a TCP proxy then needs
    :data:`TCP_ACCESS_LOG_OPTIONS`)."""
    return any(lg["name"] == "envoy.access_loggers.file" for lg in loggers)
