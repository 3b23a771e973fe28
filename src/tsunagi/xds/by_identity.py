"""Results derived from large immutable mappings, remembered by the mappings' identity.

A thousand sidecars share one frozen mapping of clusters or endpoints, so what is derived
from it (its version, a diff against the previous one, its response bytes) is worth
computing once rather than once per stream. Such results are kept by ``id()``: each entry
holds the objects it was made from, so their ids cannot be reused while it is cached, and
the least recently used entries go first once the cache is full.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Mapping
from types import MappingProxyType
from typing import Any, Generic, TypeVar

V = TypeVar("V")

SHARED_MIN_SIZE = 64
"""Mappings smaller than this are cheap to derive from again: not worth an entry."""


def shared(mapping: Mapping[str, Any]) -> bool:
    """Whether ``mapping`` is large and never changes, so results derived from it may be
    remembered by its identity: snapshots freeze their mappings as ``MappingProxyType``, and
    the translation's layered views say they are with a ``layered_version`` method (see
    :func:`tsunagi.xds.resources.mapping_version`)."""
    frozen = type(mapping) is MappingProxyType or hasattr(mapping, "layered_version")
    return frozen and len(mapping) >= SHARED_MIN_SIZE


class IdentityCache(Generic[V]):
    """Values by the identity of the objects they were derived from; thread-safe.

    Bounded by ``max_entries`` and, when ``weight`` is given, by ``max_weight`` (the sum of
    ``weight(value)``; the most recent entry always stays)."""

    def __init__(
        self,
        max_entries: int,
        max_weight: int = 0,
        weight: Callable[[V], int] | None = None,
    ) -> None:
        self._max_entries = max_entries
        self._max_weight = max_weight
        self._weigh = weight
        self._weight = 0
        self._entries: dict[Hashable, tuple[tuple[object, ...], V]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _key(sources: tuple[object, ...], tag: Hashable) -> Hashable:
        return (*(id(s) for s in sources), tag)

    def get(self, *sources: object, tag: Hashable = None) -> V | None:
        """What :meth:`put` remembered for exactly these ``sources`` (and ``tag``), or None."""
        key = self._key(sources, tag)
        with self._lock:
            hit = self._entries.pop(key, None)
            if hit is None:
                return None
            if all(a is b for a, b in zip(hit[0], sources, strict=True)):
                self._entries[key] = hit  # most recently used last
                return hit[1]
            self._drop(hit[1])
            return None

    def put(self, value: V, *sources: object, tag: Hashable = None) -> V:
        """Remember ``value`` as derived from ``sources`` (and ``tag``); return it."""
        key = self._key(sources, tag)
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._drop(old[1])
            self._entries[key] = (sources, value)
            if self._weigh is not None:
                self._weight += self._weigh(value)
            while len(self._entries) > self._max_entries or (
                self._weigh is not None
                and self._weight > self._max_weight
                and len(self._entries) > 1
            ):
                self._drop(self._entries.pop(next(iter(self._entries)))[1])
        return value

    def _drop(self, value: V) -> None:
        if self._weigh is not None:
            self._weight -= self._weigh(value)

    @property
    def weight(self) -> int:
        """The sum of the kept values' weights (0 without ``weight``)."""
        return self._weight

    def __len__(self) -> int:
        return len(self._entries)
