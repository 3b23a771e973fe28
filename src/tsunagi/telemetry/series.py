"""A bounded in-memory time-series store for the dashboard: the last hour of Istio's counters.

Each series is a ring of per-tick *increments* (float32), not of raw counter values: the
scraper turns each sidecar's cumulative counter into the increase since its previous scrape
(a counter that went down was reset, and its new value is the increase, as Prometheus'
``increase()`` assumes), then adds it to the series for that label set. Replicas that report
the same label set therefore share one series, and queries are plain sums over ticks.

Memory bound: ``max_series * capacity * 4`` bytes for the rings (defaults: 20,000 series * 720
ticks (1 h at 5 s) * 4 B = 57.6 MB at most) plus one small object per series; label sets
beyond ``max_series`` are counted in :attr:`SeriesStore.dropped` and not stored.

Off the event loop: the control plane's loop also serves xDS, and a query over 20,000 series
or the parsing of a scrape round takes far longer than a push may wait. :meth:`SeriesStore.call`
runs work on the store's one thread, which also serializes every read and write (no locks).
"""

from __future__ import annotations

import asyncio
import math
from array import array
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

Labels = tuple[str, ...]
"""A series' label values, in the order its metric's label names are declared."""


class _Ring:
    __slots__ = ("last", "values")

    def __init__(self, capacity: int) -> None:
        self.values = array("f", bytes(4 * capacity))
        self.last = -1
        """The last tick written; slots of ticks after it hold stale data, read as 0."""


@dataclass(frozen=True)
class Point:
    """One step of a range query: the sum of increments in ``(start, end]``."""

    end: float
    value: float


