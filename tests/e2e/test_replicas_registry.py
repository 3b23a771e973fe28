"""Two `tsunagi up` replicas on one etcd prefix share the registry: a `tsunagi run` sidecar
registered through replica A (which alone hears its heartbeats) is listed by replica B for as
long as it lives, well past the heartbeat TTL, because its lease is etcd's, not A's. Killed
with -9, it is gone from both once the TTL passes; stopped, it is gone at once."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.etcd_fixtures import Cluster, etcd_cluster
from tsunagi.registry import KIND
from tsunagi.store.etcd import EtcdClient

from .mesh import Mesh, alive, wait_until

pytestmark = pytest.mark.e2e

TTL = 2.0
"""Both replicas' ``--instance-ttl``: the agent heartbeats every third of it."""
PREFIX = "/replicas"


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[Cluster]:
    yield from etcd_cluster(tmp_path / "etcd")


@pytest.fixture
def replicas(etcd: Cluster, tmp_path: Path) -> Iterator[tuple[Mesh, Mesh]]:
    """Replicas A and B: one etcd prefix, a state directory each. Replicas must share the
    CA, the workload-token key and the admin token, so B is given A's."""
    store = ("--store", etcd.url + PREFIX)
    a_dir = tmp_path / "a"
    shared = (
        *(
            "--ca-cert",
            str(a_dir / "ca" / "ca-cert.pem"),
            "--ca-key",
            str(a_dir / "ca" / "ca-key.pem"),
        ),
        *("--workload-token-key", str(a_dir / "workload-token.key")),
        *("--token-file", str(a_dir / "token")),
    )
    started: list[Mesh] = []
    try:
        for state_dir, args in ((a_dir, store), (tmp_path / "b", (*store, *shared))):
            m = Mesh(state_dir, up_args=args, instance_ttl=TTL)
            m.state_dir.mkdir(parents=True)
            started.append(m)
            m.up()
        yield started[0], started[1]
    finally:
        for m in reversed(started):
            m.close()


def lease_in_etcd(cluster: Cluster, name: str) -> int | None:
    """The etcd lease the instance ``name`` is stored under (None: no such key)."""

    async def read() -> int | None:
        client = EtcdClient(cluster.endpoints)
        try:
            _, kv = await client.get(f"{PREFIX}/{KIND}/default/{name}".encode())
        finally:
            await client.close()
        return kv.lease if kv is not None else None

    return asyncio.run(read())


def listed_by(mesh: Mesh) -> str:
    """What `tsunagi get workloads` prints, asked of this replica."""
    out = mesh.cli("get", "workloads")
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_an_instance_lives_on_its_etcd_lease_whichever_replica_it_heartbeats(
    replicas: tuple[Mesh, Mesh], etcd: Cluster
) -> None:
    a, b = replicas
    reviews = a.run("reviews", "v1")  # registers, and heartbeats, through A only
    assert lease_in_etcd(etcd, reviews.name), "the instance is not under an etcd lease"
    wait_until(lambda: reviews.name in listed_by(b), 10, "B to list the instance")

    # More than two TTLs: B never hears a heartbeat, yet expires nothing; both list it
    # on every look.
    until = time.monotonic() + 2.5 * TTL
    while time.monotonic() < until:
        assert a.workload_names() == b.workload_names() == [reviews.name]
        time.sleep(0.2)
    assert reviews.name in listed_by(b)

    # kill -9: no deregistration. Its Envoy and app die with it (the kernel signals them);
    # any that lingers is stopped here by its pid.
    children = [pid for pid in (reviews.envoy_pid(), reviews.app_pid()) if pid]
    reviews.proc.send_signal(signal.SIGKILL)
    reviews.proc.wait()
    try:
        wait_until(lambda: not any(map(alive, children)), 10, "its Envoy and app to exit")
    finally:
        for pid in filter(alive, children):
            os.kill(pid, signal.SIGKILL)
    # Once the lease lapses, etcd deletes the instance, and both replicas drop it.
    wait_until(lambda: lease_in_etcd(etcd, reviews.name) is None, 30, "the lease to lapse")
    wait_until(lambda: a.workload_names() == b.workload_names() == [], 10, "both to drop it")

    # A sidecar that stops deregisters through A: its lease is revoked, gone from etcd at
    # once, and B follows.
    details = a.run("details", "v1")
    wait_until(lambda: details.name in b.workload_names(), 10, "B to list details")
    details.proc.send_signal(signal.SIGTERM)
    assert details.proc.wait(30) == 0
    assert lease_in_etcd(etcd, details.name) is None
    assert details.name not in a.workload_names()
    wait_until(lambda: details.name not in b.workload_names(), 10, "B to drop details")
