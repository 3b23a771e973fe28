"""The etcd leader killed with -9 in the middle of a series of applies, end to end: one
`tsunagi up --store etcd://m0,m1,m2` over a real three-member cluster, real sidecars under
steady traffic. An apply that fails says etcd is unavailable and what to do (no traceback);
applies go through again once a new leader is elected, and again after the cluster lost its
quorum for twice the workloads' TTL (one of the two members left hung); every apply that was
acknowledged is in `tsunagi get` and in etcd afterwards; not one request through the sidecars
fails (no endpoint is lost with the quorum), and a rule applied after all that still reaches
them."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.etcd_fixtures import Cluster, etcd_cluster, leader, read_prefix
from tsunagi.registry import KIND

from .mesh import Mesh, Traffic, started_mesh, wait_until
from .rules import SUBSETS, all_to

pytestmark = pytest.mark.e2e

PREFIX = "/faults"
BEFORE = 5
"""Applies acknowledged before the leader is killed."""
AFTER = 8
"""Applies acknowledged after the kill that show applies resumed."""
SERIES_LIMIT = 120.0
"""Seconds the whole series may take at most (a bound, not a measure)."""
TTL = 5.0
"""The workloads' ``--instance-ttl``; etcd is left without quorum for twice as long."""


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    yield from etcd_cluster(tmp_path / "etcd", 3)


@pytest.fixture
def mesh(cluster: Cluster, tmp_path: Path) -> Iterator[Mesh]:
    # A TTL shorter than the quorum loss below: the workloads' endpoints must outlive it
    # (etcd gives every lease a fresh TTL when it elects a leader again).
    yield from started_mesh(tmp_path, "--store", cluster.url + PREFIX, instance_ttl=TTL)


def counter(i: int) -> str:
    """The ``i``-th change of the series: a DestinationRule of its own, for a host nobody
    calls (harmless to traffic; each one still a commit and a push)."""
    return f"""apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: counter-{i}}}
spec:
  host: counter-{i}.example.com
  trafficPolicy: {{connectionPool: {{tcp: {{maxConnections: {i}}}}}}}
"""


def stored_counters(endpoints: list[tuple[str, int]]) -> dict[int, int]:
    """``i`` → the maxConnections stored for ``counter-i``, read straight from etcd."""
    out = {}
    for kv in read_prefix(endpoints, f"{PREFIX}/DestinationRule/default/"):
        doc = json.loads(kv.value)
        name = doc["metadata"]["name"]
        if name.startswith("counter-"):  # not reviews' own rule
            i = int(name.removeprefix("counter-"))
            out[i] = doc["spec"]["trafficPolicy"]["connectionPool"]["tcp"]["maxConnections"]
    return out


def instance_leases(endpoints: list[tuple[str, int]]) -> dict[bytes, int]:
    """Each registered instance's key → the etcd lease it is stored under."""
    return {kv.key: kv.lease for kv in read_prefix(endpoints, f"{PREFIX}/{KIND}/")}


def apply(mesh: Mesh) -> subprocess.Popen[str]:
    """`tsunagi apply -f -`, started: its YAML goes to its stdin."""
    return subprocess.Popen(
        [sys.executable, "-m", "tsunagi.cli.main", "apply", "-f", "-"],
        env=mesh.env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@dataclass
class Series:
    """The numbered applies, each through the CLI, and what became of each."""

    mesh: Mesh
    sent: int = 0
    acknowledged: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)

    def next(self, during: Callable[[], None] | None = None) -> bool:
        """Apply the next change (calling ``during`` while it is under way); whether it was
        acknowledged. A failure must be a clear error that says what to do."""
        self.sent += 1
        i = self.sent
        proc = apply(self.mesh)
        if during is not None:
            during()
        out, err = proc.communicate(counter(i), timeout=120)
        assert "Traceback" not in err, err
        if proc.returncode == 0:
            assert f"destinationrule/counter-{i} created" in out, out + err
            self.acknowledged.append(i)
            return True
        self.failed[i] = err
        assert proc.returncode in (1, 3), err
        if proc.returncode == 1:  # the store's error, with what to do
            assert "etcd" in err and ("try again" in err or "tsunagi get" in err), err
        else:  # the control plane did not answer within the CLI's timeout
            assert "may have been carried out" in err and "tsunagi get" in err, err
        return False

    def acknowledged_after(self, n: int) -> int:
        return sum(i > n for i in self.acknowledged)

    def problem(self) -> str:
        return (
            f"{len(self.acknowledged)} of {self.sent} acknowledged; last failures: "
            f"{list(self.failed.items())[-3:]}\n{self.mesh.log()}"
        )


