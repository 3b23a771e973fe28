"""Proxy status from the streams' ACK bookkeeping: who is SYNCED, STALE or NACKED, and
waiting until a revision has reached every proxy (``apply --wait``)."""

from __future__ import annotations

from typing import Any

from tsunagi.xds.cache import NodeEntry, SnapshotCache
from tsunagi.xds.resources import SHORT_NAMES


def node_status(entry: NodeEntry) -> dict[str, Any]:
    """One proxy's state per xDS type, as the CLI and dashboard show it."""
    snap = entry.snapshot
    types: dict[str, dict[str, Any]] = {}
    for type_url, st in entry.stream.status().items():
        short = SHORT_NAMES.get(type_url, type_url)
        expected = snap.version(type_url, None if st.wildcard else st.names)
        if st.rejected and st.last_nack_version == expected:
            state = "NACKED"
        elif not st.awaiting_ack and st.acked_version == expected:
            state = "SYNCED"
        else:
            state = "STALE"
        types[short] = {
            "state": state,
            "acked": st.acked_version,
            "expected": expected,
            "message": st.last_nack_message if st.rejected else None,
        }
    meta = entry.metadata or {}
    nacks = [f"{t}: {s['message']}" for t, s in types.items() if s["state"] == "NACKED"]
    return {
        "id": entry.id,
        "service": meta.get("service", ""),
        "namespace": meta.get("namespace", ""),
        "kind": meta.get("kind", "sidecar"),
        "revision": snap.revision,
        "connected_at": entry.connected_at,
        "synced": entry.stream.synced(snap),
        "nacked": bool(nacks),
        "message": "; ".join(nacks),
        "types": types,
    }


def proxy_statuses(cache: SnapshotCache) -> list[dict[str, Any]]:
    return [node_status(e) for _, e in sorted(cache.nodes.items())]


def _settled(cache: SnapshotCache, pusher: Any, revision: int) -> bool:
    if pusher.processed < revision:
        return False
    for entry in cache.nodes.values():
        if entry.snapshot.revision < revision:
            return False
        if not entry.stream.synced(entry.snapshot) and not node_status(entry)["nacked"]:
            return False
    return True


async def wait_for_acks(cache: SnapshotCache, pusher: Any, revision: int) -> dict[str, Any]:
    """Return once every connected proxy has ACKed (or NACKed) config at ``revision`` or later."""
    async with cache.changed:
        await cache.changed.wait_for(lambda: _settled(cache, pusher, revision))
    return {"complete": True, "proxies": proxy_statuses(cache)}
