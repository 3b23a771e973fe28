"""The service graph, drawn as Kiali draws its versioned-app graph from Istio's metrics.

Nodes: workloads (``app`` + ``version`` in a namespace; the workload name when ``app`` is
unknown; ``unknown`` for callers outside the mesh) and services. Edges: workload → service
for every call, service → workload for where it went. Each edge has its request rate
(req/s over the window), error percentage and p99 latency (ms).

Which reporter: like Kiali, telemetry reported by the caller's sidecar (``reporter="source"``)
draws the edges; the callee's (``reporter="destination"``) is used only for callers that
report nothing themselves: outside the mesh (``source_workload="unknown"``) or without
metrics. Counting both would count every in-mesh request twice.

Health, Kiali's defaults (kiali.io/docs/configuration/health, "Default Configuration"): for
HTTP, 5xx are errors with degraded above 0 % and failure at 10 % or more; 4xx degrade at 10 %
and fail at 20 %. Like Kiali, a request that Envoy answered itself (``response_flags`` other
than ``-``, e.g. ``UF``, ``UO``, ``NR``, or response code 0) counts as an error too.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from tsunagi.telemetry.schema import UNKNOWN
from tsunagi.telemetry.series import histogram_quantile
from tsunagi.telemetry.views import MetricsViews, Row

HEALTHY, DEGRADED, FAILURE, IDLE = "healthy", "degraded", "failure", "idle"

# (code class, degraded at >=, failure at >=), percentages; 5xx "degraded: 0" means any error.
TOLERANCES = (("5xx", 0.0, 10.0), ("4xx", 10.0, 20.0))


def is_error(code: str, flags: str) -> bool:
    """5xx, no response at all (code 0), or a response Envoy made itself (flags set)."""
    return code.startswith("5") or code in ("0", "") or flags not in ("-", "")


def health(total: float, server_errors: float, client_errors: float) -> str:
    """Kiali's default traffic health for an edge or node."""
    if total <= 0:
        return IDLE
    status = HEALTHY
    for cls, degraded, failure in TOLERANCES:
        pct = 100.0 * (server_errors if cls == "5xx" else client_errors) / total
        if pct >= failure:
            return FAILURE
        if pct > degraded or (degraded > 0 and pct >= degraded):
            status = DEGRADED
    return status


@dataclass
class _Traffic:
    total: float = 0.0
    errors: float = 0.0
    client_errors: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)

    def json(self, window: float) -> dict[str, Any]:
        p99 = histogram_quantile(0.99, self.buckets) if self.buckets else math.nan
        return {
            "rate": round(self.total / window, 3),
            "requests": round(self.total, 3),
            "error_pct": round(100.0 * self.errors / self.total, 2) if self.total else 0.0,
            "p99_ms": None if math.isnan(p99) else round(p99, 2),
            "health": health(self.total, self.errors, self.client_errors),
        }


def _workload_node(labels: dict[str, str], side: str) -> tuple[str, dict[str, Any]]:
    ns = labels.get(f"{side}_workload_namespace") or UNKNOWN
    workload = labels.get(f"{side}_workload") or UNKNOWN
    app = labels.get(f"{side}_app") or UNKNOWN
    version = labels.get(f"{side}_version") or UNKNOWN
    if workload == UNKNOWN and app == UNKNOWN:
        return "unknown", {"id": "unknown", "type": "unknown", "label": "unknown"}
    if app == UNKNOWN:
        node_id = f"workload:{ns}:{workload}"
        return node_id, {
            "id": node_id,
            "type": "workload",
            "namespace": ns,
            "workload": workload,
            "label": workload,
        }
    node_id = f"app:{ns}:{app}:{version}"
    label = app if version == UNKNOWN else f"{app} {version}"
    return node_id, {
        "id": node_id,
        "type": "app",
        "namespace": ns,
        "app": app,
        "version": version,
        "workload": workload,
        "label": label,
    }


