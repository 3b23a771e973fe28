"""What a certificate says about itself, for people: serial, validity, subject, issuer, SANs.

``proxy-config secret`` shows this for every certificate a proxy holds, as ``istioctl
proxy-config secret`` does (serial in hex, times in UTC as ``2006-01-02T15:04:05Z``). Only
certificates are read here, never a private key.
"""

from __future__ import annotations

import datetime
from dataclasses import asdict, dataclass
from typing import Any

TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


@dataclass(frozen=True)
class CertificateSummary:
    """One certificate's public facts."""

    serial_number: str
    """Hex, lower case, no leading zeros: as istioctl and Envoy's ``/certs`` show it."""
    not_before: str
    not_after: str
    valid: bool
    """``now`` lies between not-before and not-after."""
    subject: str
    issuer: str
    sans: tuple[str, ...]
    """``DNS:…``, ``IP:…``, ``URI:…`` (a SPIFFE identity is a URI SAN)."""

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["sans"] = list(self.sans)
        return out


def summarize(pem: bytes, now: datetime.datetime) -> tuple[list[CertificateSummary], str | None]:
    """Each certificate of a PEM bundle, in order (leaf first for a chain), and the reason
    it could not be read (``None`` when it could)."""
    from cryptography import x509  # here: sidecars import this package and never parse

    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError as e:
        return [], f"not a PEM certificate: {e}"
    return [_summary(c, now) for c in certs], None


def _summary(cert: Any, now: datetime.datetime) -> CertificateSummary:
    before, after = cert.not_valid_before_utc, cert.not_valid_after_utc
    return CertificateSummary(
        serial_number=f"{cert.serial_number:x}",
        not_before=before.strftime(TIME_FORMAT),
        not_after=after.strftime(TIME_FORMAT),
        valid=before <= now <= after,
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        sans=_sans(cert),
    )


def _sans(cert: Any) -> tuple[str, ...]:
    from cryptography import x509

    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (x509.ExtensionNotFound, ValueError):  # none, or one that does not parse
        return ()
    names = [f"DNS:{n}" for n in ext.get_values_for_type(x509.DNSName)]
    names += [f"IP:{n}" for n in ext.get_values_for_type(x509.IPAddress)]
    names += [f"URI:{n}" for n in ext.get_values_for_type(x509.UniformResourceIdentifier)]
    return tuple(names)
