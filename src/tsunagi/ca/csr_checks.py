"""What a workload's certificate signing request may be: the checks the CA makes before it
signs anything.

A CSR is accepted when it parses, its signature verifies (the sender holds the key), its key
is ECDSA P-256 (what Istio's agents make) or RSA of at least 2048 bits, and the only SAN it
asks for, if any, is the SPIFFE ID the caller may obtain. Its subject and any other
extension are ignored: the CA writes the certificate's contents itself.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

MIN_RSA_BITS = 2048


class CsrRejected(ValueError):
    """The CSR cannot be signed; ``str(err)`` says why and what to send instead."""


def checked_csr(csr_pem: bytes, spiffe_id: str) -> x509.CertificateSigningRequest:
    """The parsed CSR, once every check passed; :class:`CsrRejected` otherwise."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError:
        raise CsrRejected(
            "csr is not a PEM certificate signing request (-----BEGIN CERTIFICATE REQUEST-----)"
        ) from None
    problem = key_problem(csr.public_key())
    if problem:
        raise CsrRejected(problem)
    try:
        valid = csr.is_signature_valid
    except Exception:  # an unsupported or malformed signature algorithm
        valid = False
    if not valid:
        raise CsrRejected("csr's signature does not verify: sign it with the key it carries")
    extra = _other_sans(csr, spiffe_id)
    if extra:
        raise CsrRejected(
            f"csr asks for {', '.join(extra)}; a workload certificate carries only its "
            f"SPIFFE ID {spiffe_id} (ask for that URI SAN, or for none)"
        )
    return csr


def key_problem(key: CertificatePublicKeyTypes) -> str:
    """Why a workload may not have ``key`` ("" when it may)."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        if isinstance(key.curve, ec.SECP256R1):
            return ""
        return f"csr's key is ECDSA on {key.curve.name}; use P-256 (secp256r1)"
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size >= MIN_RSA_BITS:
            return ""
        return f"csr's key is RSA of {key.key_size} bits; use at least {MIN_RSA_BITS}, or P-256"
    return f"csr's key is {type(key).__name__.removeprefix('_')}; use ECDSA P-256 (or RSA)"


def _other_sans(csr: x509.CertificateSigningRequest, spiffe_id: str) -> list[str]:
    """The SANs the CSR asks for besides ``spiffe_id``, as ``TYPE:value``."""
    try:
        sans = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    except ValueError as e:  # duplicate or malformed extensions
        raise CsrRejected(f"csr's extensions do not parse: {e}") from None
    out = []
    for name in sans:
        if isinstance(name, x509.UniformResourceIdentifier) and name.value == spiffe_id:
            continue
        value = name.value if isinstance(name.value, str) else str(name.value)
        out.append(f"{_SAN_TYPES.get(type(name), type(name).__name__)}:{value}")
    return out


_SAN_TYPES: dict[type, str] = {
    x509.DNSName: "DNS",
    x509.IPAddress: "IP",
    x509.UniformResourceIdentifier: "URI",
    x509.RFC822Name: "email",
}
