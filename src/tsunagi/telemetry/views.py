"""Where the dashboard's numbers come from: one interface, two implementations (the built-in
:class:`~tsunagi.telemetry.series.SeriesStore` here, a Prometheus server in
:mod:`tsunagi.telemetry.promviews`). Both answer raw sums of increases; the graph and the
panels are computed from them by the same pure code (:mod:`.graph`, :mod:`.panels`)."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from typing import Any, Protocol

from tsunagi.telemetry.schema import DURATION_BUCKET, EDGE_LABELS, KEPT, REQUESTS
from tsunagi.telemetry.series import Labels, SeriesStore

Row = tuple[dict[str, str], float]
"""A group's labels and its increase over the window."""
RangeRows = tuple[list[float], list[tuple[dict[str, str], list[float]]]]
"""Step end times, and per group its labels and one increase per step."""

REQUEST_GROUP = (*EDGE_LABELS, "response_code", "response_flags")
BUCKET_GROUP = (*EDGE_LABELS, "le")
RANGE_REQUEST_GROUP = ("response_code", "response_flags")
RANGE_BUCKET_GROUP = ("le",)


class MetricsViews(Protocol):
    """The queries behind the graph and the panels; ``match`` is label equality."""

    async def requests(self, window: float) -> list[Row]:
        """``sum by (REQUEST_GROUP) (increase(istio_requests_total[window]))``."""
        ...

    async def buckets(self, window: float) -> list[Row]:
        """``sum by (BUCKET_GROUP) (increase(istio_request_duration_milliseconds_bucket
        [window]))``."""
        ...

    async def requests_range(
        self, window: float, step: float, match: Mapping[str, str]
    ) -> RangeRows:
        """Per ``step``, ``sum by (response_code, response_flags) (increase(...))``."""
        ...

    async def buckets_range(
        self, window: float, step: float, match: Mapping[str, str]
    ) -> RangeRows:
        """Per ``step``, ``sum by (le) (increase(..._bucket{match}))``."""
        ...


def _grouper(metric: str, group: tuple[str, ...], match: Mapping[str, str]):  # type: ignore[no-untyped-def]
    names = KEPT[metric]
    take = [names.index(g) for g in group]
    checks = [(names.index(k), v) for k, v in match.items()]

    def key(labels: Labels) -> Labels | None:
        for i, v in checks:
            if labels[i] != v:
                return None
        return tuple(labels[i] for i in take)

    return key


class StoreViews:
    """:class:`MetricsViews` over the built-in store. Queries run on the store's thread
    (never on the event loop), and an answer is reused until the store changes, so the
    refreshes of several dashboards between two scrapes cost one computation."""

    CACHED = 256
    """Most answers remembered (distinct windows, steps and matches)."""

    def __init__(self, store: SeriesStore) -> None:
        self.store = store
        self._answers: dict[Hashable, tuple[int, Any]] = {}

    async def _answer(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        hit = self._answers.get(key)
        if hit is not None and hit[0] == self.store.version:
            return hit[1]

        def versioned() -> tuple[int, Any]:
            # Read on the store's thread: the version is the one the answer was computed at.
            return self.store.version, compute()

        version, answer = await self.store.call(versioned)
        if len(self._answers) >= self.CACHED:
            self._answers.clear()
        self._answers[key] = (version, answer)
        return answer

    async def requests(self, window: float) -> list[Row]:
        def compute() -> list[Row]:
            got = self.store.increase(REQUESTS, window, _grouper(REQUESTS, REQUEST_GROUP, {}))
            return [(dict(zip(REQUEST_GROUP, k, strict=True)), v) for k, v in got.items()]

        rows: list[Row] = await self._answer(("requests", window), compute)
        return rows

    async def buckets(self, window: float) -> list[Row]:
        def compute() -> list[Row]:
            got = self.store.increase(
                DURATION_BUCKET, window, _grouper(DURATION_BUCKET, BUCKET_GROUP, {})
            )
            return [(dict(zip(BUCKET_GROUP, k, strict=True)), v) for k, v in got.items()]

        rows: list[Row] = await self._answer(("buckets", window), compute)
        return rows

    async def requests_range(
        self, window: float, step: float, match: Mapping[str, str]
    ) -> RangeRows:
        grouper = _grouper(REQUESTS, RANGE_REQUEST_GROUP, match)

        def compute() -> RangeRows:
            ends, got = self.store.increase_range(REQUESTS, window, step, grouper)
            return ends, [
                (dict(zip(RANGE_REQUEST_GROUP, k, strict=True)), v) for k, v in got.items()
            ]

        key = ("requests_range", window, step, tuple(sorted(match.items())))
        rows: RangeRows = await self._answer(key, compute)
        return rows

    async def buckets_range(
        self, window: float, step: float, match: Mapping[str, str]
    ) -> RangeRows:
        grouper = _grouper(DURATION_BUCKET, RANGE_BUCKET_GROUP, match)

        def compute() -> RangeRows:
            ends, got = self.store.increase_range(DURATION_BUCKET, window, step, grouper)
            return ends, [
                (dict(zip(RANGE_BUCKET_GROUP, k, strict=True)), v) for k, v in got.items()
            ]

        key = ("buckets_range", window, step, tuple(sorted(match.items())))
        rows: RangeRows = await self._answer(key, compute)
        return rows
