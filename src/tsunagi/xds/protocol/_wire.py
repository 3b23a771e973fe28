"""Response bytes: each resource's response entry is serialized once and shared.

Every stream sends the very same immutable :class:`Resource` objects, so the bytes a
resource contributes to a response (a length-delimited field-2 entry: an ``Any`` for SotW, a
``Resource`` for delta) are made once per resource and joined per response, instead of each
stream wrapping and serializing every resource again.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping

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


def sotw_response(
    type_url: str,
    target: Mapping[str, Resource],
    names: Iterable[str],
    version: str,
    nonce: str,
) -> discovery_pb2.DiscoveryResponse:
    """A ``DiscoveryResponse`` carrying ``target[n]`` for each of ``names``, in order."""
    # Parsing the resources' cached entries builds the same message as adding each body.
    get = _entries.get
    response = discovery_pb2.DiscoveryResponse.FromString(
        b"".join([get(target[n], False) for n in names])
    )
    # The version of the whole subscribed set, even when only part of it is sent.
    response.version_info = version
    response.type_url = type_url
    response.nonce = nonce
    return response


def delta_response(
    type_url: str,
    target: Mapping[str, Resource],
    changed: Iterable[str],
    removed: Iterable[str],
    version: str,
    nonce: str,
) -> discovery_pb2.DeltaDiscoveryResponse:
    """A ``DeltaDiscoveryResponse`` carrying ``target[n]`` for each of ``changed`` and
    naming ``removed``; ``version`` is the client's whole set after applying it."""
    get = _entries.get
    response = discovery_pb2.DeltaDiscoveryResponse.FromString(
        b"".join([get(target[n], True) for n in changed])
    )
    response.system_version_info = version
    response.removed_resources.extend(removed)
    response.type_url = type_url
    response.nonce = nonce
    return response
