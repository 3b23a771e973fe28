"""Listeners: the outbound HTTP proxy port the app's ``HTTP_PROXY`` points at, and one
inbound listener per service port that hands requests to the local app."""

from __future__ import annotations

from typing import Any

from tsunagi import protocols
from tsunagi.mesh import Node
from tsunagi.mesh.security import WorkloadSecurity
from tsunagi.mesh.telemetry import ProxyTelemetry
from tsunagi.proxy_contract import inbound_stat_prefix
from tsunagi.xds.translate import (
    accesslog,
    inbound_filters,
    inbound_tls,
    passthrough,
    reporting,
    tracing,
)
from tsunagi.xds.translate.names import (
    OUTBOUND_LISTENER,
    OUTBOUND_ROUTE,
    inbound_cluster,
    inbound_listener,
)
from tsunagi.xds.translate.protos import (
    CORS_TYPE,
    FAULT_TYPE,
    HCM_TYPE,
    ROUTER_TYPE,
    Listener,
    build,
)
from tsunagi.xds.translate.tcp_proxies import tcp_proxy

ROUTER = {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}}
# Istio puts CORS and fault injection in every sidecar's outbound connection manager. Here
# both are off unless a route turns them on (with its per-route config, see
# ``routes.enabled_filter``): an idle filter still costs each request about 2 % of a hop's
# CPU (callgrind, docs/benchmarks.md), and most routes use neither. CORS first, so a
# preflight is answered even on a route that injects faults.
OUTBOUND_FILTERS = (
    {"name": "envoy.filters.http.cors", "typed_config": {"@type": CORS_TYPE}, "disabled": True},
    {"name": "envoy.filters.http.fault", "typed_config": {"@type": FAULT_TYPE}, "disabled": True},
    passthrough.FILTER,
    ROUTER,
)
HCM_DEFAULTS = {
    "normalize_path": True,
    "path_with_escaped_slashes_action": "KEEP_UNCHANGED",
    "stream_idle_timeout": "0s",
}
"""Istio's settings on every HTTP connection manager. Its default path normalization
(``BASE``): RFC 3986 normalization (``/a/../b`` is ``/b``, ``%61`` is ``a``) before routing,
RBAC and JWT rules see the path, so ``/x/../admin`` cannot slip past a rule on ``/admin``;
escaped slashes and double slashes stay as sent (one linear pass over the path per request).
No stream idle timeout (Envoy's default closes a stream quiet for 5 minutes with 408, which
long polls and server-sent events hit; it also costs a timer reset per request: 5.4k
instructions per request per hop, measured)."""


def _hcm(
    stat_prefix: str,
    routes: dict[str, Any],
    filters: tuple[dict[str, Any], ...] = (ROUTER,),
    telemetry: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": HCM_TYPE,
            "stat_prefix": stat_prefix,
            "codec_type": "AUTO",
            **HCM_DEFAULTS,
            **routes,
            "http_filters": list(filters),
            **(telemetry or {}),
        },
    }


def _listener(
    name: str, port: int, *filters: dict[str, Any], address: str = "127.0.0.1"
) -> dict[str, Any]:
    return {
        "name": name,
        "address": {"socket_address": {"address": address, "port_value": port}},
        "filter_chains": [{"filters": list(filters)}],
    }


def _tcp_proxy(node: Node, telemetry: ProxyTelemetry, port: int) -> dict[str, Any]:
    loggers = accesslog.tcp_access_loggers(node, telemetry)
    return tcp_proxy(inbound_stat_prefix(port), [(inbound_cluster(port), 100)], loggers)


