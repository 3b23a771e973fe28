"""The API token: made once per state directory, readable only by its owner, or given by
the operator in a file (``tsunagi up --token-file``), so that several replicas share one."""

from __future__ import annotations

import secrets
from pathlib import Path

from tsunagi.private_files import private_dir, read_operator_secret, write_private

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


class TokenFileError(ValueError):
    """``--token-file`` cannot be the admin token; ``str(err)`` names it and what to do."""


def read_token_file(path: Path) -> str:
    """The admin token in ``path`` (surrounding whitespace dropped). Refused
    (:class:`TokenFileError`) when it is missing, empty, or readable by every user: the token
    is every replica's admin password."""
    raw = read_operator_secret(
        path,
        "--token-file",
        f"make one with `head -c 32 /dev/urandom | base64 > {path}; chmod 600 {path}`",
        TokenFileError,
    )
    try:
        text = raw.decode("utf-8").strip()
    except UnicodeDecodeError as e:
        raise TokenFileError(f"--token-file {path}: not text ({e})") from None
    if not text:
        raise TokenFileError(
            f"--token-file {path} is empty; put the admin token in it (any long random "
            f"string, e.g. `head -c 32 /dev/urandom | base64 > {path}`)"
        )
    if any(c.isspace() for c in text):
        raise TokenFileError(
            f"--token-file {path}: the token holds whitespace; it must be one word (as "
            "`Authorization: Bearer TOKEN` carries it)"
        )
    return text


def use_token(state_dir: Path, token: str) -> str:
    """Make ``token`` (from ``--token-file``) the state directory's too, so the CLI and the
    Prometheus config that read ``STATE_DIR/token`` keep working; return it."""
    private_dir(state_dir)
    path = state_dir / TOKEN_FILE
    try:
        current = path.read_text().strip()
    except OSError:
        current = ""
    if current != token:
        write_private(path, (token + "\n").encode())
    return token
