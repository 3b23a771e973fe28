"""The embedded default store: one SQLite file under the state directory.

Each commit is one transaction (WAL, synchronous=FULL), so a crash mid-write leaves the
previous revision intact. All SQLite calls run in a worker thread to keep the event loop free.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

from tsunagi.store.base import CachedStore, Contents, Key, Record

_SCHEMA = """
CREATE TABLE IF NOT EXISTS resources (
    kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL,
    document TEXT NOT NULL, revision INTEGER NOT NULL,
    PRIMARY KEY (kind, namespace, name)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


def _private(path: Path) -> None:
    """Make the database readable by its owner only: it holds Secrets (private keys).

    A missing directory is made 0700 (an existing one is left as it is: it may be shared,
    like /tmp; the state directory is made private by the control plane). The database file
    is made, or set, 0600 before SQLite opens it; SQLite gives its -wal and -shm files the
    database's mode, and any left from before are set 0600 too.
    """
    if not path.parent.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        if p.exists():
            os.chmod(p, 0o600)


class SqliteStore(CachedStore):
    """Persists every commit to ``path`` and serves reads from memory."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self._path = path
        self._db: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        await asyncio.to_thread(_private, self._path)
        self._db = await asyncio.to_thread(self._connect)
        contents = await asyncio.to_thread(self._load)
        await self._publish(contents)

    async def close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            await asyncio.to_thread(db.close)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(_SCHEMA)
        return db

    def _load(self) -> Contents:
        assert self._db is not None
        row = self._db.execute("SELECT value FROM meta WHERE key='revision'").fetchone()
        records: dict[Key, Record] = {}
        for kind, ns, name, doc, rev in self._db.execute(
            "SELECT kind, namespace, name, document, revision FROM resources"
        ):
            records[(kind, ns, name)] = Record(kind, ns, name, json.loads(doc), rev)
        return Contents(revision=row[0] if row else 0, records=MappingProxyType(records))

    async def commit(
        self, puts: Sequence[tuple[Key, Mapping[str, Any]]], deletes: Sequence[Key] = ()
    ) -> int:
        async with self._lock:
            contents = self._next(puts, deletes)
            await asyncio.to_thread(self._write, contents.revision, puts, deletes)
            await self._publish(contents)
            return contents.revision

    def _write(
        self,
        revision: int,
        puts: Sequence[tuple[Key, Mapping[str, Any]]],
        deletes: Sequence[Key],
    ) -> None:
        if self._db is None:
            raise RuntimeError("store is closed")
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany("DELETE FROM resources WHERE kind=? AND namespace=? AND name=?", deletes)
            db.executemany(
                "INSERT OR REPLACE INTO resources VALUES (?, ?, ?, ?, ?)",
                [(*key, json.dumps(doc, sort_keys=True), revision) for key, doc in puts],
            )
            db.execute("INSERT OR REPLACE INTO meta VALUES ('revision', ?)", (revision,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
