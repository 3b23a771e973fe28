"""What a connection manager or a TCP proxy reports, as the fields that go into its config:
access loggers (metrics pipe and access log, :mod:`.accesslog`) and tracing
(:mod:`.tracing`). One piece for every proxy: sidecars' inbound and outbound listeners,
upstream and CONNECT listeners, and gateways (:mod:`.gateway_telemetry`)."""

from __future__ import annotations

from typing import Any

from tsunagi.mesh import Node
from tsunagi.mesh.telemetry import ProxyTelemetry
from tsunagi.xds.translate import accesslog, tracing


def hcm_telemetry(
    node: Node, telemetry: ProxyTelemetry, direction: str, port: int = 0
) -> dict[str, Any]:
    """An HTTP connection manager's ``access_log`` and tracing fields for ``direction``
    (:data:`.accesslog.INBOUND` with the service ``port``, or :data:`.accesslog.OUTBOUND`);
    {} when it reports nothing."""
    out = dict(tracing.hcm_tracing(telemetry, direction))
    loggers = accesslog.http_access_loggers(node, telemetry, direction, port)
    if loggers:
        out["access_log"] = loggers
    return out


def tcp_proxy_logging(loggers: list[dict[str, Any]]) -> dict[str, Any]:
    """A ``tcp_proxy``'s ``access_log`` (``loggers``: :func:`.accesslog.tcp_access_loggers`)
    and the options its metric line needs; {} without loggers."""
    if not loggers:
        return {}
    out: dict[str, Any] = {"access_log": loggers}
    if accesslog.has_metrics_logger(loggers):
        out["access_log_options"] = accesslog.TCP_ACCESS_LOG_OPTIONS
    return out
