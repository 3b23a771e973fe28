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

``credentialName`` (a Secret of the proxy's namespace, Istio's ``ApplyCustomSDSToClient
CommonTLSContext``) applies only to a gateway and to a sidecar that a DestinationRule's
``workloadSelector`` selects (:class:`Credentials`): MUTUAL presents ``kubernetes://NAME``,
and the server is verified against ``kubernetes://NAME-cacert`` in a combined validation
context whose default part holds the SAN matchers; both come over SDS on the proxy's ADS
stream. A proxy that will not receive a usable credential (missing Secret, no CA, no key for
MUTUAL, or a proxy not allowed keys) gets no SDS reference, which would keep the cluster
warming forever, but a context that trusts no server at all (:data:`NO_TRUST_CA`): it fails
closed, and ``apply`` warns. Elsewhere (a sidecar no selector picks) Istio originates no TLS
for such a rule, and neither does this.

Not here: ``ISTIO_MUTUAL`` (mesh mTLS, :mod:`.mesh_tls`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2

from tsunagi.api import ClientTLSSettings
from tsunagi.xds.translate.names import credential_ca_secret, credential_secret
from tsunagi.xds.translate.san import san_matchers

SYSTEM_ROOTS = "/etc/ssl/certs/ca-certificates.crt"
"""The system's trusted roots (Debian, Ubuntu, Alpine, Arch; Envoy reads it at config time).
Translation is pure and shared by every sidecar, so it names one well-known path; a host
that keeps its bundle elsewhere sets ``caCertificates``. Not Envoy's ``system_root_certs``:
Envoy 1.40 on Linux then verifies no chain at all (a self-signed server passes) and refuses
``subjectAltNames`` with it."""

NO_TRUST_CA = """-----BEGIN CERTIFICATE-----
MIIByTCCAW+gAwIBAgIUCrDKe8ocEO1KeoEe/86G/DcaE44wCgYIKoZIzj0EAwIw
OTE3MDUGA1UEAwwudHN1bmFnaSBjcmVkZW50aWFsIHVuYXZhaWxhYmxlIChubyBr
ZXkgZXhpc3RzKTAgFw0yNjExMjYxNzA3NDJaGA8yMTI2MTEwMjE3MDc0MlowOTE3
MDUGA1UEAwwudHN1bmFnaSBjcmVkZW50aWFsIHVuYXZhaWxhYmxlIChubyBrZXkg
ZXhpc3RzKTBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABKGaiaVFqlrfmGgh/Ebv
i/GG8Wh6fYU4Fh3slx+71tnZR2qNcf803TNTRRtdx7HBpAldWxXobZNgsegkWj/C
wFmjUzBRMB0GA1UdDgQWBBQEFIdZa+rmcETT/eU3LfKk7psdDjAfBgNVHSMEGDAW
gBQEFIdZa+rmcETT/eU3LfKk7psdDjAPBgNVHRMBAf8EBTADAQH/MAoGCCqGSM49
BAMCA0gAMEUCIFEbtL0YJxIAdIzviSfLzZLafMN8pcH3nnNht3xfZ9b+AiEAlOle
hUNByQY1MNLuXqabGYoNewBNMOHwG0UqPFC3pcw=
-----END CERTIFICATE-----
"""
"""A self-signed CA whose private key was thrown away when it was made: it signs nothing,
so a cluster trusting only it reaches no server. What a cluster whose ``credentialName``
the proxy does not get trusts (fail closed, see the module docstring)."""

_ADS = {"ads": {}, "resource_api_version": "V3"}


@dataclass(frozen=True)
class Credentials:
    """For a proxy that ``credentialName`` applies to: the credentials of its namespace it
    receives over SDS, as ``(name, has chain and key, has CA)``, sorted. Hashable, for memo
    keys; empty for a proxy that gets no keys."""

    delivered: tuple[tuple[str, bool, bool], ...] = ()

    def usable(self, tls: ClientTLSSettings) -> bool:
        """Whether the proxy gets what ``tls``'s ``credentialName`` must give it: a CA to
        verify the server (unless it skips verification), and for MUTUAL a chain and key."""
        found = next((d for d in self.delivered if d[0] == tls.credential_name), None)
        if found is None:
            return False
        _, pair, ca = found
        return (ca or bool(tls.insecure_skip_verify)) and (pair or tls.mode != "MUTUAL")


def _sds(name: str) -> dict[str, Any]:
    return {"name": name, "sds_config": _ADS}


UPSTREAM_TLS_TYPE = "type.googleapis.com/" + tls_pb2.UpstreamTlsContext.DESCRIPTOR.full_name
_HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_HTTP_OPTIONS_TYPE = (
    "type.googleapis.com/" + http_protocol_options_pb2.HttpProtocolOptions.DESCRIPTOR.full_name
)


def originates(tls: ClientTLSSettings | None, credentials: Credentials | None = None) -> bool:
    """Whether ``tls`` makes the proxy speak TLS upstream (the modes applied here);
    ``credentials``: given when ``credentialName`` applies to the proxy."""
    return (
        tls is not None
        and tls.mode in ("SIMPLE", "MUTUAL")
        and (not tls.credential_name or credentials is not None)
    )


def is_http2(cluster: dict[str, Any]) -> bool:
    """Whether ``cluster`` speaks HTTP/2 to its endpoints (its protocol options say so)."""
    options = cluster.get("typed_extension_protocol_options", {}).get(_HTTP_OPTIONS, {})
    return "http2_protocol_options" in options.get("explicit_http_config", {})


def _credential_common(
    tls: ClientTLSSettings, sans: tuple[str, ...], credentials: Credentials
) -> dict[str, Any]:
    """The certificates and validation of ``tls``'s ``credentialName``, over SDS; a context
    that trusts no server when the proxy will not get a usable credential."""
    name = tls.credential_name
    if not name or not credentials.usable(tls):
        return {"validation_context": {"trusted_ca": {"inline_string": NO_TRUST_CA}}}
    common: dict[str, Any] = {}
    if tls.mode == "MUTUAL":
        common["tls_certificate_sds_secret_configs"] = [_sds(credential_secret(name))]
    if not tls.insecure_skip_verify:
        default: dict[str, Any] = {}
        if sans:
            default["match_typed_subject_alt_names"] = san_matchers(sans)
        common["combined_validation_context"] = {
            "default_validation_context": default,
            "validation_context_sds_secret_config": _sds(credential_ca_secret(name)),
        }
    return common


def upstream_tls_context(
    tls: ClientTLSSettings,
    service_sans: tuple[str, ...] = (),
    h2: bool = False,
    credentials: Credentials | None = None,
) -> dict[str, Any]:
    """The ``UpstreamTlsContext`` of a SIMPLE or MUTUAL ``tls``; ``service_sans``: the
    ServiceEntry's ``subjectAltNames`` (used when ``tls`` has none); ``h2``: the cluster
    speaks HTTP/2; ``credentials``: what the proxy gets, when ``credentialName`` applies."""
    common: dict[str, Any] = {}
    if tls.credential_name and credentials is not None:
        common = _credential_common(tls, tls.subject_alt_names or service_sans, credentials)
    elif not tls.insecure_skip_verify:
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
    cluster: dict[str, Any],
    tls: ClientTLSSettings | None,
    service_sans: tuple[str, ...] = (),
    credentials: Credentials | None = None,
) -> dict[str, Any]:
    """``cluster`` (its HTTP version already set) speaking TLS upstream as ``tls`` says, in
    place; returned. ``service_sans``: the ServiceEntry's ``subjectAltNames``;
    ``credentials``: given when ``credentialName`` applies to the proxy."""
    if tls is None or not originates(tls, credentials):
        return cluster
    cluster["transport_socket"] = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": upstream_tls_context(tls, service_sans, is_http2(cluster), credentials),
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
