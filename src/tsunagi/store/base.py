"""The store's contract: revisioned documents, atomic batches, and change notification."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Protocol, runtime_checkable

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


@runtime_checkable
class Leases(Protocol):
    """A store that can hold a document under a lease which the store itself expires (etcd):
    unless renewed within its TTL, the document is deleted, and every process that follows
    the store sees it go. Stores without this (memory, SQLite) leave expiry to their owner.

    A leased document is found by its key alone: the lease is the one the store holds it
    under, so any process on the same store can renew or revoke it.
    """

    async def commit_leased(self, key: Key, document: Mapping[str, Any], ttl: float) -> int:
        """Write ``document`` at ``key`` under a new lease of at least ``ttl`` seconds, as
        one atomic commit; return the new revision."""
        ...

    def leased(self, key: Key) -> bool:
        """Whether ``key`` is stored under a lease (False when absent or stored plainly)."""
        ...

    async def renew(self, key: Key) -> bool:
        """Renew the lease ``key`` is stored under; False when ``key`` is absent, has no
        lease, or its lease has lapsed (the document is gone or about to go)."""
        ...

    async def revoke(self, key: Key) -> int:
        """Delete ``key`` now by ending its lease (or plainly when it has none); return the
        revision after which the delete is visible here."""
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
