"""The Envoy bootstrap a sidecar starts with: who it is, where xDS is, where admin listens.

Everything else (listeners, clusters, routes, endpoints) arrives over ADS.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from tsunagi import proxy_contract as pc
from tsunagi.agent.records import NamedTuple

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (agent/records.py)
if TYPE_CHECKING:
    from typing import Any


class ProxyIdentity(NamedTuple):
    """What the control plane learns about this proxy from its xDS node."""

    node_id: str
    service: str
    namespace: str
    labels: Mapping[str, str] = MappingProxyType({})
    locality: str = ""
    outbound_port: int = pc.DEFAULT_OUTBOUND_PORT
    inbound: Mapping[int, tuple[int, int]] = MappingProxyType({})
    """service port → (inbound listener port, app port)."""
    kind: str = pc.DEFAULT_KIND
    inbound_protocols: Mapping[int, str] = MappingProxyType({})
    """service port → its protocol, when not HTTP."""
    metrics_log: str = ""
    """The FIFO the agent reads metric lines from; empty: no metrics loggers."""
    upstreams: tuple[tuple[str, int, int], ...] = ()
    """``--upstream``: ``(service, port, local port)``."""
    gateway_address: str = ""
    """A gateway's listen address (``pc.META_GATEWAY_ADDRESS``); empty for a sidecar."""
    gateway_ports: Mapping[int, int] = MappingProxyType({})
    """A gateway's service port → listen port (``pc.META_GATEWAY_PORTS``)."""
    service_account: str = ""
    """The service account its certificate names (``pc.META_SERVICE_ACCOUNT``); the control
    plane refuses the node if they differ."""
    inbound_address: str = ""
    """Where a sidecar's inbound listeners bind (``pc.META_INBOUND_ADDRESS``); empty:
    127.0.0.1."""


INTERNAL_LISTENER_EXTENSION = {
    "name": "envoy.bootstrap.internal_listener",
    "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.bootstrap.internal_listener.v3."
        "InternalListener"
    },
}


def bootstrap(
    ident: ProxyIdentity,
    xds_host: str,
    xds_port: int,
    admin_port: int,
    delta: bool = False,
    xds_server_name: str = "",
    xds_replicas: tuple[tuple[str, int], ...] = (),
) -> dict[str, Any]:
    """The bootstrap document (JSON-ready) for one sidecar or gateway. With
    ``xds_server_name`` (the xDS server's DNS SAN, from ``GET /v1/bootstrap``), Envoy
    reaches xDS over mutual TLS: it presents the proxy's certificate and accepts only a
    server certificate from the mesh's CA that carries that name (:func:`xds_tls`).
    ``xds_replicas``: every control-plane replica's xDS address (``xds_host:xds_port``
    among them); the xds cluster lists them all (:func:`xds_cluster`)."""
    return {
        "node": {
            "id": ident.node_id,
            "cluster": ident.service or ident.kind,
            "locality": pc.locality_fields(ident.locality),
            "metadata": {
                pc.META_NAMESPACE: ident.namespace,
                pc.META_SERVICE: ident.service,
                pc.META_LABELS: dict(ident.labels),
                pc.META_OUTBOUND_PORT: ident.outbound_port,
                pc.META_INBOUND: {
                    str(p): {
                        pc.META_INBOUND_LISTEN: listen,
                        pc.META_INBOUND_APP: app,
                        **(
                            {pc.META_INBOUND_PROTOCOL: ident.inbound_protocols[p]}
                            if p in ident.inbound_protocols
                            else {}
                        ),
                    }
                    for p, (listen, app) in ident.inbound.items()
                },
                pc.META_KIND: ident.kind,
                pc.META_LOCALITY: ident.locality,
                **(
                    {pc.META_SERVICE_ACCOUNT: ident.service_account}
                    if ident.service_account
                    else {}
                ),
                **({pc.META_METRICS_LOG: ident.metrics_log} if ident.metrics_log else {}),
                **(
                    {
                        pc.META_UPSTREAMS: [
                            {
                                pc.META_UPSTREAM_SERVICE: service,
                                pc.META_UPSTREAM_PORT: port,
                                pc.META_UPSTREAM_LISTEN: local,
                            }
                            for service, port, local in ident.upstreams
                        ]
                    }
                    if ident.upstreams
                    else {}
                ),
                **(
                    {pc.META_INBOUND_ADDRESS: ident.inbound_address}
                    if ident.inbound_address
                    else {}
                ),
                **(
                    {pc.META_GATEWAY_ADDRESS: ident.gateway_address}
                    if ident.gateway_address
                    else {}
                ),
                **(
                    {pc.META_GATEWAY_PORTS: {str(p): lp for p, lp in ident.gateway_ports.items()}}
                    if ident.gateway_ports
                    else {}
                ),
            },
        },
        "admin": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}
        },
        "dynamic_resources": {
            "ads_config": {
                "api_type": "DELTA_GRPC" if delta else "GRPC",
                "transport_api_version": "V3",
                "set_node_on_first_message_only": True,
                "grpc_services": [
                    {
                        "envoy_grpc": {
                            "cluster_name": "xds",
                            # Reconnect fast after a control-plane restart; the defaults back
                            # off to 30 s and would leave proxies stale for that long.
                            "retry_policy": {
                                "retry_back_off": {"base_interval": "0.1s", "max_interval": "1s"}
                            },
                        },
                    }
                ],
            },
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
            "lds_config": {"ads": {}, "resource_api_version": "V3"},
        },
        "static_resources": {
            "clusters": [
                xds_cluster(
                    list(dict.fromkeys(((xds_host, xds_port), *xds_replicas))), xds_server_name
                )
            ]
        },
        # Internal listeners: where a sidecar's CONNECT routes hand HTTPS tunnels for SNI
        # routing (xds/translate/connect.py). Measured cost: none (an idle Envoy's dirty
        # private memory 13.80 MB with and without it); a gateway has no CONNECT routes.
        **(
            {}
            if ident.kind == pc.GATEWAY_KIND
            else {"bootstrap_extensions": [INTERNAL_LISTENER_EXTENSION]}
        ),
        # The peer header is set on every outbound request and read by every inbound metric
        # line: as a registered inline header Envoy finds it by index, not by a scan of the
        # headers (measured: 3.1k / 3.5k fewer instructions per request, client / server).
        "inline_headers": [
            {"inline_header_name": pc.PEER_HEADER, "inline_header_type": "REQUEST_HEADER"}
        ],
        # Regexes up to the size validation allows (as Istio's bootstrap does); Envoy's
        # default limit (100) would NACK many a regex that apply accepted.
        "layered_runtime": {
            "layers": [
                {
                    "name": "static",
                    "static_layer": {pc.RE2_MAX_PROGRAM_SIZE_KEY: pc.RE2_MAX_PROGRAM_SIZE},
                }
            ]
        },
        # Give freed heap back to the OS: an idle sidecar should not hold the high-water mark
        # of its last config push.
        "memory_allocator_manager": {
            "bytes_to_release": 16 * 1024 * 1024,
            "memory_release_interval": "2s",
        },
        # Envoy keeps ~50 stats per cluster; with hundreds of services they are most of a
        # sidecar's memory. Keep what status, draining and the agent's health checks read.
        "stats_config": {
            "stats_matcher": {
                "inclusion_list": {
                    "patterns": [
                        {"prefix": "server."},
                        {"prefix": "cluster_manager."},
                        {"prefix": "listener_manager."},
                        # Draining reads one stat of the inbound connection managers; Istio's
                        # metrics come from the access log (agent/metrics.py), not these. Only
                        # token prefixes here: with any exact or regex pattern, Envoy must
                        # remember every stat name it rejected (+0.55 MB allocated in a
                        # 100-service mesh, measured), where prefixes reject by name token.
                        *(
                            {"prefix": f"http.{pc.inbound_stat_prefix(port)}."}
                            for port in sorted(ident.inbound)
                        ),
                        {"prefix": "cluster.xds."},
                        {"prefix": "control_plane."},
                        # A gateway drains on its way out until its listeners have no
                        # connection left (agent/gateway.py); it has a listener per port.
                        *([{"prefix": "listener."}] if ident.kind == pc.GATEWAY_KIND else []),
                    ]
                }
            }
        },
    }


