"""The registry: validation of registrations, heartbeats, leases, restore after restart."""

from __future__ import annotations

import pytest

from tsunagi.registry import Instance, InvalidInstance, Registry
from tsunagi.store import MemoryStore

from .examples import instance_document

DOC = instance_document("reviews-v1-a", namespace="default", address="127.0.0.1")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_register_heartbeat_and_expire() -> None:
    clock = Clock()
    reg = Registry(MemoryStore(), ttl=10, clock=clock)
    await reg.register(Instance.from_document(DOC))
    assert [i.name for i in reg.instances()] == ["reviews-v1-a"]
    clock.now += 8
    assert await reg.heartbeat("default", "reviews-v1-a")
    clock.now += 8  # 16 s after registering, 8 after the heartbeat: still alive
    assert await reg.expire() == []
    clock.now += 3
    assert await reg.expire() == [("WorkloadInstance", "default", "reviews-v1-a")]
    assert reg.instances() == []
    assert not await reg.heartbeat("default", "reviews-v1-a")  # unknown: the agent must re-register


async def test_reregistering_the_same_instance_writes_nothing() -> None:
    store = MemoryStore()
    reg = Registry(store, ttl=10)
    first = await reg.register(Instance.from_document(DOC))
    assert await reg.register(Instance.from_document(DOC)) == first


async def test_restored_instances_get_a_fresh_lease() -> None:
    store = MemoryStore()
    clock = Clock()
    await Registry(store, ttl=10, clock=clock).register(Instance.from_document(DOC))
    clock.now += 60  # the control plane was down for a minute
    restarted = Registry(store, ttl=10, clock=clock)
    await restarted.restore_leases()
    assert await restarted.expire() == []
    clock.now += 11
    assert len(await restarted.expire()) == 1


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("port", 0, "port must be 1..65535"),
        ("service", "Bad_Name", "not a DNS label"),
        ("target_port", "x", "invalid literal"),
        ("locality", "a/b/c/d", "REGION[/ZONE[/SUBZONE]]"),
    ],
)
def test_invalid_registrations_name_the_field(field: str, value: object, message: str) -> None:
    with pytest.raises(InvalidInstance, match=message.replace("[", r"\[").replace("]", r"\]")):
        Instance.from_document({**DOC, field: value})


def test_missing_field() -> None:
    doc = dict(DOC)
    del doc["service"]
    with pytest.raises(InvalidInstance, match="service"):
        Instance.from_document(doc)


async def test_peer_protocols_follow_registrations_expiry_and_restarts() -> None:
    store = MemoryStore()
    clock = Clock()
    reg = Registry(store, ttl=10, clock=clock)
    grpc = Instance.from_document({**DOC, "name": "a", "protocol": "GRPC"})
    http = Instance.from_document({**DOC, "name": "b"})
    await reg.register(grpc)
    await reg.register(http)
    assert reg.peer_protocols(http) == ["GRPC"]
    assert reg.peer_protocols(grpc) == ["HTTP"]
    await reg.register(Instance.from_document({**DOC, "name": "a", "port": 9999}))
    assert reg.peer_protocols(http) == []  # a moved to another port
    restarted = Registry(store, ttl=10, clock=clock)
    await restarted.restore_leases()
    assert restarted.peer_protocols(Instance.from_document({**DOC, "name": "c"})) == ["HTTP"]
    assert await restarted.deregister("default", "b")
    assert restarted.peer_protocols(grpc) == []
    clock.now += 11
    assert len(await reg.expire()) == 1  # b is gone already; a lapses
    assert reg.peer_protocols(http) == []
