"""Envoy's TCP proxy filter, as every TCP path builds it: inbound TCP ports, upstream and
CONNECT listeners, and gateways' TCP, TLS and PASSTHROUGH servers."""

from __future__ import annotations

from typing import Any

from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from tsunagi.xds.translate.reporting import tcp_proxy_logging

TCP_PROXY = "envoy.filters.network.tcp_proxy"
TCP_PROXY_TYPE = "type.googleapis.com/" + tcp_proxy_pb2.TcpProxy.DESCRIPTOR.full_name


def tcp_proxy(
    stat_prefix: str,
    targets: list[tuple[str, int]],
    loggers: list[dict[str, Any]],
    idle_timeout: str | None = None,
) -> dict[str, Any]:
    """A ``tcp_proxy`` filter to ``targets`` (``(cluster, weight)``: one cluster, or weighted
    ones), logging to ``loggers``, closing a connection idle for ``idle_timeout`` (None:
    Envoy's default, 1 h)."""
    config: dict[str, Any] = {"@type": TCP_PROXY_TYPE, "stat_prefix": stat_prefix}
    if len(targets) == 1:
        config["cluster"] = targets[0][0]
    else:
        config["weighted_clusters"] = {"clusters": [{"name": c, "weight": w} for c, w in targets]}
    if idle_timeout is not None:
        config["idle_timeout"] = idle_timeout
    config.update(tcp_proxy_logging(loggers))
    return {"name": TCP_PROXY, "typed_config": config}
