"""Locality load balancing with real sidecars (Istio's locality failover and weighted
distribution tasks): four reviews instances, one per locality, and a client in
region1/zone1. Which instance answered is its version, named after its zone."""

from __future__ import annotations

from collections import Counter

import pytest

from .mesh import Mesh, Workload, wait_until
from .rules import destination_rule

pytestmark = pytest.mark.e2e

LOCALITIES = {
    "z1": "region1/zone1",
    "z2": "region1/zone2",
    "z3": "region2/zone3",
    "z4": "region3/zone4",
}

FAILOVER = destination_rule(
    """
  trafficPolicy:
    outlierDetection:
      consecutive5xxErrors: 1
      interval: 1s
      baseEjectionTime: 3m
      maxEjectionPercent: 100
    loadBalancer:
      localityLbSetting:
        failover:
        - {from: region1, to: region2}
"""
)

DISTRIBUTE = destination_rule(
    """
  trafficPolicy:
    loadBalancer:
      localityLbSetting:
        distribute:
        - from: region1/zone1/*
          to:
            "region1/zone1": 25
            "region2/*": 75
"""
)


def start(mesh: Mesh) -> Workload:
    """One reviews instance per locality, and the client (in region1/zone1)."""
    for zone, locality in LOCALITIES.items():
        mesh.run("reviews", zone, 9080, "echo.py", True, "--locality", locality)
    return mesh.run("client", "v1", 80, "idle.py", False, "--locality", LOCALITIES["z1"])


def answers(client: Workload, path: str, count: int) -> list[tuple[int, str]]:
    """``(status, zone that answered)`` for ``count`` requests through the client's sidecar."""
    out = []
    for _ in range(count):
        status, body = client.get("reviews:9080", path)
        out.append((status, body["version"] if isinstance(body, dict) else ""))
    return out


def apply(mesh: Mesh, rule: str) -> None:
    applied = mesh.apply(rule, "--wait")
    assert applied.returncode == 0, applied.stderr
    assert "not applied" not in applied.stderr and "no effect" not in applied.stderr


def test_traffic_stays_in_the_zone_then_fails_over_to_the_named_region(mesh: Mesh) -> None:
    client = start(mesh)
    # Without outlier detection there are no priorities: every locality gets traffic.
    wait_until(
        lambda: {zone for _, zone in answers(client, "/", 20)} == set(LOCALITIES),
        what="requests to reach every locality",
    )

    apply(mesh, FAILOVER)
    # (a) Everything healthy: the client's own zone answers every request.
    assert answers(client, "/", 40) == [(200, "z1")] * 40

    # (b) Region1 fails (both zones answer 503): each failing instance is ejected after
    # one error, and traffic moves down the priorities: zone2, then region2 — never
    # region3, which the failover rule puts last.
    failing = "/?fail=z1&fail=z2"
    seen: list[tuple[int, str]] = []

    def failed_over() -> bool:
        seen.extend(answers(client, failing, 5))
        return seen[-5:] == [(200, "z3")] * 5

    wait_until(failed_over, what="traffic to fail over to region2")
    assert "z4" not in {zone for _, zone in seen}, seen
    assert {status for status, zone in seen if zone in ("z1", "z2")} == {503}, seen
    assert answers(client, failing, 40) == [(200, "z3")] * 40


def test_distribute_splits_traffic_between_localities_by_weight(mesh: Mesh) -> None:
    client = start(mesh)
    apply(mesh, DISTRIBUTE)
    counts = Counter(answers(client, "/", 200))
    # 25% to the client's zone, 75% to region2; region1/zone2 and region3 get nothing from
    # this client. Envoy's weighted scheduling is close to exact; the bounds are generous.
    assert set(counts) <= {(200, "z1"), (200, "z3")}, counts
    assert 20 <= counts[200, "z1"] <= 90, counts
    assert 110 <= counts[200, "z3"] <= 180, counts
