"""The store: revisions, atomic batches, persistence across restarts, crash safety."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tsunagi.store import MemoryStore, SqliteStore, Store

VS = ("VirtualService", "default", "reviews")
DR = ("DestinationRule", "default", "reviews")


def stores(tmp_path: Path) -> list[Store]:
    return [MemoryStore(), SqliteStore(tmp_path / "s.db")]


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_commit_is_atomic_and_revisioned(tmp_path: Path, kind: str) -> None:
    store = MemoryStore() if kind == "memory" else SqliteStore(tmp_path / "s.db")
    await store.open()
    assert store.contents().revision == 0
    rev = await store.commit([(VS, {"a": 1}), (DR, {"b": 2})])
    assert rev == 1
    assert {k: r.revision for k, r in store.contents().records.items()} == {VS: 1, DR: 1}
    rev = await store.commit([(VS, {"a": 2})], [DR])
    assert rev == 2
    assert store.contents().records[VS].document == {"a": 2}
    assert DR not in store.contents().records
    await store.close()


async def test_wait_for_change_wakes_on_commit() -> None:
    store = MemoryStore()
    waiter = asyncio.create_task(store.wait_for_change(0))
    await asyncio.sleep(0)
    assert not waiter.done()
    await store.commit([(VS, {})])
    assert await asyncio.wait_for(waiter, 1) == 1


async def test_sqlite_keeps_everything_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    first = SqliteStore(path)
    await first.open()
    await first.commit([(VS, {"spec": {"hosts": ["reviews"]}})])
    await first.commit([(DR, {"spec": {"host": "reviews"}})])
    await first.close()
    second = SqliteStore(path)
    await second.open()
    assert second.contents().revision == 2
    assert second.contents().records[VS].document == {"spec": {"hosts": ["reviews"]}}
    assert second.contents().records[DR].revision == 2
    await second.close()


async def test_sqlite_failed_write_leaves_previous_state(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = SqliteStore(path)
    await store.open()
    await store.commit([(VS, {"v": 1})])
    unserializable: Any = {"v": object()}  # fails after the DELETE inside the transaction
    with pytest.raises(TypeError):
        await store.commit([(DR, unserializable)], [VS])
    assert store.contents().revision == 1 and VS in store.contents().records
    await store.close()
    again = SqliteStore(path)
    await again.open()
    assert again.contents().revision == 1
    assert again.contents().records[VS].document == {"v": 1}
    assert DR not in again.contents().records
    await again.close()
