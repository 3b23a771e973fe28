"""A store that lives and dies with the process: for tests and throwaway meshes."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from tsunagi.store.base import CachedStore, Key


class MemoryStore(CachedStore):
    """Keeps everything in memory; revisions start at 1 on every start."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def commit(
        self, puts: Sequence[tuple[Key, Mapping[str, Any]]], deletes: Sequence[Key] = ()
    ) -> int:
        async with self._lock:  # two commits must not both build on the same revision
            contents = self._next(puts, deletes)
            await self._publish(contents)
            return contents.revision
