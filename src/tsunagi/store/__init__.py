"""Revisioned, watchable storage for applied config and registered workloads."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from tsunagi.store.base import Contents, Key, Record, Store, StoreError, StoreLimit
from tsunagi.store.memory import MemoryStore
from tsunagi.store.sqlite import SqliteStore

if TYPE_CHECKING:
    from tsunagi.store.etcd.tls import EtcdTls

__all__ = [
    "Contents",
    "Key",
    "MemoryStore",
    "Record",
    "SqliteStore",
    "Store",
    "StoreError",
    "StoreLimit",
    "open_store",
]


def open_store(url: str, state_dir: Path, etcd_tls: EtcdTls | None = None) -> Store:
    """Make a store from ``--store``: ``memory:``, ``sqlite:PATH``,
    ``etcd://HOST:PORT[,HOST:PORT...][/PREFIX]`` (over TLS with ``etcd_tls``, which only an
    etcd store reads: ``tsunagi up`` refuses it with another) or empty for the default
    (SQLite)."""
    if url in ("", "sqlite:", "sqlite"):
        return SqliteStore(state_dir / "tsunagi.db")
    if url.startswith("sqlite:"):
        return SqliteStore(Path(url.removeprefix("sqlite:")).expanduser())
    if url.startswith("memory"):
        return MemoryStore()
    if url.startswith("etcd://"):
        from tsunagi.store.etcd import EtcdStore, parse_url  # loads gRPC stubs: only when used

        endpoints, prefix = parse_url(url)
        return EtcdStore(endpoints, prefix, tls=etcd_tls)
    raise ValueError(
        f"unsupported store {url!r}: use sqlite:PATH, memory: or etcd://HOST:PORT[,HOST:PORT...]"
    )
