"""The dashboard's time-series store, counter increments and histogram quantiles."""

from __future__ import annotations

import math

import pytest

from tsunagi.telemetry.ingest import CounterDeltas
from tsunagi.telemetry.series import SeriesStore, histogram_quantile, quantiles_by

M = "istio_requests_total"


def every(labels: tuple[str, ...]) -> tuple[str, ...]:
    return labels


def test_increase_and_rate_across_a_counter_reset() -> None:
    store = SeriesStore(capacity=100)
    deltas = CounterDeltas(store)
    # One sidecar's cumulative counter: 10, 25, 40, then a restart (7), then 12.
    for t, value in enumerate([10.0, 25.0, 40.0, 7.0, 12.0]):
        store.tick(1000.0 + 5 * t)
        deltas.ingest("default/a", [(M, ("x",), value)])
    # The first scrape is the baseline; then +15, +15, +7 (reset: counts from 0), +5.
    assert store.increase(M, 60, every) == {("x",): 42.0}
    assert store.rate(M, 60, every) == {("x",): 0.7}
    # Only the last two ticks (t=1015, 1020) are within 10 s of now: +7 and +5.
    assert store.increase(M, 10, every) == {("x",): 12.0}


def test_replicas_share_a_series_but_reset_independently() -> None:
    store = SeriesStore(capacity=10)
    deltas = CounterDeltas(store)
    store.tick(0.0)
    deltas.ingest("a-1", [(M, ("x",), 100.0)])
    deltas.ingest("a-2", [(M, ("x",), 5.0)])
    store.tick(5.0)
    deltas.ingest("a-1", [(M, ("x",), 110.0)])
    deltas.ingest("a-2", [(M, ("x",), 2.0)])  # a-2 restarted
    assert store.increase(M, 60, every) == {("x",): 12.0}


def test_a_label_set_new_to_a_known_target_counts_from_zero() -> None:
    store = SeriesStore(capacity=10)
    deltas = CounterDeltas(store)
    store.tick(0.0)
    deltas.ingest("a", [(M, ("200",), 3.0)])
    store.tick(5.0)
    deltas.ingest("a", [(M, ("200",), 3.0), (M, ("503",), 4.0)])
    assert store.increase(M, 60, every) == {("200",): 0.0, ("503",): 4.0}


def test_grouping_and_filtering() -> None:
    store = SeriesStore(capacity=10)
    store.tick(0.0)
    store.add(M, ("a", "200"), 3)
    store.add(M, ("a", "503"), 1)
    store.add(M, ("b", "200"), 5)

    def by_first(labels: tuple[str, ...]) -> tuple[str, ...] | None:
        return (labels[0],) if labels[1] != "503" else None

    assert store.increase(M, 60, by_first) == {("a",): 3.0, ("b",): 5.0}


def test_the_ring_forgets_what_is_older_than_its_capacity() -> None:
    store = SeriesStore(capacity=4)
    for t in range(10):
        store.tick(float(t))
        store.add(M, ("x",), 1.0)
    # Only 4 ticks are kept however long the window asked for.
    assert store.increase(M, 1e9, every) == {("x",): 4.0}
    # A series silent for longer than the ring remembers has no increase.
    for t in range(10, 15):
        store.tick(float(t))
    store.add(M, ("y",), 2.0)
    assert store.increase(M, 1e9, every) == {("y",): 2.0}


def test_the_store_holds_at_most_max_series() -> None:
    store = SeriesStore(capacity=8, max_series=3)
    store.tick(0.0)
    for i in range(5):
        store.add(M, (str(i),), 1.0)
    assert store.series_count == 3
    assert store.dropped == 2
    assert set(store.increase(M, 60, every)) == {("0",), ("1",), ("2",)}
    # Existing series keep counting when full.
    store.add(M, ("0",), 1.0)
    assert store.increase(M, 60, every)[("0",)] == 2.0


def test_increase_range_puts_each_tick_in_its_step() -> None:
    store = SeriesStore(capacity=100)
    for t in range(12):  # one tick per second, +t each
        store.tick(100.0 + t)
        store.add(M, ("x",), float(t))
    ends, rows = store.increase_range(M, 6, 2, every)
    assert ends == [107.0, 109.0, 111.0]
    # Steps (105,107], (107,109], (109,111]: ticks 6+7, 8+9, 10+11.
    assert rows == {("x",): [13.0, 17.0, 21.0]}


def test_histogram_quantile_interpolates_like_prometheus() -> None:
    buckets = {10.0: 20.0, 25.0: 60.0, 100.0: 90.0, math.inf: 100.0}
    # rank 50 in (10, 25]: 10 + 15 * (50 - 20) / 40
    assert histogram_quantile(0.5, buckets) == pytest.approx(21.25)
    # rank 10 in the first bucket, lower bound 0: 10 * 10 / 20
    assert histogram_quantile(0.1, buckets) == pytest.approx(5.0)
    # rank 85 in (25, 100]: 25 + 75 * (85 - 60) / 30
    assert histogram_quantile(0.85, buckets) == pytest.approx(87.5)
    # rank 99 falls in +Inf: the highest finite bound
    assert histogram_quantile(0.99, buckets) == 100.0
    assert histogram_quantile(1.5, buckets) == math.inf
    assert histogram_quantile(-1, buckets) == -math.inf
    assert math.isnan(histogram_quantile(0.5, {10.0: 0.0, math.inf: 0.0}))
    assert math.isnan(histogram_quantile(0.5, {10.0: 5.0}))  # no +Inf bucket


def test_quantiles_by_sums_buckets_of_a_group() -> None:
    rows = [
        (("a",), 10.0, 5.0),
        (("a",), math.inf, 10.0),
        (("a",), 10.0, 5.0),
        (("a",), math.inf, 10.0),
    ]
    # 10 of 20 in (0, 10]; p50 = rank 10 -> 10.0
    assert quantiles_by(0.5, rows) == {("a",): pytest.approx(10.0)}
