"""Expiries on etcd leases, against real etcd: when an agent stops heartbeating, etcd deletes
its instance and every replica sees it go; the replica the agent heartbeated reports it (once)
from ``Registry.expire``, which ``tsunagi up`` logs ("missed its heartbeats; removed") and
counts as a registry delete. A deregistration through another replica is no expiry."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.etcd_fixtures import Cluster, etcd_cluster, eventually, registry_on
from tsunagi.registry import KIND, Instance, Registry

from .examples import instance_document

PREFIX = "/expiry/"


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[Cluster]:
    yield from etcd_cluster(tmp_path)


def replica(cluster: Cluster, ttl: float) -> contextlib.AbstractAsyncContextManager[Registry]:
    """A registry on its own etcd store, as one `tsunagi up` has."""
    return registry_on(cluster, PREFIX, ttl)


def instance(name: str) -> Instance:
    return Instance.from_document(instance_document(name, namespace="default"))


def key(name: str) -> tuple[str, str, str]:
    return (KIND, "default", name)


def names(registry: Registry) -> list[str]:
    return sorted(i.name for i in registry.instances())


async def test_each_expiry_is_reported_once_by_the_replica_its_agent_heartbeated(
    etcd: Cluster,
) -> None:
    async with replica(etcd, 1.0) as a, replica(etcd, 1.0) as b:
        await a.register(instance("via-a"))
        await b.register(instance("via-b"))
        await eventually(lambda: names(a) == names(b) == ["via-a", "via-b"], "both to see both")
        for _ in range(3):
            assert await a.heartbeat("default", "via-a")
            assert await b.heartbeat("default", "via-b")
            assert await a.expire() == [] and await b.expire() == []
            await asyncio.sleep(0.25)
        # Both agents stop: etcd ends the leases, both replicas see both go.
        await eventually(lambda: names(a) == names(b) == [], "the lapsed leases to remove them")
        assert await a.expire() == [key("via-a")]
        assert await b.expire() == [key("via-b")]
        assert await a.expire() == [] and await b.expire() == []  # once


async def test_an_expiry_is_reported_when_the_agent_registers_again_first(
    etcd: Cluster,
) -> None:
    async with replica(etcd, 1.0) as a:
        await a.register(instance("x"))
        await eventually(lambda: names(a) == [], "the lapsed lease to remove it")
        # The agent comes back before the expiry loop looked: told to register, it does.
        assert not await a.heartbeat("default", "x")
        await a.register(instance("x"))
        assert await a.expire() == [key("x")]
        assert names(a) == ["x"]


async def test_a_deregistration_through_another_replica_is_no_expiry(etcd: Cluster) -> None:
    # A TTL long enough that the delete is seen well within it, even on a loaded machine.
    async with replica(etcd, 6.0) as a, replica(etcd, 6.0) as b:
        await a.register(instance("x"))
        await eventually(lambda: names(b) == ["x"], "b to see the registration")
        assert await a.heartbeat("default", "x")
        assert await b.deregister("default", "x")
        await eventually(lambda: names(a) == [], "a to see the delete")
        assert await a.expire() == [] and await b.expire() == []
        # Nor is one deregistered through the replica it heartbeated.
        await a.register(instance("y"))
        assert await a.deregister("default", "y")
        assert await a.expire() == []
