"""Throwaway certificates for tests, made in memory (no private key is ever checked in)."""

from __future__ import annotations

import base64
import datetime

from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

from tsunagi.ca.issue import Issued, issue


def key_fragments(key: bytes) -> list[str]:
    """Pieces of a private key as they could show up in text: each base64 line of its PEM,
    and a slice of the base64 of the key's bytes at each of the three byte alignments (the
    API carries ``data`` base64-encoded, and the key may sit anywhere in an encoded blob,
    e.g. kubectl's copy of a whole Secret)."""
    lines = [line.decode() for line in key.splitlines() if not line.startswith(b"-----")]
    encoded = [base64.b64encode(key[i:]).decode()[8:72] for i in range(3)]
    return [*(line for line in lines if len(line) >= 16), *encoded]


def leaks(text: str, key: bytes) -> bool:
    """Whether ``text`` holds any piece of ``key`` (see :func:`key_fragments`)."""
    return any(piece in text for piece in key_fragments(key))


def make_ca(cn: str = "test-ca") -> Issued:
    """A self-signed CA."""
    return issue(cn, is_ca=True, now=datetime.datetime.now(datetime.UTC))


def make_cert(
    cn: str,
    sans: tuple[str, ...] = (),
    issuer: Issued | None = None,
    key: CertificateIssuerPrivateKeyTypes | None = None,
) -> Issued:
    """A leaf certificate for ``cn`` (DNS ``sans``), signed by ``issuer`` or self-signed,
    for ``key`` (a new ECDSA one without it)."""
    now = datetime.datetime.now(datetime.UTC)
    return issue(cn, dns_names=sans or (cn,), issuer=issuer, now=now, key=key)