def outbound_listener(node: Node, telemetry: ProxyTelemetry | None = None) -> dict[str, Any]:
    """Where the app's HTTP_PROXY points; its routes come over RDS."""
    telemetry = telemetry or ProxyTelemetry()
    rds = {
        "rds": {
            "route_config_name": OUTBOUND_ROUTE,
            "config_source": {"ads": {}, "resource_api_version": "V3"},
        },
        # HTTPS_PROXY clients that send CONNECT as HTTP/1.0 (Python's http.client before
        # 3.12, openssl s_client) would get Envoy's 426 otherwise (see :mod:`.connect`).
        "http_protocol_options": {"accept_http_10": True},
        # CONNECT allowed, so a route may also refuse it with its own answer (REGISTRY_ONLY's
        # 502); only CONNECT routes (connect_matcher) terminate it. Costs other requests
        # nothing: Envoy looks at it only for a request that asks for an upgrade.
        "upgrade_configs": [{"upgrade_type": "CONNECT"}],
    }
    extra = reporting.hcm_telemetry(node, telemetry, accesslog.OUTBOUND)
    hcm = _hcm("outbound", rds, OUTBOUND_FILTERS, extra)
    return tracing.directed(_listener(OUTBOUND_LISTENER, node.outbound_port, hcm), extra)


def inbound_listeners(
    node: Node,
    telemetry: ProxyTelemetry | None = None,
    security: WorkloadSecurity | None = None,
) -> list[dict[str, Any]]:
    """Requests from other sidecars to this workload. Routes are inline: they never change
    independently of the listener, so a separate RDS resource would only add a round trip.

    A port whose protocol is not HTTP (``--port 5432/tcp``) gets a TCP proxy to the app
    instead: parsing its bytes as HTTP would only break them. ``security`` says which
    connections each port takes (mesh mTLS, plain text or both: :mod:`.inbound_tls`) and
    adds the JWT and authorization filters before the router (:mod:`.inbound_filters`)."""
    telemetry = telemetry or ProxyTelemetry()
    security = security or WorkloadSecurity()
    # The registered address (``tsunagi run --address``): sidecars on other hosts connect
    # there; the app behind it stays on loopback.
    address = node.inbound_address
    out = []
    for port, (listen, _app) in sorted(node.inbound.items()):
        if not protocols.is_http(node.inbound_protocol(port)):
            tcp = (
                *inbound_filters.network_filters(security, node, port),
                _tcp_proxy(node, telemetry, port),
            )
            plain = _listener(inbound_listener(port), listen, *tcp, address=address)
            out.append(inbound_tls.with_mode(plain, security.mtls_mode(port), tcp=True))
            continue
        route_config = {
            "name": inbound_listener(port),
            "virtual_hosts": [
                {
                    "name": "inbound",
                    "domains": ["*"],
                    "routes": [
                        {
                            "match": {"prefix": "/"},
                            "route": {"cluster": inbound_cluster(port), "timeout": "0s"},
                        }
                    ],
                }
            ],
        }
        extra = reporting.hcm_telemetry(node, telemetry, accesslog.INBOUND, port)
        filters = (*inbound_filters.http_filters(security, node, port), ROUTER)
        routes = {"route_config": route_config, **inbound_tls.XFCC}
        hcm = _hcm(inbound_stat_prefix(port), routes, filters, extra)
        plain = _listener(inbound_listener(port), listen, hcm, address=address)
        listener = inbound_tls.with_mode(plain, security.mtls_mode(port), tcp=False)
        out.append(tracing.directed(listener, extra))
    return out


def build_listener(doc: dict[str, Any]) -> Listener:
    """``doc`` as a Listener, each distinct ``filters`` list parsed once: the chains of a
    PERMISSIVE listener share one (:mod:`.inbound_tls`), whose connection manager is most
    of the listener's parsing."""
    chains = doc.get("filter_chains", [])
    bare = [{k: v for k, v in c.items() if k != "filters"} for c in chains]
    listener = build(Listener, {**doc, "filter_chains": bare})
    parsed: dict[int, Any] = {}
    for chain_doc, chain in zip(chains, listener.filter_chains, strict=True):
        filters = chain_doc.get("filters", [])
        if id(filters) not in parsed:  # the same list object: the same filters
            parsed[id(filters)] = build(Listener, {"filter_chains": [{"filters": filters}]})
        chain.filters.extend(parsed[id(filters)].filter_chains[0].filters)
    return listener
