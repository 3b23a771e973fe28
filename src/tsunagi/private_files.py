"""Files only their owner may read, written whole or not at all.

Shared by the control plane (its API token, token key, CA key) and the agent (its SDS files:
the proxy's private key); imports only ``os`` (paths may be ``str`` or ``Path``), so any
part may use it, the agent's small steady state included.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (agent/records.py)
if TYPE_CHECKING:
    from pathlib import Path


def write_private(path: str | Path, data: bytes) -> None:
    """Write ``path`` readable by its owner only (0600), whole or not at all: written aside,
    synced, then renamed over it, so a crash never leaves a partial secret behind."""
    final = os.fspath(path)
    head, name = os.path.split(final)
    aside = os.path.join(head, f".{name}.{os.getpid()}")
    fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(aside, final)


def private_dir(path: str | Path) -> None:
    """Make ``path`` (and missing parents) a directory only its owner may enter (0700),
    tightening it if it exists already."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)


def read_operator_secret(path: str | Path, flag: str, remedy: str, error: type[Exception]) -> bytes:
    """The bytes of a secret the operator names on the command line (``flag``: the option,
    as messages name it). ``error`` when it cannot be read (``remedy``: how to make one) or
    when every user of the host may read or write it."""
    try:
        mode = os.stat(path).st_mode
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise error(f"{flag} {path}: cannot read it ({e.strerror or e}); {remedy}") from None
    if mode & 0o006:  # S_IROTH | S_IWOTH
        raise error(
            f"{flag} {path}: every user of this host may read or write it (mode "
            f"{mode & 0o7777:04o}); `chmod 600 {path}` and start again"
        )
    return data
