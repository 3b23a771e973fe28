"""What a gateway's listeners report: the sidecars' access loggers and tracer, on the client
side, as Istio configures its gateways.

Istio's gateway listeners are of its ``Gateway`` listener class, whose telemetry is the
client side's (``pilot/pkg/model/telemetry.go``: ``workloadMode`` is ``CLIENT``, metrics take
the client overrides, the stats filter runs as on a sidecar's outbound side). So here:

- metrics: the source-side metric line (:func:`.accesslog.http_access_loggers` with
  :data:`.accesslog.OUTBOUND`) on every HTTP connection manager, and the outbound TCP line
  on every TCP proxy (TCP, TLS and PASSTHROUGH servers); the gateway's agent reports them
  with ``reporter="source"`` and the gateway as the source workload;
- access log: Istio's format on the gateway's stdout, marked ``[gateway ID]``, as
  ``--access-log`` or a Telemetry resource (``CLIENT`` or both modes) selecting the gateway
  by its labels says;
- tracing: the client side's tracing, with ``spawn_upstream_span`` (Istio since 1.28, where
  ``PILOT_SPAWN_UPSTREAM_SPAN_FOR_GATEWAY`` became the default): the gateway is a hop of
  its own, a server span for the request it received (the root, for a request from
  outside) and a client span for each request it sends upstream.

Translation reads these from the gateway's scope (:attr:`ClientScope.reporting`), but only
here: a gateway's listeners and route tables are made once for its routing scope (without
``reporting``, so the replicas of a gateway share them, and nothing kept per piece names a
node), and :func:`report` adds each node's loggers and tracer to copies of the listeners,
as sidecars' per-node listeners are made apart from their shared routes. A gateway with
nothing to report (no agent FIFO, no access log, no tracing) gets the shared listeners.
"""

from __future__ import annotations

from typing import Any

from tsunagi import proxy_contract as pc
from tsunagi.mesh import ClientScope, Node
from tsunagi.mesh.telemetry import GatewayReporting
from tsunagi.xds.translate import accesslog
from tsunagi.xds.translate.reporting import hcm_telemetry, tcp_proxy_logging
from tsunagi.xds.translate.tcp_proxies import TCP_PROXY

HCM = "envoy.filters.network.http_connection_manager"


def reporter(reporting: GatewayReporting) -> Node:
    """The gateway as the access-log builders know a proxy: its id and metrics FIFO."""
    return Node(id=reporting.proxy, kind=pc.GATEWAY_KIND, metrics_log=reporting.metrics_log)


def hcm_fields(scope: ClientScope) -> dict[str, Any]:
    """``access_log`` and ``tracing`` of a gateway's HTTP connection manager ({}: none)."""
    r = scope.reporting
    if r is None:
        return {}
    # A sidecar's outbound connection manager's, and the gateway's own span for each
    # upstream request (see the module doc).
    out = hcm_telemetry(reporter(r), r.telemetry, accesslog.OUTBOUND)
    if "tracing" in out:
        out["tracing"] = {**out["tracing"], "spawn_upstream_span": True}
    return out


def tcp_loggers(scope: ClientScope) -> list[dict[str, Any]]:
    """The ``access_log`` list of a gateway's TCP proxies (empty: none)."""
    r = scope.reporting
    if r is None:
        return []
    return accesslog.tcp_access_loggers(reporter(r), r.telemetry, outbound=True)


def report(listeners: list[dict[str, Any]], scope: ClientScope) -> list[dict[str, Any]]:
    """``listeners`` (a gateway's, made for its routing scope and shared) with what the
    gateway of ``scope`` reports added to every connection manager and TCP proxy: copies,
    the shared ones untouched; ``listeners`` itself when there is nothing to report."""
    http, tcp = hcm_fields(scope), tcp_proxy_logging(tcp_loggers(scope))
    if not http and not tcp:
        return listeners
    return [_reported(listener, http, tcp) for listener in listeners]


def _reported(
    listener: dict[str, Any], http: dict[str, Any], tcp: dict[str, Any]
) -> dict[str, Any]:
    def one(f: dict[str, Any]) -> dict[str, Any]:
        extra = http if f["name"] == HCM else tcp if f["name"] == TCP_PROXY else {}
        return {**f, "typed_config": {**f["typed_config"], **extra}} if extra else f

    chains = [
        {**chain, "filters": [one(f) for f in chain.get("filters", [])]}
        for chain in listener.get("filter_chains", [])
    ]
    return {**listener, "filter_chains": chains}
