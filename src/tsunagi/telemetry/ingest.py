"""Turn each sidecar's cumulative counters into increments for the :class:`SeriesStore`.

Counters are per process: each sidecar's are remembered separately, so a restart (a counter
that went down) is seen per sidecar, as Prometheus' ``increase()`` does per series, and
replicas reporting the same label set can then share one stored series.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable

from tsunagi.telemetry.series import Labels, SeriesStore

Sample = tuple[str, Labels, float]
"""``(metric, stored label values, cumulative value)``."""


class CounterDeltas:
    """The last cumulative value of every counter of every target."""

    def __init__(self, store: SeriesStore) -> None:
        self.store = store
        self._last: dict[Hashable, dict[tuple[str, Labels], float]] = {}

    def ingest(self, target: Hashable, samples: Iterable[Sample]) -> None:
        """Add the increase since ``target``'s previous scrape of every sample. The first
        scrape of a target only sets its baseline (its counts' start time is unknown)."""
        previous = self._last.get(target)
        current: dict[tuple[str, Labels], float] = {}
        add = self.store.add
        for metric, labels, value in samples:
            key = (metric, labels)
            current[key] = current.get(key, 0.0) + value
        if previous is not None:
            for key, value in current.items():
                before = previous.get(key)
                if before is None:
                    # A label set new to this target: it appeared since the last scrape.
                    increment = value
                elif value < before:
                    increment = value  # reset: the process restarted and counted from 0
                else:
                    increment = value - before
                # Zeros too: a histogram's quantile needs every bucket's bound.
                add(key[0], key[1], increment)
        self._last[target] = current

    def forget(self, keep: Iterable[Hashable]) -> None:
        """Drop the baselines of targets not in ``keep`` (deregistered sidecars)."""
        wanted = set(keep)
        for target in [t for t in self._last if t not in wanted]:
            del self._last[target]

    @property
    def targets(self) -> int:
        """How many targets have a baseline."""
        return len(self._last)
