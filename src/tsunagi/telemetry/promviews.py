""":class:`~tsunagi.telemetry.views.MetricsViews` answered by a Prometheus server
(``tsunagi up --prometheus URL``), with PromQL as Kiali writes it: ``sum by (...)
(increase(metric{...}[window]))`` through ``/api/v1/query`` and ``/api/v1/query_range``."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import aiohttp

from tsunagi.telemetry.schema import DURATION_BUCKET, REQUESTS
from tsunagi.telemetry.views import (
    BUCKET_GROUP,
    RANGE_BUCKET_GROUP,
    RANGE_REQUEST_GROUP,
    REQUEST_GROUP,
    RangeRows,
    Row,
)


class PrometheusError(Exception):
    """Prometheus could not be reached or refused a query."""


def _selector(match: Mapping[str, str]) -> str:
    def esc(v: str) -> str:
        return v.replace("\\", "\\\\").replace('"', '\\"')

    return "{" + ",".join(f'{k}="{esc(v)}"' for k, v in sorted(match.items())) + "}"


def _duration(seconds: float) -> str:
    return f"{max(1, round(seconds))}s"


def increase_query(
    metric: str, group: tuple[str, ...], window: float, match: Mapping[str, str]
) -> str:
    """``sum by (group) (increase(metric{match}[window]))``."""
    return f"sum by ({','.join(group)}) (increase({metric}{_selector(match)}[{_duration(window)}]))"


class PrometheusViews:
    """Queries a Prometheus server at ``url`` (e.g. ``http://127.0.0.1:9090``)."""

    def __init__(self, url: str, timeout: float = 10.0, clock: Any = None) -> None:
        import time

        self.url = url.rstrip("/")
        self.timeout = timeout
        self.clock = clock or time.time

    async def _get(self, path: str, params: dict[str, str]) -> dict[str, Any]:
        try:
            async with (
                aiohttp.ClientSession(
                    timeout=aiohttp.ClientTimeout(total=self.timeout), trust_env=False
                ) as session,
                session.get(self.url + path, params=params) as response,
            ):
                body = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as e:
            raise PrometheusError(f"Prometheus at {self.url} did not answer: {e}") from None
        if not isinstance(body, dict) or body.get("status") != "success":
            error = body.get("error") if isinstance(body, dict) else body
            raise PrometheusError(f"Prometheus at {self.url} refused {params}: {error}")
        data = body["data"]
        assert isinstance(data, dict)
        return data

    async def _instant(self, query: str, group: tuple[str, ...]) -> list[Row]:
        data = await self._get("/api/v1/query", {"query": query, "time": str(self.clock())})
        out: list[Row] = []
        for item in data.get("result", []):
            value = float(item["value"][1])
            if not math.isnan(value):
                out.append(({g: item["metric"].get(g, "") for g in group}, value))
        return out

    async def _range(
        self, query: str, group: tuple[str, ...], window: float, step: float
    ) -> RangeRows:
        now = self.clock()
        steps = max(1, min(int(window // step), 1000))
        ends = [now - step * i for i in range(steps - 1, -1, -1)]
        data = await self._get(
            "/api/v1/query_range",
            {"query": query, "start": str(ends[0]), "end": str(now), "step": str(step)},
        )
        rows = []
        for item in data.get("result", []):
            values = [0.0] * steps
            for t, v in item["values"]:
                i = round((float(t) - ends[0]) / step)
                if 0 <= i < steps and not math.isnan(float(v)):
                    values[i] = float(v)
            rows.append(({g: item["metric"].get(g, "") for g in group}, values))
        return ends, rows

    async def requests(self, window: float) -> list[Row]:
        return await self._instant(
            increase_query(REQUESTS, REQUEST_GROUP, window, {}), REQUEST_GROUP
        )

    async def buckets(self, window: float) -> list[Row]:
        return await self._instant(
            increase_query(DURATION_BUCKET, BUCKET_GROUP, window, {}), BUCKET_GROUP
        )

    async def requests_range(
        self, window: float, step: float, match: Mapping[str, str]
    ) -> RangeRows:
        q = increase_query(REQUESTS, RANGE_REQUEST_GROUP, step, match)
        return await self._range(q, RANGE_REQUEST_GROUP, window, step)

    async def buckets_range(
        self, window: float, step: float, match: Mapping[str, str]
    ) -> RangeRows:
        q = increase_query(DURATION_BUCKET, RANGE_BUCKET_GROUP, step, match)
        return await self._range(q, RANGE_BUCKET_GROUP, window, step)
