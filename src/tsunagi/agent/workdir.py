"""The sidecar's private directory (Envoy's bootstrap and log, the metrics FIFO).

With ``os`` alone: ``tempfile`` and ``shutil`` would bring ``random``, ``bz2``, ``lzma`` and
``fnmatch`` into every sidecar (0.5 MB of private memory, measured) for one directory.
"""

from __future__ import annotations

import contextlib
import os


def _tmp_root() -> str:
    """Where temporary directories go: ``TMPDIR`` when it is a directory, else /tmp (as
    ``tempfile.gettempdir`` does on Linux)."""
    root = os.environ.get("TMPDIR", "")
    return root if root and os.path.isdir(root) else "/tmp"


def make_workdir(prefix: str) -> str:
    """A new directory only this user can enter, named ``prefix`` + random characters."""
    root = _tmp_root()
    for _ in range(100):
        path = os.path.join(root, prefix + os.urandom(6).hex())
        try:
            os.mkdir(path, 0o700)
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"no free directory name for {prefix!r} in {root}")


def remove_workdir(path: str) -> None:
    """Remove ``path`` and everything in it; what cannot be removed is left (best effort)."""
    try:
        entries = list(os.scandir(path))
    except OSError:
        return
    for entry in entries:
        with contextlib.suppress(OSError):
            if entry.is_dir(follow_symlinks=False):
                remove_workdir(entry.path)
            else:
                os.unlink(entry.path)
    with contextlib.suppress(OSError):
        os.rmdir(path)
