"""Response bytes: each resource's response entry is serialized once and shared.

Every stream sends the very same immutable :class:`Resource` objects, so the bytes a
resource contributes to a response (a length-delimited field-2 entry: an ``Any`` for SotW, a
``Resource`` for delta) are made once per resource and joined per response, instead of each
stream wrapping and serializing every resource again.

The joined bytes, with the response's own few fields appended (protobuf fields may come in
any order), are the response as sent (:class:`Outgoing`): the server hands them to gRPC as
they are, so no message is built, parsed or serialized per response (serializing one again
cost 0.8 ms per 1,200-cluster response per proxy).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from typing import NamedTuple

from envoy.service.discovery.v3 import discovery_pb2

from tsunagi.xds.resources import Resource

# Both response messages hold their resources in field 2: entries are tag 0x12 (field 2,
# length-delimited), the entry's length as a varint, then the entry's bytes.
_RESOURCES_TAG = b"\x12"
assert discovery_pb2.DiscoveryResponse.DESCRIPTOR.fields_by_name["resources"].number == 2
assert discovery_pb2.DeltaDiscoveryResponse.DESCRIPTOR.fields_by_name["resources"].number == 2


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


class _Entries:
    """Each resource's serialized response entry (an ``Any`` for SotW, a ``Resource`` for
    delta), by resource identity: every stream sends the very same resource objects, so each
    is wrapped and serialized once, not once per stream. Bounded by size: it starts over
    when full, as entries are cheap to make again."""

    def __init__(self, max_bytes: int = 32 << 20) -> None:
        self._max_bytes = max_bytes
        self._bytes = 0
        self._entries: dict[tuple[int, bool], tuple[Resource, bytes]] = {}
        self._lock = threading.Lock()

    def get(self, res: Resource, delta: bool) -> bytes:
        key = (id(res), delta)
        hit = self._entries.get(key)
        if hit is not None and hit[0] is res:
            return hit[1]
        if delta:
            msg = discovery_pb2.Resource(name=res.name, version=res.version, resource=res.body)
            data: bytes = msg.SerializeToString()
        else:
            data = res.body.SerializeToString()
        entry = _RESOURCES_TAG + _varint(len(data)) + data
        with self._lock:
            if self._bytes + len(entry) > self._max_bytes:
                self._entries.clear()
                self._bytes = 0
            self._entries[key] = (res, entry)
            self._bytes += len(entry)
        return entry


_entries = _Entries()


def _string(tag: bytes, value: str) -> bytes:
    data = value.encode()
    return tag + _varint(len(data)) + data


# Tags (field number << 3 | 2, length-delimited) of the responses' own string fields, the
# same in both messages but for delta's removals.
_VERSION, _TYPE, _NONCE, _REMOVED = b"\x0a", b"\x22", b"\x2a", b"\x32"
for _message, _fields in (
    (discovery_pb2.DiscoveryResponse, {"version_info": 1, "type_url": 4, "nonce": 5}),
    (
        discovery_pb2.DeltaDiscoveryResponse,
        {"system_version_info": 1, "type_url": 4, "nonce": 5, "removed_resources": 6},
    ),
):
    for _name, _number in _fields.items():
        assert _message.DESCRIPTOR.fields_by_name[_name].number == _number


class Outgoing(NamedTuple):
    """A response as it goes out: its bytes (a serialized ``DiscoveryResponse`` or
    ``DeltaDiscoveryResponse``), and the two fields the server logs."""

    type_url: str
    nonce: str
    data: bytes


def _outgoing(
    type_url: str, entries: Iterable[bytes], version: str, removed: Iterable[str], nonce: str
) -> Outgoing:
    data = b"".join(
        [
            *entries,
            _string(_VERSION, version),
            *[_string(_REMOVED, name) for name in removed],
            _string(_TYPE, type_url),
            _string(_NONCE, nonce),
        ]
    )
    return Outgoing(type_url, nonce, data)


def sotw_response(
    type_url: str,
    target: Mapping[str, Resource],
    names: Iterable[str],
    version: str,
    nonce: str,
) -> Outgoing:
    """A ``DiscoveryResponse`` carrying ``target[n]`` for each of ``names``, in order;
    ``version`` is the whole subscribed set's, even when only part of it is sent."""
    get = _entries.get
    return _outgoing(type_url, [get(target[n], False) for n in names], version, (), nonce)


def delta_response(
    type_url: str,
    target: Mapping[str, Resource],
    changed: Iterable[str],
    removed: Iterable[str],
    version: str,
    nonce: str,
) -> Outgoing:
    """A ``DeltaDiscoveryResponse`` carrying ``target[n]`` for each of ``changed`` and
    naming ``removed``; ``version`` is the client's whole set after applying it."""
    get = _entries.get
    return _outgoing(type_url, [get(target[n], True) for n in changed], version, removed, nonce)
