"""The agent's log lines, without the ``logging`` package.

``logging`` brings ``traceback``, ``tokenize``, ``string``, ``weakref`` and ``warnings`` with
it: 0.7 MB of private memory in every sidecar (measured), for a dozen messages. The lines look
exactly as the CLI's ``logging`` setup writes them (``HH:MM:SS tsunagi.agent: message`` on
stderr) and ``TSUNAGI_LOG`` sets the level the same way.
"""

from __future__ import annotations

import os
import sys
import threading
import time

LEVELS = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40, "CRITICAL": 50}
_threshold = LEVELS["INFO"]
_lock = threading.Lock()  # one line at a time from the agent's threads


def configure(level: str | None = None) -> None:
    """Log at ``level`` and above (default: ``TSUNAGI_LOG``, else INFO; unknown: INFO)."""
    global _threshold
    name = (level or os.environ.get("TSUNAGI_LOG") or "INFO").upper()
    _threshold = LEVELS.get(name, LEVELS["INFO"])


class Log:
    """What the agent's modules call: ``info``, ``warning`` and ``error`` with ``%``-style
    arguments."""

    def __init__(self, name: str) -> None:
        self.name = name

    def info(self, msg: str, *args: object) -> None:
        self._emit(LEVELS["INFO"], msg, args)

    def warning(self, msg: str, *args: object) -> None:
        self._emit(LEVELS["WARNING"], msg, args)

    def error(self, msg: str, *args: object) -> None:
        self._emit(LEVELS["ERROR"], msg, args)

    def _emit(self, level: int, msg: str, args: tuple[object, ...]) -> None:
        if level < _threshold:
            return
        text = msg % args if args else msg
        line = f"{time.strftime('%H:%M:%S')} {self.name}: {text}\n"
        with _lock:
            try:
                sys.stderr.write(line)
                sys.stderr.flush()
            except (OSError, ValueError):
                pass  # no stderr (closed terminal): the sidecar goes on without its log


log = Log("tsunagi.agent")
"""The agent's one logger (``logging.getLogger("tsunagi.agent")`` before)."""
