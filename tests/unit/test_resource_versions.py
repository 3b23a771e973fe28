"""Versions of the mappings a snapshot holds: they change exactly when the content does, and
a sidecar's own layer over the shared clusters costs its layer, not the whole mesh."""

from __future__ import annotations

from collections.abc import Iterator
from types import MappingProxyType

from google.protobuf import wrappers_pb2

from tsunagi.xds.resources import Resource, mapping_version
from tsunagi.xds.translate import _Overlay
from tsunagi.xds.translate.layers import Layered


def _res(name: str, value: str = "") -> Resource:
    return Resource.pack(name, wrappers_pb2.StringValue(value=value or name))


def _shared(n: int = 100, changed: str = "") -> MappingProxyType[str, Resource]:
    names = [f"outbound|80||svc{i}.default.svc.cluster.local" for i in range(n)]
    return MappingProxyType({x: _res(x, changed if x == names[0] else "") for x in names})


class _NoWalk(dict[str, Resource]):
    """A base that fails the test if a layered version walks it."""

    def __iter__(self) -> Iterator[str]:
        raise AssertionError("walked the shared mapping")


def test_layers_version_from_the_base_and_their_own_entries() -> None:
    base = _shared()
    own = {"inbound|9080||": _res("inbound|9080||")}
    v = mapping_version(_Overlay(base, own))
    assert v == mapping_version(_Overlay(base, dict(own)))  # same content, same version
    assert v != mapping_version(_Overlay(base, {"inbound|9080||": _res("inbound|9080||", "x")}))
    assert v != mapping_version(_Overlay(_shared(changed="new"), own))
    host = "svc1.default.svc.cluster.local"
    hidden = mapping_version(Layered(base, {}, frozenset({host})))
    assert hidden != mapping_version(Layered(base, {}, frozenset()))
    replaced = {f"outbound|80||{host}": _res(f"outbound|80||{host}", "other")}
    assert hidden != mapping_version(Layered(base, replaced, frozenset({host})))


def test_a_layered_version_does_not_walk_the_shared_mapping() -> None:
    base = MappingProxyType(_NoWalk(_shared()))
    mapping_version(base)  # remembered once (walking values, not keys)
    mapping_version(_Overlay(base, {"inbound|9080||": _res("inbound|9080||")}))
    mapping_version(Layered(base, {}, frozenset({"svc1.default.svc.cluster.local"})))
