"""One ``tsunagi up`` per state directory.

Two control planes on one state directory would be two writers on one database, each serving
its own in-memory copy of it, and would fight over the token and ``server`` files. The first
one takes an advisory lock (``flock``) on ``STATE_DIR/up.lock`` and holds it for as long as it
lives; the kernel drops the lock when the process dies however it dies (``kill -9``
included), so a stale lock file never blocks a restart.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path
from types import TracebackType

LOCK_FILE = "up.lock"


class StateDirBusy(RuntimeError):
    """Another live ``tsunagi up`` holds the state directory's lock."""

    def __init__(self, state_dir: Path, pid: int | None) -> None:
        self.state_dir = state_dir
        self.pid = pid
        who = f"pid {pid}" if pid else "pid unknown"
        super().__init__(
            f"another tsunagi up ({who}) is using {state_dir}; stop it or use --state-dir"
        )


class StateDirLock:
    """The lock on one state directory; a context manager that holds it while inside."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.path = state_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise :class:`StateDirBusy` naming the holder's pid."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        # Not O_TRUNC: the file holds the current holder's pid, which a refused second
        # process must still be able to read.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StateDirBusy(self.state_dir, self._holder()) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def _holder(self) -> int | None:
        # The holder writes its pid just after locking; give it a moment if we came between.
        for _ in range(10):
            with contextlib.suppress(OSError, ValueError):
                return int(self.path.read_text().strip())
            time.sleep(0.05)
        return None

    def release(self) -> None:
        """Drop the lock. The file stays: unlinking it could let two processes each lock a
        different file of the same name."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __enter__(self) -> StateDirLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
