"""Workload tokens: API credentials that name one workload identity (namespace and service
account) and an expiry, so a sidecar holding one can obtain only that identity's certificate
and register only that identity's instances.

Stateless: a token is its claims and an HMAC-SHA256 of them under a key kept in the state
directory (made once, mode 0600), so the control plane stores no list of tokens, a restart
keeps them valid, and a token signed with another state directory's key is refused. There is
no revocation short of expiry or a new key (delete ``STATE_DIR/workload-token.key``: every
workload token is then refused); keep lifetimes short.

A running workload keeps itself in the mesh: each certificate it obtains with its token comes
with a fresh token for the same identity (:func:`renewed_expiry`), so a token only needs to
outlive the sidecar's start, not the sidecar.

Format: ``tsw1.<base64url of the claims' JSON>.<base64url of the HMAC>``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from pathlib import Path

from tsunagi.private_files import private_dir, read_operator_secret, write_private

PREFIX = "tsw1."
KEY_FILE = "workload-token.key"
DEFAULT_TTL = 24 * 3600.0
"""Seconds a token lasts unless told otherwise: a working day's sidecars, no more."""
MAX_TTL = 366 * 24 * 3600.0
"""The longest lifetime a token may be made with (a year): there is no revocation short of
a new key, so a forgotten token must die on its own."""
_KEY_BYTES = 32


class TokenError(ValueError):
    """A workload token that cannot be accepted; ``str(err)`` says why."""


class KeyFileError(RuntimeError):
    """The key file exists but cannot be the key; ``str(err)`` names it and what to do."""


class Expired(TokenError):
    """A genuine workload token past its expiry; ``claims`` says whose it was."""

    def __init__(self, claims: WorkloadClaims) -> None:
        super().__init__(
            f"the workload token for namespace {claims.namespace!r}, service account "
            f"{claims.service_account!r} expired at unix time {claims.expires:.0f}"
        )
        self.claims = claims


@dataclass(frozen=True)
class WorkloadClaims:
    """What a workload token lets its holder be."""

    namespace: str
    service_account: str
    expires: float
    """Unix seconds."""
    gateway: bool = False
    """It may also obtain a gateway's certificate, which receives private keys
    (``tsunagi token create --gateway``; :mod:`tsunagi.gateway_mark`)."""


def ensure_key(state_dir: Path) -> bytes:
    """The key that signs workload tokens, made on first start in ``state_dir`` (0600).
    A key file of another length is an error (:class:`KeyFileError`), never silently
    replaced: a new key would void every token given out."""
    private_dir(state_dir)
    path = state_dir / KEY_FILE
    if path.exists():
        key = path.read_bytes()
        if len(key) != _KEY_BYTES:
            raise KeyFileError(
                f"{path}: the workload token key has {len(key)} bytes, not {_KEY_BYTES}: "
                "restore it from a backup, or delete it to make a new one (every workload "
                "token given out so far is then refused)"
            )
        return key
    key = secrets.token_bytes(_KEY_BYTES)
    write_private(path, key)
    return key


def load_key(path: Path) -> bytes:
    """The key in ``path`` (``tsunagi up --workload-token-key``): 32 bytes, the form of
    ``STATE_DIR/workload-token.key``, so that replicas given the same file accept each
    other's workload tokens. :class:`KeyFileError` when it cannot be that key or every user
    of the host may read it."""
    make = f"`head -c {_KEY_BYTES} /dev/urandom > {path}; chmod 600 {path}`"
    key = read_operator_secret(
        path,
        "--workload-token-key",
        f"copy the first replica's STATE_DIR/{KEY_FILE}, or make a new key with {make}",
        KeyFileError,
    )
    if len(key) != _KEY_BYTES:
        raise KeyFileError(
            f"--workload-token-key {path} has {len(key)} bytes, not {_KEY_BYTES}: give a "
            f"copy of a replica's STATE_DIR/{KEY_FILE}, or make a new key with {make}"
        )
    return key


def key_fingerprint(key: bytes) -> str:
    """Names ``key`` without revealing it (an HMAC of a constant under it), so replicas can
    compare keys in a shared store."""
    return hmac.new(key, b"tsunagi workload token key fingerprint", hashlib.sha256).hexdigest()


def renewed_expiry(cert_not_after: float, cert_lifetime: float) -> float:
    """When the token handed out with a certificate expires: one certificate lifetime after
    that certificate does. The agent renews at half-life, so it has the next token long
    before this one ends, and a control plane away for less than a certificate lifetime
    past expiry finds the sidecar's token still good."""
    return cert_not_after + cert_lifetime


def is_workload_token(token: str) -> bool:
    """Whether ``token`` has the workload token's form (it may still be forged)."""
    return token.startswith(PREFIX)


def create(key: bytes, claims: WorkloadClaims) -> str:
    """A token carrying ``claims``, signed with ``key``."""
    doc: dict[str, object] = {
        "ns": claims.namespace,
        "sa": claims.service_account,
        "exp": int(claims.expires),
    }
    if claims.gateway:  # only then: other tokens keep their exact form
        doc["gw"] = True
    body = json.dumps(
        doc,
        separators=(",", ":"),
        sort_keys=True,
    ).encode()
    payload = _b64(body)
    return f"{PREFIX}{payload}.{_b64(_mac(key, payload))}"


def verify(key: bytes, token: str, now: float) -> WorkloadClaims:
    """The claims of ``token`` when ``key`` signed it and it has not expired at ``now``;
    :class:`Expired` or :class:`TokenError` otherwise."""
    if not is_workload_token(token):
        raise TokenError("not a workload token")
    payload, dot, mac = token[len(PREFIX) :].partition(".")
    try:
        given = _unb64(mac)
    except (binascii.Error, ValueError):
        given = b""
    # Checked before the claims are even parsed: nothing unsigned is read.
    if not dot or not hmac.compare_digest(given, _mac(key, payload)):
        raise TokenError("not signed by this control plane")
    try:
        doc = json.loads(_unb64(payload))
        claims = WorkloadClaims(
            str(doc["ns"]), str(doc["sa"]), float(doc["exp"]), doc.get("gw") is True
        )
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise TokenError("its claims do not parse") from None
    if now >= claims.expires:
        raise Expired(claims)
    return claims


def _mac(key: bytes, payload: str) -> bytes:
    return hmac.new(key, f"{PREFIX}{payload}".encode(), hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
