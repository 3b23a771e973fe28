"""Files only their owner may read, written whole or not at all.

Shared by the control plane (its API token, token key, CA key) and anything else that keeps
a secret on disk; imports nothing, so any part may use it.
"""

from __future__ import annotations

import os
from pathlib import Path


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


def private_dir(path: Path) -> None:
    """Make ``path`` (and missing parents) a directory only its owner may enter (0700),
    tightening it if it exists already."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
