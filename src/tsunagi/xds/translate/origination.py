"""TLS origination: a DestinationRule's ``tls`` (``SIMPLE`` or ``MUTUAL``) on an outbound
cluster, so an app that speaks plain HTTP to its sidecar reaches a TLS server.

Istio's rules (``buildUpstreamTLSContext`` and its auto-SNI helper):

- ``sni`` names the server; without it Envoy sends the request's host as SNI (``auto_sni``).
- The server's certificate is verified against ``caCertificates`` (a file on the proxy's
  host) or, when that is empty, the system's trusted roots (Istio's default since 1.20,
  ``VERIFY_CERTIFICATE_AT_CLIENT``); ``insecureSkipVerify`` turns verification off.
- ``subjectAltNames`` (the DestinationRule's, else the ServiceEntry's) must include one of
  the certificate's names, of any SAN type; without the rule's and without ``sni``, Envoy
  checks the certificate against the request's host (``auto_san_validation``).
- An HTTP/2 cluster offers ALPN ``h2`` only (Istio's ``ALPNH2Only``).
- ``MUTUAL`` also presents ``clientCertificate`` and ``privateKey`` (files).

Not here: ``ISTIO_MUTUAL`` (mesh mTLS, :mod:`.mesh_tls`) and ``credentialName`` (a Secret;
``apply`` warns).
"""

from __future__ import annotations

from typing import Any

from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2

from tsunagi.api import ClientTLSSettings
from tsunagi.xds.translate.san import san_matchers

SYSTEM_ROOTS = "/etc/ssl/certs/ca-certificates.crt"
"""The system's trusted roots (Debian, Ubuntu, Alpine, Arch; Envoy reads it at config time).
Translation is pure and shared by every sidecar, so it names one well-known path; a host
that keeps its bundle elsewhere sets ``caCertificates``. Not Envoy's ``system_root_certs``:
Envoy 1.40 on Linux then verifies no chain at all (a self-signed server passes) and refuses
``subjectAltNames`` with it."""

UPSTREAM_TLS_TYPE = "type.googleapis.com/" + tls_pb2.UpstreamTlsContext.DESCRIPTOR.full_name
_HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_HTTP_OPTIONS_TYPE = (
    "type.googleapis.com/" + http_protocol_options_pb2.HttpProtocolOptions.DESCRIPTOR.full_name
)


def originates(tls: ClientTLSSettings | None) -> bool:
    """Whether ``tls`` makes the sidecar speak TLS upstream (the modes applied here)."""
    return tls is not None and tls.mode in ("SIMPLE", "MUTUAL") and not tls.credential_name


def is_http2(cluster: dict[str, Any]) -> bool:
    """Whether ``cluster`` speaks HTTP/2 to its endpoints (its protocol options say so)."""
    options = cluster.get("typed_extension_protocol_options", {}).get(_HTTP_OPTIONS, {})
    return "http2_protocol_options" in options.get("explicit_http_config", {})


def upstream_tls_context(
    tls: ClientTLSSettings, service_sans: tuple[str, ...] = (), h2: bool = False
) -> dict[str, Any]:
    """The ``UpstreamTlsContext`` of a SIMPLE or MUTUAL ``tls``; ``service_sans``: the
    ServiceEntry's ``subjectAltNames`` (used when ``tls`` has none); ``h2``: the cluster
    speaks HTTP/2."""
    common: dict[str, Any] = {}
    if not tls.insecure_skip_verify:
        validation: dict[str, Any] = {
            "trusted_ca": {"filename": tls.ca_certificates or SYSTEM_ROOTS}
        }
        sans = tls.subject_alt_names or service_sans
        if sans:
            validation["match_typed_subject_alt_names"] = san_matchers(sans)
        common["validation_context"] = validation
    if tls.mode == "MUTUAL" and tls.client_certificate and tls.private_key:
        common["tls_certificates"] = [
            {
                "certificate_chain": {"filename": tls.client_certificate},
                "private_key": {"filename": tls.private_key},
            }
        ]
    if h2:
        common["alpn_protocols"] = ["h2"]
    context: dict[str, Any] = {"@type": UPSTREAM_TLS_TYPE, "common_tls_context": common}
    if tls.sni:
        context["sni"] = tls.sni
    return context


def originate(
    cluster: dict[str, Any], tls: ClientTLSSettings | None, service_sans: tuple[str, ...] = ()
) -> dict[str, Any]:
    """``cluster`` (its HTTP version already set) speaking TLS upstream as ``tls`` says, in
    place; returned. ``service_sans``: the ServiceEntry's ``subjectAltNames``."""
    if tls is None or not originates(tls):
        return cluster
    cluster["transport_socket"] = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": upstream_tls_context(tls, service_sans, is_http2(cluster)),
    }
    # Istio decides auto SNI and SAN validation from the rule's own settings alone.
    if tls.sni:
        return cluster
    auto: dict[str, Any] = {"auto_sni": True}
    if not tls.subject_alt_names and not tls.insecure_skip_verify:
        auto["auto_san_validation"] = True
    typed = cluster.setdefault("typed_extension_protocol_options", {})
    options = typed.setdefault(
        _HTTP_OPTIONS,
        # The upstream protocol is required; HTTP/1.1 is what the cluster spoke before.
        {"@type": _HTTP_OPTIONS_TYPE, "explicit_http_config": {"http_protocol_options": {}}},
    )
    options["upstream_http_protocol_options"] = auto
    return cluster