def xds_tls(server_name: str) -> dict[str, Any]:
    """The ``xds`` cluster's transport socket: mutual TLS with the proxy's own certificate
    and the mesh's trust bundle (the agent's SDS files, ``pc.sds_secret_config``), accepting
    only a server whose certificate carries ``server_name`` as a DNS SAN. The CA gives
    workloads a URI SAN only, so no workload certificate from it passes for the control
    plane, whatever SPIFFE ID it names."""
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/"
            "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "common_tls_context": {
                "tls_certificate_sds_secret_configs": [pc.sds_secret_config(pc.WORKLOAD_SECRET)],
                "combined_validation_context": {
                    "default_validation_context": {
                        "match_typed_subject_alt_names": [
                            {"san_type": "DNS", "matcher": {"exact": server_name}}
                        ]
                    },
                    "validation_context_sds_secret_config": pc.sds_secret_config(pc.ROOT_CA_SECRET),
                },
                # gRPC is HTTP/2: say so in the handshake, as gRPC clients do.
                "alpn_protocols": ["h2"],
            },
        },
    }


def xds_cluster(addresses: list[tuple[str, int]], server_name: str = "") -> dict[str, Any]:
    """The static ``xds`` cluster the ADS stream uses: every control-plane replica's address.

    Envoy opens the stream to one host (round robin) and keeps it; when it breaks, the
    retry (0.1 s to 1 s back-off) opens a new one to the next host. A dead replica's port
    refuses at once; one cut off fails within the 1 s connect timeout, and is then left out
    by outlier detection (one local-origin failure ejects it for 10 s times the number of
    its ejections, at most Envoy's 300 s), so reconnects go to live replicas. With the
    default ``max_ejection_percent`` (10) and fewer than 20 replicas, at most one is ejected
    at a time (Envoy ejects one whatever the percentage): never all of them."""
    cluster: dict[str, Any] = {
        "name": "xds",
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/"
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
        **({"transport_socket": xds_tls(server_name)} if server_name else {}),
        "load_assignment": {
            "cluster_name": "xds",
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {"socket_address": {"address": host, "port_value": port}}
                            }
                        }
                        for host, port in addresses
                    ]
                }
            ],
        },
    }
    if len(addresses) > 1:
        cluster["outlier_detection"] = {
            "split_external_local_origin_errors": True,
            "consecutive_local_origin_failure": 1,
            "base_ejection_time": "10s",
            "interval": "1s",
        }
    return cluster
