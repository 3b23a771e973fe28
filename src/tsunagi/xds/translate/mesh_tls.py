"""Mesh mTLS from the client side: auto mTLS, and DestinationRule ``tls.mode: ISTIO_MUTUAL``.

Istio's rules (``buildUpstreamTLSSettings``, ``applyUpstreamTLSSettings``):

- A DestinationRule ``tls`` decides when it is set: ``ISTIO_MUTUAL`` always speaks mesh
  mTLS, sidecar or not; ``DISABLE`` never; ``SIMPLE``/``MUTUAL`` originate the rule's TLS
  (:mod:`.origination`).
- Without one (auto mTLS), each endpoint decides: the cluster of every service that is
  not ``MESH_EXTERNAL`` speaks mesh mTLS (its ``transport_socket``) to sidecars whose
  PeerAuthentication does not DISABLE the port (see ``Endpoint.tls_mode``) and plain text
  to the others, which EDS marks ``tlsMode: disabled`` for the cluster's one
  ``transport_socket_matches`` entry. Istio marks the sidecars instead (``tlsMode: istio``
  on each); marking the few plain endpoints keeps EDS as small as it was without mTLS.
  Not one group per tlsMode in a locality either: Envoy keys locality weights by locality,
  so two groups of one locality would lose one's weight. Decided by the service, not its
  endpoints (Istio's rule), so the first or last sidecar of a service is an EDS-only change.
  A ``MESH_EXTERNAL`` ServiceEntry never gets auto mTLS, even for an endpoint labelled
  ``tlsMode: istio``.
- Mesh mTLS presents the proxy's own certificate (SDS secret ``default``), checks the
  server's chain against the mesh roots (``ROOTCA``) and its SAN against the SPIFFE IDs of
  the service's endpoints' service accounts plus the ServiceEntry's ``subjectAltNames``
  (the rule's ``subjectAltNames`` instead, when it sets some); SNI
  ``outbound_.PORT_.SUBSET_.HOST`` unless the rule sets ``sni``; ALPN ``istio`` (with
  ``h2`` for HTTP/2 clusters), which tells a PERMISSIVE server's TLS chain from a plain TLS
  client's; TLS 1.2 to 1.3.

The SDS secrets are files relative to Envoy's working directory (:mod:`tsunagi.proxy_contract`),
so a cluster is the same for every proxy and stays shared. A dynamic forward proxy cluster
(``resolution: NONE``) gets no mesh mTLS: its hosts are outside the mesh (the caller
leaves it out).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from envoy.extensions.transport_sockets.raw_buffer.v3 import raw_buffer_pb2

from tsunagi import proxy_contract as pc
from tsunagi.api import ClientTLSSettings
from tsunagi.mesh import Endpoint, Service
from tsunagi.mesh.world import TLS_MODE_ISTIO
from tsunagi.spiffe import SCHEME, spiffe_id
from tsunagi.xds.translate.origination import UPSTREAM_TLS_TYPE, is_http2
from tsunagi.xds.translate.san import san_matchers

TRANSPORT_SOCKET_MATCH = "envoy.transport_socket_match"
"""The endpoint metadata namespace a cluster's ``transport_socket_matches`` read."""
TLS_MODE_KEY = "tlsMode"
RAW_BUFFER = {
    "name": "envoy.transport_sockets.raw_buffer",
    "typed_config": {
        "@type": "type.googleapis.com/" + raw_buffer_pb2.RawBuffer.DESCRIPTOR.full_name
    },
}
ALPN_IN_MESH = ["istio"]
ALPN_IN_MESH_H2 = ["istio", "h2"]


@dataclass(frozen=True)
class Peers:
    """What a service's clusters need to know for mesh mTLS (hashable, so it can key the
    clusters' memo: it changes only when a service account comes or goes)."""

    auto: bool = False
    """Auto mTLS applies: the service is not ``MESH_EXTERNAL``."""
    identities: tuple[str, ...] = ()
    """The names a server's certificate may carry, sorted: the SPIFFE IDs of the endpoints'
    service accounts and the ServiceEntry's ``subjectAltNames``."""


NO_PEERS = Peers()


def peers_of(svc: Service, trust_domain: str) -> Peers:
    """:class:`Peers` of ``svc``: from the service alone, never its endpoints."""
    names = set(svc.subject_alt_names)
    names.update(spiffe_id(trust_domain, ns, sa) for ns, sa in svc.service_accounts)
    return Peers(not svc.mesh_external, tuple(sorted(names)))


