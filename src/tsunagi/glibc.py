"""glibc's malloc controls (``mallopt``, ``malloc_trim``) for the processes that tune their
heap: the agent (:mod:`tsunagi.agent.memory`) and the control plane
(:mod:`tsunagi.controlplane.heap`). Where the C library has none, they do nothing."""

from __future__ import annotations

import ctypes
import sys

_libc = ctypes.CDLL(None) if sys.platform.startswith("linux") else None


def mallopt(param: int, value: int) -> bool:
    """glibc's ``mallopt(param, value)``; whether it took the value (False where the C
    library has no such call or refuses it, as musl's does)."""
    call = getattr(_libc, "mallopt", None)
    return call is not None and bool(call(ctypes.c_int(param), ctypes.c_int(value)))


def malloc_trim() -> None:
    """Return the C heap's free pages to the kernel, where the C library can."""
    call = getattr(_libc, "malloc_trim", None)
    if call is not None:
        call(ctypes.c_size_t(0))
