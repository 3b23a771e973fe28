"""The API token: made once per state directory, readable only by its owner."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

TOKEN_FILE = "token"
TICKET_KEY_FILE = "xds-ticket.key"
"""The key that signs xDS tickets, in the state directory."""
_TICKET_KEY_BYTES = 32


def ensure_token(state_dir: Path) -> str:
    """Return the token in ``state_dir``, creating it (mode 0600) on first start; the
    directory is made (or set) 0700.

    The file appears whole or not at all (written aside, then renamed), so a crash while
    creating it never leaves an empty token behind; an empty one found anyway is replaced.
    """
    # Only its owner may enter it: it holds the token, the xDS ticket key and the store
    # (private keys of Secrets). Made private if it exists already (an older tsunagi's).
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(state_dir, 0o700)
    path = state_dir / TOKEN_FILE
    if path.exists():
        token = path.read_text().strip()
        if token:
            return token
    token = secrets.token_urlsafe(32)
    write_private(path, (token + "\n").encode())
    return token


def ensure_ticket_key(state_dir: Path) -> bytes:
    """The key that signs xDS tickets (:mod:`tsunagi.xds.tickets`), made on first start in
    ``state_dir`` (mode 0600), so tickets stay valid across restarts."""
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = state_dir / TICKET_KEY_FILE
    if path.exists():
        key = path.read_bytes()
        if len(key) == _TICKET_KEY_BYTES:
            return key
    key = secrets.token_bytes(_TICKET_KEY_BYTES)
    write_private(path, key)
    return key


def write_private(path: Path, data: bytes) -> None:
    """Write ``path`` readable by its owner only (0600), whole or not at all: written aside,
    synced, then renamed over it, so a crash never leaves a partial secret behind."""
    aside = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(aside, path)
