"""Memory settings for a process that serializes megabyte xDS responses: glibc's malloc
thresholds (:func:`raise_malloc_thresholds`) and CPython's collector (:class:`GcFreezer`).

With a thousand services, one CDS response is ~0.9 MB and one EDS response ~0.6 MB. By
default glibc maps blocks that large with ``mmap`` and unmaps them on free, or trims them
off the heap's top, so every ``SerializeToString`` and ``b"".join`` page-faults in fresh
memory. Measured on the 1,000-service scale benchmark (h14): a 1,200-resource response
took 0.8-1.0 ms, 0.08-0.12 ms with both thresholds raised; convergence 11.9 → 10.7 s,
control-plane CPU 12.1 → 10.9 s. The freed blocks stay in the heap for the next response
instead; peak RSS moves by little, since those pages were in use at the peak anyway
(see docs/benchmarks.md).

The thresholds are process-wide, so they are set once at start by the control plane and
by the benchmark's ADS client.
"""

from __future__ import annotations

import gc
import logging

from tsunagi import glibc

log = logging.getLogger("tsunagi")

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
"""``mallopt`` parameters (glibc's ``malloc.h``)."""

MMAP_THRESHOLD = 32 * 1024 * 1024
"""Blocks below this come from the heap: every xDS response does (glibc's dynamic
threshold's own cap on 64-bit)."""
TRIM_THRESHOLD = 256 * 1024 * 1024
"""Free memory at the heap's top kept up to this, not returned to the kernel and faulted
in again by the next push."""


def raise_malloc_thresholds() -> bool:
    """Raise glibc's mmap and trim thresholds (see the module doc); whether it did. Does
    nothing where the C library is not glibc (musl, macOS) or refuses a value."""
    done = glibc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and glibc.mallopt(
        M_TRIM_THRESHOLD, TRIM_THRESHOLD
    )
    if not done:
        log.debug("glibc refused the malloc thresholds; keeping its defaults")
    return done


class GcFreezer:
    """Keeps the published config out of CPython's full (generation-2) collections.

    A World, its snapshots and the memo are a few million objects that live until the next
    push; each full collection walks all of them. Measured on the scale benchmark (h14): a
    gen-2 pause of ~285 ms landed inside a 441 ms endpoint push; with ``gc.freeze()`` after
    each publish the push took 133 ms and pauses stayed ≤ 44 ms. Frozen objects are still
    freed by reference counting (a replaced World is acyclic data), but frozen *cycles* are
    never collected: so once the frozen set has grown to ``growth`` times its size after the
    last full collection, one full collection runs (rarely, like gen-2's own 25% rule).
    """

    def __init__(self, growth: float = 2.0) -> None:
        self.growth = growth
        self._baseline = 0

    def published(self) -> None:
        """Call after a push's state is swapped in (it is now long-lived)."""
        gc.freeze()
        frozen = gc.get_freeze_count()
        if frozen > self.growth * max(self._baseline, 1):
            if self._baseline:  # the first time there is nothing to reclaim yet
                gc.unfreeze()
                gc.collect()
                gc.freeze()
                frozen = gc.get_freeze_count()
            self._baseline = frozen
