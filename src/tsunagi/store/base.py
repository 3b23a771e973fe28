"""The store's contract: revisioned documents, atomic batches, and change notification."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Protocol

Key = tuple[str, str, str]
"""(kind, namespace, name)."""


@dataclass(frozen=True)
class Record:
    """One stored document and the revision that last wrote it."""

    kind: str
    namespace: str
    name: str
    document: Mapping[str, Any]
    revision: int

    @property
    def key(self) -> Key:
        return (self.kind, self.namespace, self.name)


@dataclass(frozen=True)
class Contents:
    """Everything in the store at one revision; cheap to take, never mutated."""

    revision: int
    records: Mapping[Key, Record]

    def of_kind(self, kind: str) -> list[Record]:
        return [r for k, r in self.records.items() if k[0] == kind]


class StoreError(RuntimeError):
    """The store could not do what was asked (unreachable, or a limit of the backend); the
    message says why and what to do. Nothing of the failed write is visible."""


class StoreLimit(StoreError):
    """The write is larger than the store takes (etcd's operations or bytes per
    transaction): the caller's to split, not a fault of the store."""


class Store(Protocol):
    """A revisioned, watchable store of documents. Every write is all-or-nothing."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    def contents(self) -> Contents:
        """The current contents (an immutable view)."""
        ...

    async def commit(
        self, puts: Sequence[tuple[Key, Mapping[str, Any]]], deletes: Sequence[Key] = ()
    ) -> int:
        """Write all ``puts`` and ``deletes`` atomically; return the new revision."""
        ...

    async def wait_for_change(self, after: int) -> int:
        """Return the current revision once it is greater than ``after``."""
        ...


class CachedStore:
    """Shared half of every backend: an in-memory copy of the contents plus notification.

    Backends persist a batch first and only then call :meth:`_publish`, so readers never see
    state that a crash could take back.
    """

    def __init__(self) -> None:
        self._contents = Contents(revision=0, records=MappingProxyType({}))
        self._changed = asyncio.Condition()

    def contents(self) -> Contents:
        return self._contents

    async def wait_for_change(self, after: int) -> int:
        async with self._changed:
            await self._changed.wait_for(lambda: self._contents.revision > after)
            return self._contents.revision

    def _next(
        self, puts: Sequence[tuple[Key, Mapping[str, Any]]], deletes: Sequence[Key]
    ) -> Contents:
        revision = self._contents.revision + 1
        records = dict(self._contents.records)
        for key in deletes:
            records.pop(key, None)
        for key, document in puts:
            records[key] = Record(*key, document=document, revision=revision)
        return Contents(revision=revision, records=MappingProxyType(records))

    async def _publish(self, contents: Contents) -> None:
        async with self._changed:
            self._contents = contents
            self._changed.notify_all()
