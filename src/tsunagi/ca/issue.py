"""Issue X.509 certificates: a self-signed CA, or a certificate signed by one.

ECDSA P-256 keys (what Istio's workload certificates use) unless given one, PKCS#8 PEM.
The demo's gateway certificate and the tests' throwaway certificates come from here; the
mesh's own CA, which signs workload and xDS serving certificates, is
:mod:`tsunagi.ca.authority`.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class Issued:
    """A certificate, its private key (both PEM) and its serial number."""

    cert: bytes
    key: bytes = field(repr=False)
    serial: int


def issue(
    common_name: str,
    *,
    dns_names: tuple[str, ...] = (),
    issuer: Issued | None = None,
    is_ca: bool = False,
    now: datetime.datetime,
    lifetime: datetime.timedelta = datetime.timedelta(days=1),
    key: CertificateIssuerPrivateKeyTypes | None = None,
    organization: str = "",
) -> Issued:
    """A certificate for ``common_name`` (and ``O=organization`` if given) with
    ``dns_names`` as DNS SANs, signed by ``issuer`` (self-signed without one), valid from
    five minutes before ``now`` (clocks differ a little) for ``lifetime``; its key is
    ``key``, else a new ECDSA P-256 one. A CA's certificate states that it signs
    certificates (keyCertSign, cRLSign) and its key identifier, as RFC 5280 asks."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attributes.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    name = x509.Name(attributes)
    if issuer is not None:
        signer = serialization.load_pem_private_key(issuer.key, password=None)
        issuer_name = x509.load_pem_x509_certificate(issuer.cert).subject
    else:
        signer, issuer_name = key, name
    serial = x509.random_serial_number()
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
    )
    if is_ca:
        builder = builder.add_extension(key_usage(ca=True), critical=True)
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        builder = builder.add_extension(ski, critical=False)
    if dns_names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in dns_names]), critical=False
        )
    cert = builder.sign(signer, hashes.SHA256())  # type: ignore[arg-type]
    return Issued(cert.public_bytes(serialization.Encoding.PEM), private_pem(key), serial)


def key_usage(*, ca: bool) -> x509.KeyUsage:
    """The KeyUsage extension (to be marked critical) of a CA's certificate (it signs
    certificates and CRLs) or of a leaf's (TLS with an ECDSA or RSA key)."""
    return x509.KeyUsage(
        digital_signature=True,
        key_encipherment=not ca,
        content_commitment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def private_pem(key: CertificateIssuerPrivateKeyTypes) -> bytes:
    """``key`` as unencrypted PKCS#8 PEM (what Envoy and the CA files read)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
