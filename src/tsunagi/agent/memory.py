"""Keeping the agent small: it runs beside every app, and its memory counts against the
sidecar's budget (Envoy + agent ≤ 30 MB private)."""

from __future__ import annotations

import ctypes
import gc
import sys

_libc = ctypes.CDLL(None) if sys.platform.startswith("linux") else None


def release_startup_memory() -> None:
    """Give back to the kernel what starting up used and no longer needs.

    Parsing arguments, building the bootstrap and starting Envoy and the app leave freed
    blocks in the C heap that glibc keeps for reuse; the agent then mostly sleeps between
    heartbeats and never needs them again. ``malloc_trim`` returns them to the kernel.
    """
    gc.collect()
    trim_heap()


def trim_heap() -> None:
    """Return the C heap's free pages to the kernel (``malloc_trim``; glibc only)."""
    if _libc is not None and hasattr(_libc, "malloc_trim"):
        _libc.malloc_trim(0)
