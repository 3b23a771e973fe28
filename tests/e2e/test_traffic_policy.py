"""DestinationRule trafficPolicy enforced by real Envoy sidecars (Istio's circuit-breaking
task): what a client actually receives."""

from __future__ import annotations

import pytest

from .mesh import Mesh, Workload, concurrent_gets, wait_until
from .rules import destination_rule

pytestmark = pytest.mark.e2e

CIRCUIT_BREAKER = destination_rule(
    """
  trafficPolicy:
    connectionPool:
      tcp: {maxConnections: 1}
      http: {http1MaxPendingRequests: 1, maxRequestsPerConnection: 1}
"""
)

THREADS = 20
REQUESTS = 10
SLOW = "/?sleep=0.2"  # keeps each request in flight, so concurrent ones pile up


def load(client: Workload) -> list[tuple[int, str]]:
    """``THREADS`` callers of reviews at once, ``REQUESTS`` each: (status, x-envoy-overloaded)."""
    return concurrent_gets(client, "reviews:9080", SLOW, THREADS, REQUESTS)


def limit(client: Workload, name: str) -> str:
    """A circuit-breaker threshold of the reviews cluster, as the client's Envoy runs it."""
    key = f"outbound|9080||reviews.default.svc.cluster.local::default_priority::{name}::"
    lines = client.envoy_admin("/clusters").splitlines()
    return next((line.removeprefix(key) for line in lines if line.startswith(key)), "")


def test_connection_pool_limits_overflow_as_503_and_nothing_fails_without_them(
    mesh: Mesh,
) -> None:
    mesh.run("reviews", "v1")
    client = mesh.client()

    # No DestinationRule: Istio's limits are unlimited, every request gets through.
    results = load(client)
    assert len(results) == THREADS * REQUESTS
    assert {status for status, _ in results} == {200}, results
    assert limit(client, "max_connections") == "4294967295"

    applied = mesh.apply(CIRCUIT_BREAKER, "--wait")
    assert applied.returncode == 0, applied.stderr
    assert "in sync after" in applied.stdout
    assert "not applied" not in applied.stderr  # enforced now: apply does not warn

    results = load(client)
    assert len(results) == THREADS * REQUESTS
    refused = [r for r in results if r[0] == 503]
    # One connection and one pending request: most of 20 concurrent requests overflow, and
    # Envoy says so in the header Istio's task shows; the rest still get through.
    assert refused, results
    assert all(overloaded == "true" for _, overloaded in refused), refused
    assert any(status == 200 for status, _ in results), results
    assert {status for status, _ in results} <= {200, 503}, results
    assert limit(client, "max_connections") == limit(client, "max_pending_requests") == "1"


OUTLIER_DETECTION = destination_rule(
    """
  trafficPolicy:
    outlierDetection:
      consecutive5xxErrors: 1
      interval: 1s
      baseEjectionTime: 3m
      maxEjectionPercent: 100
"""
)
FAILING_V2 = "/?fail=v2"  # reviews v2 answers 503, v1 answers 200


def ejected(client: Workload) -> bool:
    """Whether the client's Envoy has ejected a reviews endpoint."""
    prefix = "outbound|9080||reviews.default.svc.cluster.local::"
    return any(
        line.startswith(prefix) and "health_flags::/failed_outlier_check" in line
        for line in client.envoy_admin("/clusters").splitlines()
    )


def test_outlier_detection_ejects_the_failing_instance(mesh: Mesh) -> None:
    mesh.run("reviews", "v1")
    mesh.run("reviews", "v2")
    client = mesh.client()

    # Without outlier detection both instances keep getting requests, v2's fail.
    answers = [client.get("reviews:9080", FAILING_V2) for _ in range(40)]
    assert {(s, b["version"]) for s, b in answers if isinstance(b, dict)} == {
        (200, "v1"),
        (503, "v2"),
    }, answers
    assert not ejected(client)

    applied = mesh.apply(OUTLIER_DETECTION, "--wait")
    assert applied.returncode == 0, applied.stderr
    assert "not applied" not in applied.stderr

    def one_more_then_ejected() -> bool:
        client.get("reviews:9080", FAILING_V2)
        return ejected(client)

    wait_until(one_more_then_ejected, what="reviews v2 to be ejected")
    # Ejected for 3 minutes: every answer now comes from the healthy instance.
    answers = [client.get("reviews:9080", FAILING_V2) for _ in range(50)]
    assert all(
        status == 200 and isinstance(body, dict) and body["version"] == "v1"
        for status, body in answers
    ), answers