class SeriesStore:
    """Per-tick increments of counters, for ``capacity`` ticks, at most ``max_series`` series.

    Time advances only through :meth:`tick` (the scraper calls it once per scrape with the
    scrape's wall-clock time), so queries are deterministic and tests control time.
    """

    def __init__(self, capacity: int = 720, max_series: int = 20_000) -> None:
        if capacity < 2:
            raise ValueError("capacity must be at least 2 ticks")
        self.capacity = capacity
        self.max_series = max_series
        self.dropped = 0
        """Label sets refused because the store was full (new ones only)."""
        self._tick = -1
        self._times = array("d", [math.nan] * capacity)
        self._series: dict[str, dict[Labels, _Ring]] = {}
        self.version = 0
        """Bumped by every write: a query's answer holds while it is unchanged."""
        self._worker: ThreadPoolExecutor | None = None

    async def call(self, work: Callable[[], T]) -> T:
        """``work()`` on the store's own thread (one thread: calls never overlap, so reads
        and writes need no lock), leaving the caller's event loop free meanwhile."""
        if self._worker is None:
            self._worker = ThreadPoolExecutor(1, thread_name_prefix="tsunagi-series")
        return await asyncio.get_running_loop().run_in_executor(self._worker, work)

    def close(self) -> None:
        """Stop the store's thread (after the work already queued)."""
        if self._worker is not None:
            self._worker.shutdown(wait=False)
            self._worker = None

    @property
    def series_count(self) -> int:
        """How many series are stored (all metrics)."""
        return sum(len(m) for m in self._series.values())

    @property
    def now(self) -> float:
        """The time of the latest tick (NaN before the first)."""
        return self._times[self._tick % self.capacity] if self._tick >= 0 else math.nan

    def tick(self, when: float) -> None:
        """Start a new tick at ``when``; :meth:`add` writes into it until the next one."""
        self._tick += 1
        self._times[self._tick % self.capacity] = when
        self.version += 1

    def add(self, metric: str, labels: Labels, increment: float) -> None:
        """Add ``increment`` to ``metric{labels}`` at the current tick."""
        if self._tick < 0:
            raise RuntimeError("call tick() before add()")
        self.version += 1
        by_labels = self._series.setdefault(metric, {})
        ring = by_labels.get(labels)
        if ring is None:
            if self.series_count >= self.max_series:
                self.dropped += 1
                return
            ring = by_labels[labels] = _Ring(self.capacity)
        slot = self._tick % self.capacity
        if ring.last != self._tick:
            # Ticks this series skipped had no increase: zero them (at most one lap).
            for t in range(max(ring.last + 1, self._tick - self.capacity + 1), self._tick):
                ring.values[t % self.capacity] = 0.0
            ring.values[slot] = 0.0
            ring.last = self._tick
        ring.values[slot] += increment

    def _ticks_within(self, window: float, end_tick: int | None = None) -> range:
        """Ticks whose time is in ``(end - window, end]``."""
        end = self._tick if end_tick is None else end_tick
        if end < 0:
            return range(0)
        end_time = self._times[end % self.capacity]
        first = end
        oldest = max(0, self._tick - self.capacity + 1)
        while first - 1 >= oldest and self._times[(first - 1) % self.capacity] > end_time - window:
            first -= 1
        return range(first, end + 1)

    def _sum(self, ring: _Ring, ticks: range) -> float:
        """The ring's increments over ``ticks`` (only ticks it holds: within one lap of its
        last write), summed over slices so that a 1-hour window stays cheap."""
        lo = max(ticks.start, ring.last - self.capacity + 1)
        hi = min(ticks.stop - 1, ring.last)
        if hi < lo:
            return 0.0
        a, b = lo % self.capacity, hi % self.capacity
        if a <= b:
            return float(sum(ring.values[a : b + 1]))
        return float(sum(ring.values[a:]) + sum(ring.values[: b + 1]))

    def increase(
        self,
        metric: str,
        window: float,
        group: Callable[[Labels], Labels | None],
    ) -> dict[Labels, float]:
        """``sum by (group) (increase(metric[window]))``: ``group`` maps a series' labels to
        its group's labels, or None to leave the series out."""
        ticks = self._ticks_within(window)
        out: dict[Labels, float] = {}
        for labels, ring in self._series.get(metric, {}).items():
            key = group(labels)
            if key is None or ring.last < ticks.start:
                continue
            out[key] = out.get(key, 0.0) + self._sum(ring, ticks)
        return out

    def rate(
        self, metric: str, window: float, group: Callable[[Labels], Labels | None]
    ) -> dict[Labels, float]:
        """``sum by (group) (rate(metric[window]))``: the increase per second."""
        return {k: v / window for k, v in self.increase(metric, window, group).items()}

    def increase_range(
        self,
        metric: str,
        window: float,
        step: float,
        group: Callable[[Labels], Labels | None],
    ) -> tuple[list[float], dict[Labels, list[float]]]:
        """Increases over consecutive ``step``-long intervals covering the last ``window``:
        the intervals' end times and, per group, one value per interval."""
        if self._tick < 0 or step <= 0:
            return [], {}
        now = self.now
        steps = max(1, min(int(window // step), 1000))
        ends = [now - step * i for i in range(steps - 1, -1, -1)]
        # Map every retained tick to the interval it falls in.
        slot_of: dict[int, int] = {}
        for t in self._ticks_within(window):
            age = now - self._times[t % self.capacity]
            index = steps - 1 - int(age // step)
            if 0 <= index < steps:
                slot_of[t] = index
        series: dict[Labels, list[float]] = {}
        for labels, ring in self._series.get(metric, {}).items():
            key = group(labels)
            if key is None:
                continue
            row = series.setdefault(key, [0.0] * steps)
            for t, index in slot_of.items():
                if t <= ring.last and t > ring.last - self.capacity:
                    row[index] += ring.values[t % self.capacity]
        return ends, series


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> float:
    """Prometheus' ``histogram_quantile``: ``buckets`` maps each upper bound (``le``,
    ``math.inf`` included) to its cumulative count. Linear interpolation inside the bucket
    the rank falls in; the first bucket's lower bound is 0 (if its upper bound is positive);
    a rank in the +Inf bucket answers the highest finite bound; NaN without observations."""
    if math.isnan(q):
        return math.nan
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    bounds = sorted(buckets)
    if not bounds or bounds[-1] != math.inf:
        return math.nan
    counts = [buckets[b] for b in bounds]
    # Prometheus repairs non-monotonic buckets (scrape races) by carrying the maximum forward.
    for i in range(1, len(counts)):
        counts[i] = max(counts[i], counts[i - 1])
    total = counts[-1]
    if total <= 0 or len(bounds) < 2:
        return math.nan
    rank = q * total
    i = next(i for i, c in enumerate(counts) if c >= rank)
    if i == len(bounds) - 1:
        return bounds[-2]
    if i == 0 and bounds[0] <= 0:
        return bounds[0]
    lower = 0.0 if i == 0 else bounds[i - 1]
    below = 0.0 if i == 0 else counts[i - 1]
    in_bucket = counts[i] - below
    if in_bucket == 0:
        return bounds[i]
    return lower + (bounds[i] - lower) * (rank - below) / in_bucket


def quantiles_by(
    q: float, bucket_increases: Iterable[tuple[Labels, float, float]]
) -> dict[Labels, float]:
    """Group ``(labels, le, increase)`` rows by labels and take each group's quantile."""
    groups: dict[Labels, dict[float, float]] = {}
    for labels, le, value in bucket_increases:
        b = groups.setdefault(labels, {})
        b[le] = b.get(le, 0.0) + value
    return {k: histogram_quantile(q, b) for k, b in groups.items()}
