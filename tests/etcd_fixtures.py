"""Real etcd for tests: one member or a three-member cluster on loopback, in temp data dirs.

Members are started (by :func:`benchmarks.etcd.start_cluster`, which the scale benchmark
uses too) and stopped by their own pids; their data dirs are removed. Tests skip when etcd
is not installed (``make tools`` installs Debian's etcd-server).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from benchmarks.etcd import Cluster, Member, unavailable
from benchmarks.etcd import start_cluster as start_etcd

from tsunagi.registry import Registry
from tsunagi.store.etcd import EtcdClient, EtcdStore

__all__ = [
    "Cluster",
    "Member",
    "etcd_cluster",
    "eventually",
    "leader",
    "registry_on",
    "start_cluster",
]

# Short heartbeats and elections: a single member is ready in a tenth of a second; a
# cluster elects a new leader within about a second after one is killed.
FAST = ("--heartbeat-interval", "10", "--election-timeout", "100")
FAST_CLUSTER = ("--heartbeat-interval", "50", "--election-timeout", "500")


def start_cluster(base: Path, size: int = 1) -> Cluster:
    """Start ``size`` members under ``base`` and wait until each reports healthy (skips
    the test when etcd is not installed)."""
    reason = unavailable()
    if reason is not None:
        pytest.skip(reason)
    return start_etcd(base, size, FAST if size == 1 else FAST_CLUSTER)


def etcd_cluster(base: Path, size: int = 1) -> Iterator[Cluster]:
    """A fixture's body (``yield from``): a started cluster, stopped and removed afterwards."""
    cluster = start_cluster(base, size)
    try:
        yield cluster
    finally:
        cluster.stop()


@contextlib.asynccontextmanager
async def registry_on(cluster: Cluster, prefix: str, ttl: float) -> AsyncIterator[Registry]:
    """A registry on an etcd store of its own under ``prefix``, started as ``tsunagi up``
    starts one (a replica, as far as the registry goes)."""
    store = EtcdStore(cluster.endpoints, prefix)
    await store.open()
    try:
        registry = Registry(store, ttl=ttl)
        await registry.restore_leases()
        yield registry
    finally:
        await store.close()


async def leader(cluster: Cluster) -> Member:
    """The member that leads now (asked of each running member in turn)."""
    for m in cluster.members:
        if m.proc is None or m.proc.poll() is not None:
            continue  # killed by the test
        client = EtcdClient([("127.0.0.1", m.client_port)])
        try:
            status = await client.status()
        finally:
            await client.close()
        if status.leader == status.member_id:
            return m
    raise AssertionError("the etcd cluster has no leader")


async def eventually(check: Callable[[], bool], what: str, timeout: float = 20) -> None:
    """Poll ``check`` until true; fail after ``timeout`` seconds (a bound, not a measure)."""
    try:
        async with asyncio.timeout(timeout):
            while not check():
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None
