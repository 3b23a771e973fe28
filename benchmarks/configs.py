"""Hand-written minimal configs for the comparison cases: the floor any mesh sits on."""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any, NamedTuple

from tsunagi.agent.csr import key_and_csr
from tsunagi.ca.keystore import self_signed
from tsunagi.spiffe import spiffe_id
from tsunagi.xds.translate.inbound_tls import CIPHERS
from tsunagi.xds.translate.mesh_tls import ALPN_IN_MESH, mesh_sni

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


TRUST_DOMAIN = "cluster.local"
NAMESPACE = "default"
TLS = "envoy.transport_sockets.tls"
TLS_TYPES = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."
TLS_VERSIONS = {
    "tls_minimum_protocol_version": "TLSv1_2",
    "tls_maximum_protocol_version": "TLSv1_3",
}
"""What tsunagi's sidecars allow both ways (``xds/translate/mesh_tls.py``, ``inbound_tls.py``)."""
SERVER_ALPN = ["h2", "http/1.1"]
"""What a tsunagi sidecar's inbound mTLS chain offers (``inbound_tls.downstream_context``)."""


class Identity(NamedTuple):
    """A workload certificate for a static Envoy: files in the run's workdir."""

    spiffe: str
    cert: Path
    """PEM chain, leaf first."""
    key: Path
    ca: Path
    """The trust bundle (PEM)."""


class MeshCA:
    """The static pairs' CA, in ``workdir``: a root made as `tsunagi up` makes its own
    (``tsunagi.ca.keystore``: ECDSA P-256, self-signed) and workload certificates signed as
    `POST /v1/certificates` signs them (``Authority.sign_csr``: the SPIFFE ID as the only,
    URI, SAN) for keys made as the agent makes them (``tsunagi.agent.csr``). Same key type,
    chain length and extensions as tsunagi's sidecars, so the handshakes cost the same."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir / "static-ca"
        self.now = datetime.datetime.now(datetime.UTC)
        self.authority = self_signed(self.dir, TRUST_DOMAIN, self.now)
        self.issued: dict[str, Identity] = {}

    def identity(self, service_account: str) -> Identity:
        """The certificate of ``spiffe://cluster.local/ns/default/sa/SERVICE_ACCOUNT``."""
        if service_account not in self.issued:
            name = spiffe_id(TRUST_DOMAIN, NAMESPACE, service_account)
            key, csr = key_and_csr(name)
            signed = self.authority.sign_csr(csr, name, datetime.timedelta(days=1), self.now)
            paths = [self.dir / f"{service_account}-{k}.pem" for k in ("cert", "key", "ca")]
            for path, pem in zip(paths, (signed.chain, key, signed.root), strict=True):
                path.write_bytes(pem)
            self.issued[service_account] = Identity(name, *paths)
        return self.issued[service_account]


def _certificate(me: Identity) -> dict[str, Any]:
    return {
        "certificate_chain": {"filename": str(me.cert)},
        "private_key": {"filename": str(me.key)},
    }


def mtls_client(doc: dict[str, Any], me: Identity, server: Identity, host: str) -> dict[str, Any]:
    """``doc`` (a :func:`forwarder` or :func:`front_proxy`) whose cluster to the next hop
    speaks mesh mTLS as a tsunagi sidecar's cluster does with auto mTLS
    (``mesh_tls.upstream_context``): ``me``'s certificate, the server's chain checked
    against the mesh root and its URI SAN against ``server``'s SPIFFE ID, Istio's SNI for
    ``host`` port 80, ALPN ``istio``, TLS 1.2 to 1.3, Envoy's default ciphers and curves
    (tsunagi sets none on the client side). Static files instead of SDS: what differs is
    how the certificate is loaded, once, not what a request costs."""
    cluster = doc["static_resources"]["clusters"][0]
    cluster["transport_socket"] = {
        "name": TLS,
        "typed_config": {
            "@type": TLS_TYPES + "UpstreamTlsContext",
            "common_tls_context": {
                "tls_params": dict(TLS_VERSIONS),
                "tls_certificates": [_certificate(me)],
                "validation_context": {
                    "trusted_ca": {"filename": str(me.ca)},
                    "match_typed_subject_alt_names": [
                        {"san_type": "URI", "matcher": {"exact": server.spiffe}}
                    ],
                },
                "alpn_protocols": list(ALPN_IN_MESH),
            },
            "sni": mesh_sni(f"{host}.{NAMESPACE}.svc.{TRUST_DOMAIN}", 80),
        },
    }
    return doc


def mtls_server(doc: dict[str, Any], me: Identity) -> dict[str, Any]:
    """``doc`` (a :func:`forwarder`) whose listener ends mesh mTLS as a tsunagi sidecar's
    inbound mTLS chain does (``inbound_tls.downstream_context``): ``me``'s certificate, a
    client certificate required and checked against the mesh root, Istio's ciphers, TLS
    1.2 to 1.3, ALPN ``h2`` and ``http/1.1``. One chain (STRICT's shape): no TLS inspector,
    no plaintext chain, no ``X-Forwarded-Client-Cert``."""
    chain = doc["static_resources"]["listeners"][0]["filter_chains"][0]
    chain["transport_socket"] = {
        "name": TLS,
        "typed_config": {
            "@type": TLS_TYPES + "DownstreamTlsContext",
            "common_tls_context": {
                "tls_params": {**TLS_VERSIONS, "cipher_suites": list(CIPHERS)},
                "tls_certificates": [_certificate(me)],
                "validation_context": {"trusted_ca": {"filename": str(me.ca)}},
                "alpn_protocols": list(SERVER_ALPN),
            },
            "require_client_certificate": True,
        },
    }
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
