"""Mesh mTLS from the server side: a sidecar's inbound listener as its PeerAuthentication
mode asks (see :mod:`tsunagi.mesh.peer_authentication`), as Istio builds it:

- ``PERMISSIVE`` (the default): a TLS inspector tells the connections apart. Mesh mTLS (a
  TLS client hello offering one of Istio's in-mesh ALPN values, ``istio`` among them) is
  ended with the proxy's certificate and must present a client certificate the mesh roots
  sign; anything else is passed as it is: plain text to the app, and on a TCP port a
  client's own TLS too.
- ``STRICT``: mesh mTLS only. One chain that ends TLS: a plaintext client fails the
  handshake. No inspector: with a single chain there is nothing to tell apart.
- ``DISABLE``: plain text only, the listener as it was.

Server TLS parameters are Istio's for inbound mTLS: TLS 1.2 to 1.3, its cipher list, ALPN
``h2`` and ``http/1.1``. The HTTP connection manager passes the caller's identity to the app
in ``X-Forwarded-Client-Cert`` (:data:`XFCC`).
"""

from __future__ import annotations

from typing import Any

from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2

from tsunagi import proxy_contract as pc
from tsunagi.mesh.peer_authentication import DISABLE, STRICT

DOWNSTREAM_TLS_TYPE = "type.googleapis.com/" + tls_pb2.DownstreamTlsContext.DESCRIPTOR.full_name
TLS_INSPECTOR = {
    "name": "envoy.filters.listener.tls_inspector",
    "typed_config": {
        "@type": "type.googleapis.com/" + tls_inspector_pb2.TlsInspector.DESCRIPTOR.full_name
    },
}

MESH_ALPNS = ["istio", "istio-peer-exchange", "istio-http/1.0", "istio-http/1.1", "istio-h2"]
"""What mesh clients offer (ours: ``istio``; Istio's sidecars: any of these), which tells a
PERMISSIVE listener's mTLS chain from a client's own TLS."""
CIPHERS = [
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "AES256-GCM-SHA384",
    "AES128-GCM-SHA256",
]
"""Istio's cipher suites for inbound mTLS (TLS 1.2; TLS 1.3's are fixed)."""

XFCC = {
    "forward_client_cert_details": "APPEND_FORWARD",
    # Istio also sets subject and dns. Mesh certificates have an empty subject and no DNS
    # SAN, and Envoy recomputes an empty cached value on every request (~5% of a request's
    # instructions) only to add ``Subject=""``; gateways keep all three (:mod:`.gateway`).
    "set_current_client_cert_details": {"uri": True},
}
"""Sidecar inbound: the app sees ``By=<own SPIFFE ID>;Hash=<peer certificate
hash>;URI=<caller's SPIFFE ID>``. Envoy removes a header the caller sent over a connection
without a client certificate, so plain text cannot forge it."""


def downstream_context() -> dict[str, Any]:
    """The ``DownstreamTlsContext`` of mesh mTLS: the proxy's certificate, a required
    client certificate checked against the mesh roots (SDS files, the same for every
    proxy: :mod:`tsunagi.proxy_contract`)."""
    return {
        "@type": DOWNSTREAM_TLS_TYPE,
        "common_tls_context": {
            "tls_params": {
                "tls_minimum_protocol_version": "TLSv1_2",
                "tls_maximum_protocol_version": "TLSv1_3",
                "cipher_suites": CIPHERS,
            },
            "tls_certificate_sds_secret_configs": [pc.sds_secret_config(pc.WORKLOAD_SECRET)],
            "combined_validation_context": {
                "default_validation_context": {},
                "validation_context_sds_secret_config": pc.sds_secret_config(pc.ROOT_CA_SECRET),
            },
            "alpn_protocols": ["h2", "http/1.1"],
        },
        "require_client_certificate": True,
    }


# The chains below share their filters with the plain one: nothing changes a listener's
# dicts once made (they are only parsed), so no deep copies.
def _mtls_chain(name: str, chain: dict[str, Any]) -> dict[str, Any]:
    return {
        **chain,
        "name": f"{name}|mtls",
        "transport_socket": {
            "name": "envoy.transport_sockets.tls",
            "typed_config": downstream_context(),
        },
    }


def with_mode(listener: dict[str, Any], mode: str, tcp: bool) -> dict[str, Any]:
    """``listener`` (one filter chain, plain text) guarded as PeerAuthentication ``mode``
    asks; ``tcp``: its chain proxies TCP (a client's own TLS may pass in PERMISSIVE)."""
    if mode == DISABLE:
        return listener
    (chain,) = listener["filter_chains"]
    name = listener["name"]
    mtls = _mtls_chain(name, chain)
    if mode == STRICT:
        return {**listener, "filter_chains": [mtls]}
    mtls["filter_chain_match"] = {"transport_protocol": "tls", "application_protocols": MESH_ALPNS}
    chains = [mtls]
    if tcp:
        plain_tls = {**chain, "name": f"{name}|tls"}
        plain_tls["filter_chain_match"] = {"transport_protocol": "tls"}
        chains.append(plain_tls)
    plain = {**chain, "name": f"{name}|plaintext"}
    plain["filter_chain_match"] = {"transport_protocol": "raw_buffer"}
    chains.append(plain)
    return {**listener, "listener_filters": [TLS_INSPECTOR], "filter_chains": chains}
