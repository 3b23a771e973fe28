"""The per-service and per-workload panels: request volume, success rate and latency
percentiles over time, from the same raw increases as the graph (Kiali's inbound metrics:
what the callee's sidecar saw, ``reporter="destination"``)."""

from __future__ import annotations

import math
from typing import Any, Literal

from tsunagi.telemetry.graph import is_error
from tsunagi.telemetry.series import histogram_quantile
from tsunagi.telemetry.views import MetricsViews

Kind = Literal["service", "workload"]
QUANTILES = (0.5, 0.9, 0.99)


def match_for(kind: Kind, namespace: str, name: str) -> dict[str, str]:
    """The label equalities that select a service's or a workload's inbound requests."""
    if kind == "service":
        return {
            "reporter": "destination",
            "destination_service_namespace": namespace,
            "destination_service_name": name,
        }
    return {
        "reporter": "destination",
        "destination_workload_namespace": namespace,
        "destination_workload": name,
    }


def _num(x: float) -> float | None:
    return None if math.isnan(x) or math.isinf(x) else round(x, 3)


async def panel(
    views: MetricsViews, kind: Kind, namespace: str, name: str, window: float, step: float
) -> dict[str, Any]:
    """Time series for one service or workload: per step, requests per second, the success
    rate (% of requests that were not errors; null without requests) and p50/p90/p99 (ms)."""
    match = match_for(kind, namespace, name)
    ends, rows = await views.requests_range(window, step, match)
    _, bucket_rows = await views.buckets_range(window, step, match)
    n = len(ends)
    total = [0.0] * n
    errors = [0.0] * n
    for labels, values in rows:
        bad = is_error(labels.get("response_code", ""), labels.get("response_flags", ""))
        for i, v in enumerate(values[:n]):
            total[i] += v
            errors[i] += v if bad else 0.0
    per_step: list[dict[float, float]] = [{} for _ in range(n)]
    for labels, values in bucket_rows:
        try:
            le = float(labels.get("le", ""))
        except ValueError:
            continue
        for i, v in enumerate(values[:n]):
            per_step[i][le] = per_step[i].get(le, 0.0) + v
    return {
        "kind": kind,
        "namespace": namespace,
        "name": name,
        "window": window,
        "step": step,
        "times": ends,
        "rps": [round(t / step, 3) for t in total],
        "success_pct": [
            round(100.0 * (t - e) / t, 2) if t > 0 else None
            for t, e in zip(total, errors, strict=True)
        ],
        **{
            f"p{round(q * 100)}_ms": [
                _num(histogram_quantile(q, b)) if b else None for b in per_step
            ]
            for q in QUANTILES
        },
    }
