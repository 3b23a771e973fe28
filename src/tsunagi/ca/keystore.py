"""Where the CA's signing certificate and key come from: a root ``tsunagi up`` makes once in
its state directory, or the operator's plug-in CA files (Istio's ``cacerts``).

Either way the files are checked before anything is signed: the key is the certificate's,
the certificate may sign certificates (basicConstraints CA, keyCertSign when key usage is
stated) and is valid now, and a plug-in chain links the certificate to a root. Every error
names the file and what to do.
"""

from __future__ import annotations

import datetime
import itertools
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

from tsunagi.ca.authority import Authority
from tsunagi.ca.issue import issue
from tsunagi.private_files import private_dir, write_private

CA_DIR = "ca"
"""The self-made root's folder in the state directory (mode 0700)."""
CERT_FILE, KEY_FILE = "ca-cert.pem", "ca-key.pem"
"""Its certificate and key (0600), named as Istio's ``cacerts`` files."""
ROOT_LIFETIME = datetime.timedelta(days=3650)
"""Ten years, as Istio's self-signed root."""
ROOT_COMMON_NAME = "tsunagi root CA"


class CaFileError(ValueError):
    """A CA file is missing, unreadable or unfit to sign with; ``str(err)`` names it and
    says what to do."""


def self_signed(state_dir: Path, trust_domain: str, now: datetime.datetime) -> Authority:
    """The CA of ``state_dir``: its root, made on first start (ECDSA P-256, ten years,
    ``O=<trust domain>``) and kept in ``STATE_DIR/ca/``, then loaded and checked on every
    start, so a restart keeps the same root and every certificate it signed stays valid."""
    folder = state_dir / CA_DIR
    private_dir(folder)
    cert_path, key_path = folder / CERT_FILE, folder / KEY_FILE
    if not cert_path.exists():
        # The key is written first: a crash in between leaves a lone key, replaced here.
        _make_root(cert_path, key_path, trust_domain, now)
    elif not key_path.exists():
        raise CaFileError(
            f"{key_path} is missing while {cert_path} is there: restore the key, or remove "
            f"{folder} to make a new root (every workload then needs a new certificate)"
        )
    return plugged_in(cert_path, key_path, None, trust_domain, now)


def plugged_in(
    cert_path: Path,
    key_path: Path,
    chain_path: Path | None,
    trust_domain: str,
    now: datetime.datetime,
) -> Authority:
    """A CA signing with ``cert_path`` and ``key_path``; ``chain_path`` holds the chain from
    it up to the root (it may start with the certificate itself). Without a chain the
    certificate must be a root (self-signed). :class:`CaFileError` when they do not fit."""
    cert = _read_certs(cert_path, "--ca-cert")[0]
    key = _read_key(key_path)
    _check_signer(cert, cert_path, now)
    if _spki(key.public_key()) != _spki(cert.public_key()):
        raise CaFileError(
            f"{key_path} is not the key of {cert_path}: give the key that certificate was "
            "issued for (--ca-key)"
        )
    if chain_path is None:
        if not _self_signed(cert):
            raise CaFileError(
                f"{cert_path} is not self-signed (issuer {cert.issuer.rfc4514_string()}): give "
                "--ca-chain FILE with the certificates from it up to the root"
            )
        return Authority(trust_domain, cert, key)
    chain = [c for c in _read_certs(chain_path, "--ca-chain") if c != cert]
    if not chain:
        if not _self_signed(cert):
            raise CaFileError(
                f"{chain_path} holds only {cert_path} itself: add the certificates up to the root"
            )
        return Authority(trust_domain, cert, key)
    _check_links([cert, *chain], cert_path, chain_path, now)
    return Authority(trust_domain, cert, key, intermediates=tuple(chain[:-1]), roots=(chain[-1],))


def _make_root(cert_path: Path, key_path: Path, trust_domain: str, now: datetime.datetime) -> None:
    root = issue(
        ROOT_COMMON_NAME, is_ca=True, now=now, lifetime=ROOT_LIFETIME, organization=trust_domain
    )
    write_private(key_path, root.key)
    write_private(cert_path, root.cert)


def _read(path: Path, flag: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise CaFileError(f"cannot read {flag} {path}: {e.strerror or e}") from None


def _read_certs(path: Path, flag: str) -> list[x509.Certificate]:
    data = _read(path, flag)
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        raise CaFileError(
            f"{flag} {path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
        ) from None


def _read_key(path: Path) -> CertificateIssuerPrivateKeyTypes:
    data = _read(path, "--ca-key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise CaFileError(
            f"--ca-key {path} is encrypted: give it unencrypted (e.g. `openssl pkey -in "
            f"{path} -out ca-key.pem`), kept readable by its owner only"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise CaFileError(f"--ca-key {path} holds no PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise CaFileError(f"--ca-key {path} is a {type(key).__name__} key; use ECDSA or RSA")
    return key


def _check_signer(cert: x509.Certificate, path: Path, now: datetime.datetime) -> None:
    try:
        basic = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        basic = None
    if basic is None or not basic.ca:
        raise CaFileError(
            f"{path} is not a CA certificate (basicConstraints CA:TRUE): give the "
            "certificate of a CA (Istio's ca-cert.pem), not a workload's"
        )
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        usage = None  # no key usage stated: not restricted (RFC 5280 4.2.1.3)
    if usage is not None and not usage.key_cert_sign:
        raise CaFileError(f"{path} may not sign certificates (its key usage lacks keyCertSign)")
    if now < cert.not_valid_before_utc:
        raise CaFileError(
            f"{path} is not valid until {cert.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ}"
        )
    if now >= cert.not_valid_after_utc:
        raise CaFileError(
            f"{path} expired at {cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}: give a current "
            "CA certificate and key"
        )


def _check_links(
    chain: list[x509.Certificate], cert_path: Path, chain_path: Path, now: datetime.datetime
) -> None:
    for c in chain[1:]:
        if not c.not_valid_before_utc <= now < c.not_valid_after_utc:
            raise CaFileError(
                f"{chain_path}: {c.subject.rfc4514_string()} is not valid now (valid "
                f"{c.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ} to "
                f"{c.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}): give a current chain"
            )
    for child, parent in itertools.pairwise(chain):
        try:
            child.verify_directly_issued_by(parent)
        except (ValueError, TypeError, InvalidSignature):
            who = cert_path if child is chain[0] else child.subject.rfc4514_string()
            raise CaFileError(
                f"{chain_path}: {who} is not signed by the next certificate "
                f"({parent.subject.rfc4514_string()}); list the chain in order, from the "
                "CA certificate's issuer up to the root"
            ) from None
    if not _self_signed(chain[-1]):
        raise CaFileError(
            f"{chain_path} does not end with a root (its last certificate, "
            f"{chain[-1].subject.rfc4514_string()}, is not self-signed): append the root"
        )


def _self_signed(cert: x509.Certificate) -> bool:
    if cert.issuer != cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _spki(key: object) -> bytes:
    return key.public_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
