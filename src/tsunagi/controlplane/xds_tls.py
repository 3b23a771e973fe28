"""The xDS port's mutual TLS: the control plane's serving certificate, renewed as it ages,
and client certificates checked against the mesh's trust bundle.

The serving certificate comes from the control plane's own CA
(:meth:`~tsunagi.ca.authority.Authority.issue_serving`) and names :func:`xds_server_name`
as a DNS SAN, which every proxy's bootstrap requires (``GET /v1/bootstrap`` says which). The
CA gives workloads a URI SAN and nothing else, so no workload certificate can pose as the
control plane, whatever SPIFFE ID it names (an old one for the control plane's own, from
before a ``--root-namespace`` change, included). gRPC asks for the current
certificate at each new handshake; past half its lifetime a new one is issued, so streams
already open keep theirs and new ones get the new certificate, with no restart.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
from collections.abc import Callable

import grpc

from tsunagi.ca.authority import Authority
from tsunagi.spiffe import spiffe_id

log = logging.getLogger("tsunagi.xds")

CONTROL_PLANE_ACCOUNT = "tsunagi"
"""The service account in the control plane's SPIFFE ID (Istio's is ``istiod``)."""
SERVING_TTL = datetime.timedelta(hours=24)
"""Lifetime of the serving certificate (renewed at half of it)."""

Clock = Callable[[], datetime.datetime]


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def control_plane_identity(trust_domain: str, root_namespace: str) -> str:
    """The SPIFFE ID the xDS serving certificate names:
    ``spiffe://TD/ns/ROOT_NAMESPACE/sa/tsunagi``."""
    return spiffe_id(trust_domain, root_namespace, CONTROL_PLANE_ACCOUNT)


def xds_server_name(trust_domain: str) -> str:
    """The DNS SAN proxies require of the xDS server: ``xds.tsunagi.TRUST_DOMAIN``. A name
    no workload certificate carries (those have one URI SAN only), so it cannot be posed."""
    return f"xds.tsunagi.{trust_domain}"


def serving_hosts(host: str) -> tuple[str, ...]:
    """The DNS/IP SANs for a server listening on ``host``: loopback names too when it is a
    loopback or wildcard address (where local proxies reach it)."""
    local = ("127.0.0.1", "localhost")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return (host, *local) if host == "localhost" else (host,)
    if ip.is_loopback or ip.is_unspecified:
        return tuple(dict.fromkeys((*([] if ip.is_unspecified else [host]), *local)))
    return (host,)


class ServingCertificate:
    """The xDS port's credentials: the current serving certificate, renewed at half its
    lifetime when a handshake asks for it, and mandatory client certificates of the mesh."""

    def __init__(
        self,
        authority: Authority,
        identity: str,
        hosts: tuple[str, ...],
        ttl: datetime.timedelta = SERVING_TTL,
        clock: Clock = _utcnow,
    ) -> None:
        self.authority = authority
        self.identity = identity
        self.hosts = (*hosts, xds_server_name(authority.trust_domain))
        """The DNS/IP SANs: where proxies reach it, and the name they require."""
        self.ttl = ttl
        self.clock = clock
        self.serial = 0
        self._initial = self._issue()

    def _issue(self) -> grpc.ServerCertificateConfiguration:
        now = self.clock()
        issued = self.authority.issue_serving(self.identity, self.hosts, self.ttl, now)
        self.serial = issued.serial
        self._renew_at = now + self.ttl / 2
        return grpc.ssl_server_certificate_configuration(
            [(issued.key, issued.cert)], root_certificates=self.authority.root_pem
        )

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """What gRPC calls at each handshake: a new configuration when the certificate is
        past half its lifetime, else None (keep the current one)."""
        if self.clock() < self._renew_at:
            return None
        try:
            config = self._issue()
        except Exception:  # keep serving the current one; the next handshake retries
            log.exception("could not renew the xDS serving certificate")
            return None
        log.info("xDS serving certificate renewed (serial %x)", self.serial)
        return config

    def credentials(self) -> grpc.ServerCredentials:
        """Server credentials that require a client certificate from the mesh's CA."""
        return grpc.dynamic_ssl_server_credentials(
            self._initial, self.fetch, require_client_authentication=True
        )
