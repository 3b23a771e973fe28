"""A store that lives and dies with the process: for tests and throwaway meshes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tsunagi.store.base import CachedStore, Key


class MemoryStore(CachedStore):
    """Keeps everything in memory; revisions start at 1 on every start."""

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def commit(
        self, puts: Sequence[tuple[Key, Mapping[str, Any]]], deletes: Sequence[Key] = ()
    ) -> int:
        contents = self._next(puts, deletes)
        await self._publish(contents)
        return contents.revision
