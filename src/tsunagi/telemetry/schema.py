"""The Istio metric families and labels the dashboard keeps (names and labels are Istio's;
see docs/design/metrics.md). Everything else a sidecar reports is dropped at scrape time."""

from __future__ import annotations

REQUESTS = "istio_requests_total"
DURATION_BUCKET = "istio_request_duration_milliseconds_bucket"

EDGE_LABELS: tuple[str, ...] = (
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "source_app",
    "source_version",
    "destination_workload",
    "destination_workload_namespace",
    "destination_app",
    "destination_version",
    "destination_service",
    "destination_service_name",
    "destination_service_namespace",
)
"""Who called whom: enough to draw Kiali's versioned-app graph."""

KEPT: dict[str, tuple[str, ...]] = {
    REQUESTS: (*EDGE_LABELS, "response_code", "response_flags"),
    DURATION_BUCKET: (*EDGE_LABELS, "le"),
}
"""Per kept family, the labels stored, in this order (a series' key is their values)."""

UNKNOWN = "unknown"
"""Istio's value for a peer label it could not learn."""


def index(metric: str, label: str) -> int:
    """Where ``label`` sits in ``metric``'s stored label values."""
    return KEPT[metric].index(label)