def test_applies_survive_the_etcd_leader_killed_mid_series(cluster: Cluster, mesh: Mesh) -> None:
    mesh.run("reviews", "v1")
    mesh.run("reviews", "v2")
    client = mesh.client()
    first = mesh.apply(SUBSETS + "---" + all_to("v1"), "--wait")
    assert first.returncode == 0, first.stderr
    doomed = asyncio.run(leader(cluster))
    series = Series(mesh)
    with Traffic(client.outbound_port, "reviews", limit=SERIES_LIMIT + 60) as traffic:
        wait_until(lambda: len(traffic.results) > 50, what="traffic before the series")
        deadline = time.monotonic() + SERIES_LIMIT
        while len(series.acknowledged) < BEFORE:
            assert series.next() or time.monotonic() < deadline, series.problem()

        # Killed while an apply is on its way (the CLI is starting, then sending): the
        # leader dies under the series, not between two calm applies.
        killer = threading.Timer(0.3, doomed.kill)
        series.next(killer.start)
        killer.join()
        killed_at = series.sent
        while series.acknowledged_after(killed_at) < AFTER:
            series.next()
            assert time.monotonic() < deadline, "applies did not resume: " + series.problem()

        # One of the two members left stops answering (SIGSTOP): no quorum, so applies fail
        # (saying so) until it is back, and then go through again. The follower is hung, not
        # the leader: a leader paused for longer than the TTL revokes, once resumed, every
        # lease its own clock says ran out (etcd's doing; the README says so).
        survivor = asyncio.run(leader(cluster))
        hung = next(m for m in cluster.members if m not in (doomed, survivor))
        survivors = [("127.0.0.1", m.client_port) for m in cluster.members if m is not doomed]
        leases = instance_leases(survivors)
        assert len(leases) == 2 and all(leases.values()), leases  # reviews v1 and v2
        assert hung.proc is not None
        hung.proc.send_signal(signal.SIGSTOP)
        try:
            refused = 0
            lost_until = time.monotonic() + 2 * TTL
            while refused < 2 or time.monotonic() < lost_until:
                refused += not series.next()
                assert time.monotonic() < deadline, "no apply failed: " + series.problem()
        finally:
            hung.proc.send_signal(signal.SIGCONT)
        healed_at = series.sent
        while series.acknowledged_after(healed_at) < 3:
            series.next()
            assert time.monotonic() < deadline, "applies did not resume: " + series.problem()
        # The workloads outlived the outage on their own leases: not dropped and registered
        # again (which the traffic might not notice), but kept.
        assert instance_leases(survivors) == leases

        # After all that, a change to real routing still reaches the sidecars.
        result = mesh.apply(all_to("v2"), "--wait")
        assert result.returncode == 0, result.stderr
        mark = len(traffic.results)
        wait_until(lambda: len(traffic.results) > mark + 50, what="traffic after the series")
    assert traffic.failures() == [], traffic.failures()[:5]
    assert traffic.seen_after(mark) == {"reviews/v2"}
    assert doomed.proc is not None and doomed.proc.poll() is not None  # it really died

    # Every acknowledged apply is there, in `tsunagi get` and in etcd, as applied.
    shown = mesh.cli("get", "destinationrules", "-o", "json")
    assert shown.returncode == 0, shown.stderr
    listed = json.loads(shown.stdout)
    items = listed if isinstance(listed, list) else listed.get("items", [listed])
    names = {item.get("document", item)["metadata"]["name"] for item in items}
    stored = stored_counters(survivors)
    for n in series.acknowledged:
        assert f"counter-{n}" in names, (n, sorted(names))
        assert stored.get(n) == n, (n, stored)
    # Nothing is stored that was never sent; an unacknowledged apply may have landed or not.
    assert set(stored) <= set(range(1, series.sent + 1))
