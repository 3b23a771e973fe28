"""Who is on the other end of an ADS stream: the SPIFFE ID of its client certificate, and
whether the node is what that certificate says.

The xDS port takes only mutual TLS from certificates of the mesh's CA, so the certificate is
proof; the node's metadata is only a claim. As Istio's xDS server does, a node whose
metadata names another namespace, or another service account, than its certificate is
refused (``PERMISSION_DENIED``); so is a certificate of another trust domain or with no
workload identity, and a node id that is not ``NAME.NAMESPACE`` of its own namespace (the id
keys a node's config, so it must not reach across namespaces). Pure: the server hands in
gRPC's auth context.

Passing these checks earns a stream, not private keys: only a node whose certificate carries
the CA's gateway mark (:func:`may_hold_keys`, :mod:`tsunagi.gateway_mark`) is sent its
Gateways' SDS Secrets. A sidecar that passed them (its namespace proven) gets only the
Secrets of its namespace that a DestinationRule whose ``workloadSelector`` selects it names
(``credentialName``, see ``xds/translate/scoped_rules.py``), as Istio's SDS allows a proxy
its own namespace's Secrets.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache

from tsunagi import proxy_contract as pc
from tsunagi import spiffe
from tsunagi.gateway_mark import has_gateway_mark

SPIFFE_PROPERTY = "peer_spiffe_id"
"""The auth-context property where gRPC puts the client certificate's SPIFFE ID (set only
when the certificate holds exactly one URI SAN and it is a SPIFFE ID)."""


CERT_PROPERTY = "x509_pem_cert"
"""The auth-context property where gRPC puts the client certificate (PEM), verified
against the mesh's CA by the mutual-TLS handshake."""


def may_hold_keys(auth_context: Mapping[str, Sequence[bytes]]) -> bool:
    """Whether the client certificate carries the gateway mark that only the CA writes,
    for callers allowed to run a gateway: only such a node receives private keys."""
    values = auth_context.get(CERT_PROPERTY) or ()
    return len(values) == 1 and _marked(bytes(values[0]))


@lru_cache(maxsize=2048)
def _marked(cert_pem: bytes) -> bool:
    # A proxy reopens its stream with the same certificate until it rotates (at half-life),
    # and 1,000 proxies reconnect at once after a restart: parse each certificate once.
    # Bounded: a few MB of PEM at most; rotated-out certificates fall off the end.
    return has_gateway_mark(cert_pem)


def presented_identity(auth_context: Mapping[str, Sequence[bytes]]) -> str | None:
    """The SPIFFE ID the client certificate proves, or None (no TLS, no certificate, or not
    exactly one SPIFFE ID in it)."""
    values = auth_context.get(SPIFFE_PROPERTY) or ()
    if len(values) != 1:
        return None
    return values[0].decode(errors="replace")


def claimed(metadata: Mapping[str, object]) -> tuple[str, str]:
    """``(namespace, service account)`` the node claims, the namespace defaulted as
    :meth:`tsunagi.mesh.Node.from_metadata` does (what its config would be made for); an
    empty service account claims none."""
    namespace = str(metadata.get(pc.META_NAMESPACE) or "default")
    return namespace, str(metadata.get(pc.META_SERVICE_ACCOUNT) or "")


def refusal(
    node_id: str, metadata: Mapping[str, object], presented: str | None, trust_domain: str
) -> str | None:
    """Why node ``node_id`` with ``metadata`` may not have a stream, given the identity its
    certificate proves (``presented``); None when it may."""
    namespace, account = claimed(metadata)
    claim = f"namespace {namespace!r}" + (f", service account {account!r}" if account else "")
    if presented is None:
        return (
            f"proxy {node_id} ({claim}) presented no client certificate with a workload "
            "identity (one spiffe://TD/ns/NS/sa/SA URI SAN); its agent gets one from "
            "POST /v1/certificates"
        )
    parts = spiffe.parse(presented)
    if parts is None:
        return (
            f"proxy {node_id} ({claim}) presented {presented}, which is not a workload "
            "identity (spiffe://TD/ns/NS/sa/SA)"
        )
    td, cert_ns, cert_sa = parts
    if td != trust_domain:
        return (
            f"proxy {node_id} presented {presented} of trust domain {td!r}; this mesh's is "
            f"{trust_domain!r}"
        )
    if cert_ns != namespace or (account and cert_sa != account):
        return (
            f"proxy {node_id} claims {claim} but its certificate is {presented} (namespace "
            f"{cert_ns!r}, service account {cert_sa!r}): start it with --namespace "
            f"{cert_ns} --service-account {cert_sa}, or with a token for the identity it claims"
        )
    if not node_id.endswith(f".{namespace}"):
        # The id keys the node's config and status: a proxy of one namespace must not be
        # able to take over the id (and so the pushes) of a proxy of another.
        return (
            f"proxy id {node_id!r} does not end in '.{namespace}': a proxy's id is "
            f"NAME.NAMESPACE, here NAME.{namespace}"
        )
    return None


def takeover(node_id: str, presented: str, holder: str | None) -> str | None:
    """Why a stream proving ``presented`` may not take node id ``node_id`` from the connected
    stream that holds it and proved ``holder``; None when it may (nobody holds the id, or
    the same identity reconnects: an Envoy restarted, or a stream the server has not yet
    noticed is gone)."""
    if holder is None or holder == presented:
        return None
    return (
        f"proxy id {node_id!r} is held by a connected proxy of {holder}; {presented} may not "
        "take it over: give this proxy another name (tsunagi run --name)"
    )
