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


def _listener(port: int, route: dict[str, Any]) -> dict[str, Any]:
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
                                        "domains": ["*"],
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


def forwarder(port: int, admin: int, target: int) -> dict[str, Any]:
    """One hop of the minimal Envoy pair: listen, route everything to ``target``."""
    cluster = {
        "name": "next",
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": "next",
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {"address": "127.0.0.1", "port_value": target}
                                }
                            }
                        }
                    ]
                }
            ],
        },
    }
    return _static(admin, [_listener(port, {"route": {"cluster": "next"}})], [cluster])


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
