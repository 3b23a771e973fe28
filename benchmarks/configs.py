"""Hand-written minimal configs for the comparison cases: the floor any mesh sits on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ROUTER = {
    "name": "envoy.filters.http.router",
    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
}
HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)


def _listener(
    port: int, route: dict[str, Any], domains: tuple[str, ...] = ("*",)
) -> dict[str, Any]:
    return {
        "name": f"l{port}",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": HCM,
                            "stat_prefix": "l",
                            "codec_type": "AUTO",
                            "route_config": {
                                "virtual_hosts": [
                                    {
                                        "name": "all",
                                        "domains": list(domains),
                                        "routes": [{"match": {"prefix": "/"}, **route}],
                                    }
                                ]
                            },
                            "http_filters": [ROUTER],
                        },
                    }
                ]
            }
        ],
    }


def _static(
    admin: int, listeners: list[dict[str, Any]], clusters: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {"listeners": listeners, "clusters": clusters},
    }


def upstream(port: int, admin: int) -> dict[str, Any]:
    """The upstream every case reaches: Envoy answering 200 itself, so it is never the limit."""
    route = {"direct_response": {"status": 200, "body": {"inline_string": "ok\n"}}}
    return _static(admin, [_listener(port, route)], [])


def _cluster(name: str, port: int) -> dict[str, Any]:
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {"address": "127.0.0.1", "port_value": port}
                                }
                            }
                        }
                    ]
                }
            ],
        },
    }


def forwarder(port: int, admin: int, target: int) -> dict[str, Any]:
    """One hop of the minimal Envoy pair: listen, route everything to ``target``."""
    route = {"route": {"cluster": "next"}}
    return _static(admin, [_listener(port, route)], [_cluster("next", target)])


def front_proxy(port: int, admin: int, host: str, target: int) -> dict[str, Any]:
    """The minimal static ingress: listen, route requests for ``host`` (any other host gets
    Envoy's 404, as from a gateway) to ``target``, the next hop's sidecar."""
    route = {"route": {"cluster": "sidecar"}}
    listener = _listener(port, route, (host,))
    # An edge proxy trusts the connection's peer, not a client-sent X-Forwarded-For, and
    # appends it for the next hop: Envoy's edge-proxy best practice, and what Istio's (and
    # tsunagi's) gateways do. Without it the baseline would be an unsafe edge, not a minimal one.
    listener["filter_chains"][0]["filters"][0]["typed_config"]["use_remote_address"] = True
    return _static(admin, [listener], [_cluster("sidecar", target)])


TRACE_SAMPLING = 1.0
"""Percent of requests the traced cases sample: Istio's default."""


def traced(doc: dict[str, Any], collector: int, outbound: bool) -> dict[str, Any]:
    """``doc`` (a :func:`forwarder`) with Envoy's Zipkin tracer as tsunagi configures it
    (B3 and W3C propagation, 128-bit ids, protobuf spans) sampling :data:`TRACE_SAMPLING` %,
    spans to ``collector``: the floor any Envoy-based mesh that traces sits on."""
    listener = doc["static_resources"]["listeners"][0]
    listener["traffic_direction"] = "OUTBOUND" if outbound else "INBOUND"
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["tracing"] = {
        "provider": {
            "name": "envoy.tracers.zipkin",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.config.trace.v3.ZipkinConfig",
                "collector_cluster": "collector",
                "collector_endpoint": "/api/v2/spans",
                "collector_endpoint_version": "HTTP_PROTO",
                "trace_id_128bit": True,
                "shared_span_context": False,
                "trace_context_option": "USE_B3_WITH_W3C_PROPAGATION",
            },
        },
        "random_sampling": {"value": TRACE_SAMPLING},
    }
    doc["static_resources"]["clusters"].append(_cluster("collector", collector))
    return doc


def haproxy(port: int, target: int) -> str:
    """One hop of the HAProxy pair, HTTP mode with keep-alive to the next hop."""
    return f"""global
    nbthread 1
    maxconn 4096
defaults
    mode http
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    option http-keep-alive
frontend in
    bind 127.0.0.1:{port}
    default_backend next
backend next
    server s1 127.0.0.1:{target}
"""


def write_json(path: Path, doc: dict[str, Any]) -> Path:
    path.write_text(json.dumps(doc, indent=1))
    return path
