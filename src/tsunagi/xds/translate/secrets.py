"""A proxy's TLS credentials as SDS ``Secret`` resources, delivered over its ADS stream.

Istio's names (:mod:`.names`): ``kubernetes://NAME`` holds the certificate chain and private
key of ``credentialName: NAME``; ``kubernetes://NAME-cacert`` the CA that verifies clients,
when the credential has one. A gateway gets exactly the credentials its selected Gateways'
servers end TLS with, from Secrets in its own namespace (Istio's gateways read no other), and
only when its client certificate on the xDS stream proved its namespace and carries the
CA's gateway mark (``ClientScope.verified``, see :mod:`tsunagi.xds.peer_identity`). A
sidecar gets only those a DestinationRule whose ``workloadSelector`` selects it names
(:mod:`.scoped_rules`). The key travels only inside these resources, never inside listener
config.
"""

from __future__ import annotations

from collections.abc import Iterable

from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2

from tsunagi.mesh import ClientScope, World
from tsunagi.mesh import gateway_ports as ports
from tsunagi.mesh.credentials import Credential
from tsunagi.xds.resources import Resource
from tsunagi.xds.translate.gateway import served_ports
from tsunagi.xds.translate.names import credential_ca_secret, credential_secret


def credential_names(world: World, scope: ClientScope) -> tuple[str, ...]:
    """The credentials (``credentialNames``, else ``credentialName``) of the servers a
    gateway of ``scope`` serves and ends TLS for with them (:func:`.gateway.served_ports`:
    its labels select the Gateways), sorted, each once. A PASSTHROUGH server, one not
    supported, or one left out for its port
    (:func:`tsunagi.mesh.gateway_ports.merge_ports`) needs no key, so gets none."""
    return tuple(
        sorted(
            {
                name
                for ps in served_ports(world, scope)
                for _, server in ps.servers
                if ports.terminates(server)
                for name in ports.credentials(server)
                if name
            }
        )
    )


def existing(world: World, namespace: str, names: Iterable[str]) -> tuple[Credential, ...]:
    """The credentials of ``names`` that exist in ``namespace`` (a proxy reads only its own
    namespace's), in the order of ``names``. Hashable: a memo key for :func:`gateway_secrets`."""
    found = (world.credentials.get((namespace, n)) for n in names)
    return tuple(c for c in found if c is not None)


def wanted_credentials(world: World, scope: ClientScope) -> tuple[Credential, ...]:
    """The credentials a gateway of ``scope`` gets: those its servers name that exist in its
    namespace."""
    return existing(world, scope.namespace, credential_names(world, scope))


def gateway_secrets(credentials: tuple[Credential, ...]) -> dict[str, Resource]:
    """``kubernetes://NAME`` (chain and key) and, when there is a CA, ``kubernetes://NAME-cacert``
    for each credential, packed and versioned by content (a renewed certificate is a new
    version, which the gateway's Envoy takes without a restart)."""
    out: dict[str, Resource] = {}
    for c in credentials:
        if c.has_certificate:
            name = credential_secret(c.name)
            cert = common_pb2.TlsCertificate()
            cert.certificate_chain.inline_bytes = c.certificate_chain
            cert.private_key.inline_bytes = c.private_key
            out[name] = Resource.pack(name, secret_pb2.Secret(name=name, tls_certificate=cert))
        if c.ca:
            name = credential_ca_secret(c.name)
            validation = common_pb2.CertificateValidationContext()
            validation.trusted_ca.inline_bytes = c.ca
            out[name] = Resource.pack(
                name, secret_pb2.Secret(name=name, validation_context=validation)
            )
    return out