TLS_MODE_DISABLED = "disabled"
PLAIN_METADATA = {"filter_metadata": {TRANSPORT_SOCKET_MATCH: {TLS_MODE_KEY: TLS_MODE_DISABLED}}}
"""The EDS metadata of an endpoint that takes no mesh mTLS (not a sidecar's)."""


def endpoint_metadata(ep: Endpoint) -> dict[str, Any] | None:
    """The EDS metadata that selects plain text for ``ep`` under auto mTLS (None: a
    sidecar's endpoint, which gets the cluster's mesh mTLS)."""
    return None if ep.tls_mode == TLS_MODE_ISTIO else PLAIN_METADATA


def mesh_sni(host: str, port: int, subset: str = "") -> str:
    """Istio's SNI for mesh mTLS: ``outbound_.9080_.v1_.reviews.default.svc.cluster.local``
    (``outbound_.9080_._.HOST`` without a subset)."""
    return f"outbound_.{port}_.{subset}_.{host}"


def _san_matchers(names: Sequence[str]) -> list[dict[str, Any]]:
    # A SPIFFE ID is a URI SAN; other names (a rule's or a ServiceEntry's) match a SAN of
    # any type, as Istio's untyped matcher does.
    out: list[dict[str, Any]] = []
    for n in names:
        if n.startswith(SCHEME):
            out.append({"san_type": "URI", "matcher": {"exact": n}})
        else:
            out += san_matchers([n])
    return out


def upstream_context(
    sni: str, identities: Sequence[str], h2: bool, verify_san: bool = True
) -> dict[str, Any]:
    """The ``UpstreamTlsContext`` of mesh mTLS to a server named ``sni`` whose certificate
    names one of ``identities`` (any, when empty or not ``verify_san``)."""
    validation: dict[str, Any] = {}
    if identities and verify_san:
        validation["match_typed_subject_alt_names"] = _san_matchers(identities)
    return {
        "@type": UPSTREAM_TLS_TYPE,
        "common_tls_context": {
            "tls_params": {
                "tls_minimum_protocol_version": "TLSv1_2",
                "tls_maximum_protocol_version": "TLSv1_3",
            },
            "tls_certificate_sds_secret_configs": [pc.sds_secret_config(pc.WORKLOAD_SECRET)],
            "combined_validation_context": {
                "default_validation_context": validation,
                "validation_context_sds_secret_config": pc.sds_secret_config(pc.ROOT_CA_SECRET),
            },
            "alpn_protocols": ALPN_IN_MESH_H2 if h2 else ALPN_IN_MESH,
        },
        "sni": sni,
    }


_PLAIN_MATCH = {
    "name": f"{TLS_MODE_KEY}-{TLS_MODE_DISABLED}",
    "match": {TLS_MODE_KEY: TLS_MODE_DISABLED},
    "transport_socket": RAW_BUFFER,
}
"""The one transport socket match of an auto mTLS cluster: plain text for the endpoints
EDS marks with :data:`PLAIN_METADATA`; the others take the cluster's mesh mTLS."""


def secure(
    cluster: dict[str, Any],
    tls: ClientTLSSettings | None,
    peers: Peers,
    sni: str,
) -> bool:
    """Mesh mTLS on ``cluster`` (its HTTP version already set), in place, when ``tls`` (the
    rule's, for this cluster) is ISTIO_MUTUAL, or unset for in-mesh ``peers`` (auto mTLS);
    ``sni``: Istio's (:func:`mesh_sni`). Returns whether it did: otherwise the rule's
    ``tls``, if any, is the caller's to apply."""
    h2 = is_http2(cluster)
    if tls is not None:
        if tls.mode != "ISTIO_MUTUAL":
            return False
        names = tls.subject_alt_names or peers.identities
        context = upstream_context(tls.sni or sni, names, h2, not tls.insecure_skip_verify)
    elif peers.auto:
        context = upstream_context(sni, peers.identities, h2)
        # Endpoints marked by EDS (:data:`PLAIN_METADATA`) take plain text instead.
        cluster["transport_socket_matches"] = [_PLAIN_MATCH]
    else:
        return False
    cluster["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": context}
    return True
