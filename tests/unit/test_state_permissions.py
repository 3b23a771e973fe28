"""Secrets are stored whole (gateways need their keys), so the files that hold them are
readable by their owner only: the state directory, the SQLite database and its WAL files."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from tsunagi.controlplane.auth import ensure_token
from tsunagi.store.sqlite import SqliteStore


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


async def test_the_database_and_its_wal_files_are_the_owners_only(tmp_path: Path) -> None:
    path = tmp_path / "new" / "tsunagi.db"
    store = SqliteStore(path)
    await store.open()
    try:
        await store.commit([(("Secret", "ns", "cred"), {"data": {"tls.key": "a2V5"}})])
        wal, shm = path.with_name("tsunagi.db-wal"), path.with_name("tsunagi.db-shm")
        assert wal.exists() and shm.exists()
        assert {p.name: _mode(p) for p in (path, wal, shm)} == {
            "tsunagi.db": 0o600,
            "tsunagi.db-wal": 0o600,
            "tsunagi.db-shm": 0o600,
        }
        assert _mode(path.parent) == 0o700
    finally:
        await store.close()


async def test_a_database_made_readable_before_is_made_private(tmp_path: Path) -> None:
    path = tmp_path / "tsunagi.db"
    store = SqliteStore(path)
    await store.open()
    await store.commit([(("Secret", "ns", "cred"), {"data": {}})])
    await store.close()
    for p in tmp_path.iterdir():
        os.chmod(p, 0o644)
    store = SqliteStore(path)
    await store.open()
    try:
        assert {p.name: _mode(p) for p in tmp_path.iterdir()} == {
            p.name: 0o600 for p in tmp_path.iterdir()
        }
        assert _mode(path) == 0o600
    finally:
        await store.close()


def test_the_state_directory_is_the_owners_only(tmp_path: Path) -> None:
    ensure_token(tmp_path / "state")
    assert _mode(tmp_path / "state") == 0o700
    os.chmod(tmp_path / "state", 0o755)  # made by an older version
    ensure_token(tmp_path / "state")
    assert _mode(tmp_path / "state") == 0o700