def _service_node(labels: dict[str, str]) -> tuple[str, dict[str, Any]]:
    host = labels.get("destination_service") or UNKNOWN
    name = labels.get("destination_service_name") or host.split(".")[0]
    ns = labels.get("destination_service_namespace") or UNKNOWN
    node_id = f"service:{ns}:{name}"
    return node_id, {
        "id": node_id,
        "type": "service",
        "namespace": ns,
        "service": name,
        "host": host,
        "label": name,
    }


def _drawn(rows: Iterable[Row]) -> list[Row]:
    """Rows of the reporter Kiali would use (see the module's docstring)."""
    rows = list(rows)
    reporting = {
        (r.get("source_workload_namespace"), r.get("source_workload"))
        for r, _ in rows
        if r.get("reporter") == "source"
    }
    return [
        (r, v)
        for r, v in rows
        if r.get("reporter") == "source"
        or (
            r.get("reporter") == "destination"
            and (r.get("source_workload_namespace"), r.get("source_workload")) not in reporting
        )
    ]


def build_graph(requests: Iterable[Row], buckets: Iterable[Row], window: float) -> dict[str, Any]:
    """The graph as JSON: ``{"window", "nodes": [...], "edges": [...]}``, sorted by id.

    ``requests`` and ``buckets`` are the increases of :data:`~.views.REQUEST_GROUP` and
    :data:`~.views.BUCKET_GROUP` over ``window`` seconds."""
    nodes: dict[str, dict[str, Any]] = {}
    edges: dict[tuple[str, str], _Traffic] = {}
    node_traffic: dict[str, _Traffic] = {}

    def edges_of(labels: dict[str, str]) -> list[tuple[str, str]]:
        src_id, src = _workload_node(labels, "source")
        svc_id, svc = _service_node(labels)
        dst_id, dst = _workload_node(labels, "destination")
        nodes.setdefault(src_id, src)
        nodes.setdefault(svc_id, svc)
        out = [(src_id, svc_id)]
        if dst_id != "unknown":  # e.g. no endpoint (503 NR): the call ends at the service
            nodes.setdefault(dst_id, dst)
            out.append((svc_id, dst_id))
        return out

    for labels, value in _drawn(requests):
        if value <= 0:
            continue
        code, flags = labels.get("response_code", ""), labels.get("response_flags", "")
        error = is_error(code, flags)
        client_error = code.startswith("4") and not error
        keys = edges_of(labels)
        # Each edge, and each node it enters (the service, the workload), gets the request.
        for t in [edges.setdefault(k, _Traffic()) for k in keys] + [
            node_traffic.setdefault(k[1], _Traffic()) for k in keys
        ]:
            t.total += value
            t.errors += value if error else 0.0
            t.client_errors += value if client_error else 0.0

    for labels, value in _drawn(buckets):
        try:
            le = float(labels.get("le", ""))
        except ValueError:
            continue
        for key in edges_of(labels):
            if key in edges:
                b = edges[key].buckets
                b[le] = b.get(le, 0.0) + value

    for node_id, node in nodes.items():
        seen = node_traffic.get(node_id)
        node["health"] = seen.json(window)["health"] if seen else IDLE
    return {
        "window": window,
        "nodes": [nodes[k] for k in sorted(nodes)],
        "edges": [
            {"id": f"{s}->{d}", "source": s, "target": d, **edges[(s, d)].json(window)}
            for s, d in sorted(edges)
        ],
    }


async def graph_view(views: MetricsViews, window: float) -> dict[str, Any]:
    """The graph of the last ``window`` seconds, from ``views`` (the store or Prometheus).
    Built on a worker thread: a large mesh's rows take tens of ms, too long for the loop
    that also serves xDS."""
    requests, buckets = await views.requests(window), await views.buckets(window)
    return await asyncio.to_thread(build_graph, requests, buckets, window)
