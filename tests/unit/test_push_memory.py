"""What keeps a push cheap at scale: endpoints kept between World builds, the client
certificate parsed once per certificate, and the heap settings (glibc thresholds, the
published config frozen out of full collections)."""

from __future__ import annotations

import gc
import weakref
from types import MappingProxyType
from typing import Any

import pytest

from tsunagi.controlplane import heap
from tsunagi.controlplane.world_builder import WorldBuilder
from tsunagi.mesh import World
from tsunagi.mesh.world import TLS_MODE_ISTIO
from tsunagi.registry import KIND as INSTANCE_KIND
from tsunagi.store import Contents, Record
from tsunagi.xds import peer_identity

DISABLE_IN_SHOP = {
    "apiVersion": "security.istio.io/v1",
    "kind": "PeerAuthentication",
    "metadata": {"name": "off", "namespace": "shop"},
    "spec": {"mtls": {"mode": "DISABLE"}},
}


def _instance(name: str, address: str) -> dict[str, Any]:
    return {
        "name": name,
        "service": "cart",
        "namespace": "shop",
        "port": 9080,
        "address": address,
        "target_port": 9080,
        "labels": {"app": "cart"},
    }


def _record(kind: str, name: str, document: dict[str, Any], revision: int) -> Record:
    return Record(kind, "shop", name, document, revision)


def _contents(revision: int, *records: Record) -> Contents:
    return Contents(revision, MappingProxyType({r.key: r for r in records}))


def _endpoints(world: World) -> dict[str, Any]:
    return {ep.address: ep for eps in world.endpoints.values() for ep in eps}


def test_unchanged_instances_keep_their_endpoints_and_changed_ones_get_new() -> None:
    builder = WorldBuilder()
    a1 = _record(INSTANCE_KIND, "cart-1", _instance("cart-1", "127.0.0.1"), 1)
    b1 = _record(INSTANCE_KIND, "cart-2", _instance("cart-2", "127.0.0.2"), 2)
    first = _endpoints(builder.build(_contents(2, a1, b1)))

    b3 = _record(INSTANCE_KIND, "cart-2", _instance("cart-2", "127.0.0.3"), 3)
    second = _endpoints(builder.build(_contents(3, a1, b3)))

    assert second["127.0.0.1"] is first["127.0.0.1"]  # not rebuilt
    assert set(second) == {"127.0.0.1", "127.0.0.3"}  # the moved one is where it went
    assert second["127.0.0.3"].tls_mode == TLS_MODE_ISTIO


def test_a_peer_authentication_change_remakes_kept_endpoints() -> None:
    builder = WorldBuilder()
    inst = _record(INSTANCE_KIND, "cart-1", _instance("cart-1", "127.0.0.1"), 1)
    before = _endpoints(builder.build(_contents(1, inst)))["127.0.0.1"]
    assert before.tls_mode == TLS_MODE_ISTIO

    off = _record("PeerAuthentication", "off", DISABLE_IN_SHOP, 2)
    during = _endpoints(builder.build(_contents(2, inst, off)))["127.0.0.1"]
    assert during.tls_mode == ""  # clients must stop originating mTLS to it

    after = _endpoints(builder.build(_contents(3, inst)))["127.0.0.1"]
    assert after.tls_mode == TLS_MODE_ISTIO


def test_a_certificate_is_parsed_once_per_certificate(monkeypatch: pytest.MonkeyPatch) -> None:
    parsed: list[bytes] = []

    def mark(pem: bytes) -> bool:
        parsed.append(pem)
        return pem == b"gateway"

    monkeypatch.setattr(peer_identity, "has_gateway_mark", mark)
    peer_identity._marked.cache_clear()
    try:
        gateway = {peer_identity.CERT_PROPERTY: [b"gateway"]}
        sidecar = {peer_identity.CERT_PROPERTY: [b"sidecar"]}
        answers = [peer_identity.may_hold_keys(c) for c in (gateway, sidecar, gateway, sidecar)]
        assert answers == [True, False, True, False]
        assert parsed == [b"gateway", b"sidecar"]
    finally:
        peer_identity._marked.cache_clear()


def test_malloc_thresholds_are_raised_on_glibc_only(monkeypatch: pytest.MonkeyPatch) -> None:
    import platform

    from tsunagi import glibc

    if platform.libc_ver()[0] == "glibc":
        assert heap.raise_malloc_thresholds()
    monkeypatch.setattr(glibc, "_libc", None)  # a C library without mallopt
    assert not heap.raise_malloc_thresholds()


class _Cycle:
    def __init__(self) -> None:
        self.me = self


def test_frozen_cycles_are_collected_once_the_frozen_set_grows() -> None:
    freezer = heap.GcFreezer(growth=1.0)
    gc.disable()  # only the freezer may collect here
    try:
        freezer.published()  # the baseline
        cycle = _Cycle()
        gone = weakref.ref(cycle)
        del cycle  # garbage only a full collection can free
        freezer.published()  # froze it, saw the growth, collected
        assert gone() is None
        kept = _Cycle()
        freezer.published()
        assert gc.get_freeze_count() > 0 and weakref.ref(kept)() is kept
    finally:
        gc.unfreeze()
        gc.enable()
