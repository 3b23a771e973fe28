"""The API token: made once per state directory, readable only by its owner."""

from __future__ import annotations

import secrets
from pathlib import Path

from tsunagi.private_files import private_dir, write_private

TOKEN_FILE = "token"


def ensure_token(state_dir: Path) -> str:
    """Return the token in ``state_dir``, creating it (mode 0600) on first start; the
    directory is made (or set) 0700.

    The file appears whole or not at all (written aside, then renamed), so a crash while
    creating it never leaves an empty token behind; an empty one found anyway is replaced.
    """
    # Only its owner may enter it: it holds the token, the CA's key and the store
    # (private keys of Secrets). Made private if it exists already (an older tsunagi's).
    private_dir(state_dir)
    path = state_dir / TOKEN_FILE
    if path.exists():
        token = path.read_text().strip()
        if token:
            return token
    token = secrets.token_urlsafe(32)
    write_private(path, (token + "\n").encode())
    return token
