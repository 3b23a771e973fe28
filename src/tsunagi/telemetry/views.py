"""Where the dashboard's numbers come from: one interface, two implementations (the built-in
:class:`~tsunagi.telemetry.series.SeriesStore` here, a Prometheus server in
:mod:`tsunagi.telemetry.promviews`). Both answer raw sums of increases; the graph and the
panels are computed from them by the same pure code (:mod:`.graph`, :mod:`.panels`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

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
    """:class:`MetricsViews` over the built-in store."""

    def __init__(self, store: SeriesStore) -> None:
        self.store = store

    async def requests(self, window: float) -> list[Row]:
        got = self.store.increase(REQUESTS, window, _grouper(REQUESTS, REQUEST_GROUP, {}))
        return [(dict(zip(REQUEST_GROUP, k, strict=True)), v) for k, v in got.items()]

    async def buckets(self, window: float) -> list[Row]:
        got = self.store.increase(
            DURATION_BUCKET, window, _grouper(DURATION_BUCKET, BUCKET_GROUP, {})
        )
        return [(dict(zip(BUCKET_GROUP, k, strict=True)), v) for k, v in got.items()]

    async def requests_range(
        self, window: float, step: float, match: Mapping[str, str]
    ) -> RangeRows:
        ends, got = self.store.increase_range(
            REQUESTS, window, step, _grouper(REQUESTS, RANGE_REQUEST_GROUP, match)
        )
        return ends, [(dict(zip(RANGE_REQUEST_GROUP, k, strict=True)), v) for k, v in got.items()]

    async def buckets_range(
        self, window: float, step: float, match: Mapping[str, str]
    ) -> RangeRows:
        ends, got = self.store.increase_range(
            DURATION_BUCKET, window, step, _grouper(DURATION_BUCKET, RANGE_BUCKET_GROUP, match)
        )
        return ends, [(dict(zip(RANGE_BUCKET_GROUP, k, strict=True)), v) for k, v in got.items()]
