"""Proxy status from the streams' ACK bookkeeping: who is SYNCED, STALE or NACKED, and
waiting until a revision has reached every proxy (``apply --wait``).

Both run for every connected proxy, the wait on every ACK of any proxy, so neither walks a
proxy's resources: the expected version of a type comes from the snapshot, which computes
each (type, subscription) once, and ``synced()`` compares cached versions.
"""

from __future__ import annotations

from typing import Any, Protocol

from tsunagi.controlplane.push import PushErrors
from tsunagi.proxy_contract import META_GATEWAY_PORTS, parse_gateway_ports
from tsunagi.xds.cache import NodeEntry, SnapshotCache
from tsunagi.xds.protocol import TypeStatus
from tsunagi.xds.resources import SHORT_NAMES, Snapshot


class PushState(Protocol):
    """What status needs of the push path: how far it got and what it could not translate."""

    @property
    def processed(self) -> int: ...

    @property
    def errors(self) -> PushErrors: ...


def _expected(snap: Snapshot, st: TypeStatus) -> str:
    # ``st.names`` is the stream's own frozenset (not a copy), so after the first call for a
    # snapshot this is a dictionary hit.
    return snap.version(st.type_url, None if st.wildcard else st.names)


def _state(st: TypeStatus, expected: str) -> str:
    if st.rejected and st.last_nack_version == expected:
        return "NACKED"
    if not st.awaiting_ack and st.acked_version == expected:
        return "SYNCED"
    return "STALE"


def _nack_message(st: TypeStatus, envoy_filters: tuple[str, ...]) -> str | None:
    """Envoy's reason for rejecting a type, naming the EnvoyFilters that patched it: the
    likely cause when Envoy rejects config that translated cleanly."""
    if not st.rejected:
        return None
    if envoy_filters:
        return f"{st.last_nack_message} (patched by EnvoyFilter {', '.join(envoy_filters)})"
    return st.last_nack_message


def node_status(entry: NodeEntry, errors: PushErrors | None = None) -> dict[str, Any]:
    """One proxy's state per xDS type, as the CLI and dashboard show it, with the pieces of
    config left out of it because they could not be translated."""
    snap = entry.snapshot
    types: dict[str, dict[str, Any]] = {}
    patched_by = errors.envoy_filters.get(entry.id, {}) if errors else {}
    for type_url, st in entry.stream.status().items():
        short = SHORT_NAMES.get(type_url, type_url)
        expected = _expected(snap, st)
        types[short] = {
            "state": _state(st, expected),
            "acked": st.acked_version,
            "expected": expected,
            "message": _nack_message(st, patched_by.get(type_url, ())),
        }
    meta = entry.metadata or {}
    nacks = [f"{t}: {s['message']}" for t, s in types.items() if s["state"] == "NACKED"]
    return {
        "id": entry.id,
        "service": meta.get("service", ""),
        "namespace": meta.get("namespace", ""),
        "kind": meta.get("kind", "sidecar"),
        "outbound_port": meta.get("outbound_port"),
        "gateway_ports": {
            str(port): listen
            for port, listen in parse_gateway_ports(meta.get(META_GATEWAY_PORTS)).items()
        },
        "revision": snap.revision,
        "connected_at": entry.connected_at,
        "synced": entry.stream.synced(snap),
        "nacked": bool(nacks),
        "message": "; ".join(nacks),
        "types": types,
        "translation_errors": (
            errors.for_node(entry.id, str(meta.get("namespace") or "default")) if errors else []
        ),
    }


def proxy_statuses(cache: SnapshotCache, pusher: PushState | None = None) -> list[dict[str, Any]]:
    """Every connected proxy's :func:`node_status`."""
    errors = pusher.errors if pusher is not None else None
    return [node_status(e, errors) for _, e in sorted(cache.nodes.items())]


def _nacked(entry: NodeEntry) -> bool:
    """``node_status(entry)["nacked"]``, without building the rest of the status."""
    snap = entry.snapshot
    return any(
        st.rejected and _state(st, _expected(snap, st)) == "NACKED"
        for st in entry.stream.status().values()
    )


def _node_settled(entry: NodeEntry, revision: int) -> bool:
    if entry.snapshot.revision < revision:
        return False
    return bool(entry.stream.synced(entry.snapshot)) or _nacked(entry)


class _Cursor:
    """Where a wait's last check stopped: the proxy most likely still unsettled."""

    __slots__ = ("node_id",)

    def __init__(self) -> None:
        self.node_id: str | None = None


def _settled(
    cache: SnapshotCache, pusher: PushState, revision: int, cursor: _Cursor | None = None
) -> bool:
    """Whether every connected proxy ACKed (or NACKed) config at ``revision`` or later.

    With a ``cursor`` the check resumes at the proxy that was unsettled last time (and goes
    round from there), so the checks of one wait, one per ACK, do not each start over at
    proxies already known to be settled.
    """
    if pusher.processed < revision:
        return False
    ids = list(cache.nodes)
    start = 0
    if cursor is not None and cursor.node_id in cache.nodes:
        start = ids.index(cursor.node_id)
    for node_id in ids[start:] + ids[:start]:
        if not _node_settled(cache.nodes[node_id], revision):
            if cursor is not None:
                cursor.node_id = node_id
            return False
    return True


async def wait_for_acks(cache: SnapshotCache, pusher: PushState, revision: int) -> dict[str, Any]:
    """Return once every connected proxy has ACKed (or NACKed) config at ``revision`` or later."""
    cursor = _Cursor()
    async with cache.changed:
        await cache.changed.wait_for(lambda: _settled(cache, pusher, revision, cursor))
    return {"complete": True, "proxies": proxy_statuses(cache, pusher)}
