"""Child processes that must not outlive the agent, even when the agent is SIGKILLed."""

from __future__ import annotations

import ctypes
import signal
import sys

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def die_with_parent() -> None:
    """``preexec_fn``: have the kernel send SIGTERM to the child when the agent dies.

    Children run in their own process group (so a terminal's Ctrl-C reaches only the agent,
    which stops them in order); this keeps an agent crash from leaving them orphaned.
    """
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
