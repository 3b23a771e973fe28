"""The control plane's certificate authority: signs workload certificates (SPIFFE IDs) and
the control plane's own xDS serving certificate.

Its signing certificate is a self-signed root that ``tsunagi up`` made (:mod:`.keystore`) or
the operator's plug-in CA (an intermediate, as Istio's ``cacerts``). Workload certificates
follow Istio's: an empty subject, the SPIFFE ID as the only SAN (marked critical, as
RFC 5280 asks when the subject is empty), digitalSignature and keyEncipherment, serverAuth
and clientAuth, not a CA. All crypto is ``cryptography``'s.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificatePublicKeyTypes,
)
from cryptography.x509.oid import ExtendedKeyUsageOID

from tsunagi.ca.csr_checks import CsrRejected, checked_csr
from tsunagi.ca.issue import Issued, key_usage, private_pem
from tsunagi.gateway_mark import GATEWAY_POLICY_OID

__all__ = ["Authority", "CsrRejected", "Signed"]

BACKDATE = datetime.timedelta(minutes=5)
"""Certificates start this long before they are signed: clocks differ a little."""


@dataclass(frozen=True)
class Signed:
    """A signed workload certificate, as ``POST /v1/certificates`` answers it."""

    chain: bytes
    """PEM: the leaf, then the intermediates up to (not including) the root."""
    root: bytes
    """PEM: the trust bundle that verifies ``chain``."""
    spiffe_id: str
    serial: int
    not_before: datetime.datetime
    not_after: datetime.datetime


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


class Authority:
    """Signs with ``key`` as ``cert``; ``intermediates`` link ``cert`` to ``roots`` (empty
    when ``cert`` is itself the root), ``roots`` are the trust bundle workloads receive.
    Build one with :mod:`tsunagi.ca.keystore`, which checks what it loads."""

    def __init__(
        self,
        trust_domain: str,
        cert: x509.Certificate,
        key: CertificateIssuerPrivateKeyTypes,
        intermediates: tuple[x509.Certificate, ...] = (),
        roots: tuple[x509.Certificate, ...] = (),
    ) -> None:
        self.trust_domain = trust_domain
        """The first part of every SPIFFE ID this CA signs (``tsunagi up --trust-domain``)."""
        self.cert = cert
        self._key = key
        self._chain_above = (cert, *intermediates) if roots else intermediates
        """What follows a leaf in its chain: the signing certificate and its intermediates,
        unless the signing certificate is the root itself."""
        self.roots = roots or (cert,)
        self.root_pem = b"".join(_pem(c) for c in self.roots)
        """The trust bundle (PEM): what every workload and the xDS client verify against."""

    @property
    def expires(self) -> datetime.datetime:
        """When the signing certificate expires; nothing it signs outlives it."""
        return self.cert.not_valid_after_utc

    def sign_csr(
        self,
        csr_pem: bytes,
        spiffe_id: str,
        ttl: datetime.timedelta,
        now: datetime.datetime,
        gateway: bool = False,
    ) -> Signed:
        """A workload certificate for ``spiffe_id`` and the CSR's key, valid for ``ttl``
        from ``now`` (never past :attr:`expires`); with ``gateway``, it carries the mark that
        lets its proxy receive private keys (:mod:`tsunagi.gateway_mark`): the caller must
        have checked that the requester may run a gateway. Only the CSR's key is used, none
        of its extensions. Raises :class:`CsrRejected` when the CSR does not verify, has a
        key a workload may not use, or asks for another SAN."""
        if ttl <= datetime.timedelta(0):
            raise ValueError(f"ttl must be positive, got {ttl}")
        csr = checked_csr(csr_pem, spiffe_id)
        cert = self._leaf(
            csr.public_key(),
            [x509.UniformResourceIdentifier(spiffe_id)],
            ttl,
            now,
            policies=(GATEWAY_POLICY_OID,) if gateway else (),
        )
        return Signed(
            chain=_pem(cert) + b"".join(_pem(c) for c in self._chain_above),
            root=self.root_pem,
            spiffe_id=spiffe_id,
            serial=cert.serial_number,
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
        )

    def issue_serving(
        self,
        spiffe_id: str,
        hosts: tuple[str, ...],
        ttl: datetime.timedelta,
        now: datetime.datetime,
    ) -> Issued:
        """A new ECDSA P-256 key and its certificate for a server of this control plane
        (xDS): DNS or IP SANs for ``hosts``, and the URI SAN ``spiffe_id``. ``cert`` is
        the chain, leaf first."""
        key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = [_host_name(h) for h in hosts]
        names.append(x509.UniformResourceIdentifier(spiffe_id))
        cert = self._leaf(key.public_key(), names, ttl, now)
        return Issued(
            _pem(cert) + b"".join(_pem(c) for c in self._chain_above),
            private_pem(key),
            cert.serial_number,
        )

    def _leaf(
        self,
        public_key: CertificatePublicKeyTypes,
        sans: list[x509.GeneralName],
        ttl: datetime.timedelta,
        now: datetime.datetime,
        policies: tuple[str, ...] = (),
    ) -> x509.Certificate:
        not_after = min(now + ttl, self.expires)
        not_before = max(now - BACKDATE, self.cert.not_valid_before_utc)
        if not_after <= now:
            raise ValueError(
                f"the CA's signing certificate expired at {self.expires:%Y-%m-%dT%H:%M:%SZ}; "
                "give tsunagi up a current one (--ca-cert/--ca-key)"
            )
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(key_usage(ca=False), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    self.cert.public_key()  # type: ignore[arg-type]
                ),
                critical=False,
            )
            # An empty subject needs a critical SAN (RFC 5280 4.2.1.6).
            .add_extension(x509.SubjectAlternativeName(sans), critical=True)
        )
        if policies:
            builder = builder.add_extension(
                x509.CertificatePolicies(
                    [x509.PolicyInformation(x509.ObjectIdentifier(p), None) for p in policies]
                ),
                critical=False,  # peers that do not know the policy still accept the certificate
            )
        return builder.sign(self._key, hashes.SHA256())


def _host_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)
