"""Bound tickets: which proxies may receive a gateway's private keys.

Until xDS is authenticated with mTLS (issue 10), anyone who reaches the xDS port could claim
to be a gateway. ``GET /v1/bootstrap`` (which needs the API token) hands an agent a ticket
bound to its node id and namespace: an HMAC-SHA256 with a key only the control plane holds.
Envoy sends it on its ADS stream as gRPC metadata (:data:`METADATA_KEY`); the server checks
it once, when the stream opens, and only a gateway whose ticket matched gets Secrets.

The key lives in the state directory (made once, mode 0600), so tickets stay valid across
control-plane restarts and Envoy's reconnects.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

METADATA_KEY = "x-tsunagi-ticket"
"""The gRPC metadata (an HTTP/2 header) that carries the ticket on the ADS stream."""

KEY_FILE = "xds-ticket.key"
"""The control plane's ticket key, in its state directory."""

_KEY_BYTES = 32


def bindable(text: str) -> bool:
    """Whether ``text`` may be bound into a ticket: no NUL or other control character."""
    return text.isprintable()


def ticket(key: bytes, node_id: str, namespace: str) -> str:
    """The ticket of the proxy ``node_id`` in ``namespace`` (hex).

    Raises ``ValueError`` if either holds a control character: a NUL separates the two in
    the signed message, so allowing one would make ("x\\0ns2", "y") sign as ("x", "ns2\\0y").
    """
    for what, text in (("node id", node_id), ("namespace", namespace)):
        if not bindable(text):
            raise ValueError(f"the {what} {text!r} holds a control character")
    message = f"tsunagi-xds-ticket-v1\0{node_id}\0{namespace}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def matches(key: bytes, presented: str | None, node_id: str, namespace: str) -> bool:
    """Whether ``presented`` is the ticket of ``node_id`` in ``namespace`` (constant time).

    A node id or namespace with a control character never matches (no ticket is made for one).
    """
    if not presented or not bindable(node_id) or not bindable(namespace):
        return False
    return hmac.compare_digest(presented.encode(), ticket(key, node_id, namespace).encode())


def ensure_key(state_dir: Path) -> bytes:
    """The ticket key in ``state_dir``, made on first start (mode 0600, written aside then
    renamed, so it appears whole or not at all)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / KEY_FILE
    if path.exists():
        key = path.read_bytes()
        if len(key) == _KEY_BYTES:
            return key
    key = secrets.token_bytes(_KEY_BYTES)
    aside = state_dir / f".{KEY_FILE}.{os.getpid()}"
    fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key)
        f.flush()
        os.fsync(f.fileno())
    os.replace(aside, path)
    return key
