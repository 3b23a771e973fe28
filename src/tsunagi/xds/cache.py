"""Which snapshot each connected node should have, and who is waiting on whom.

This is the seam between "what each node gets" (the control plane computes snapshots) and
"how it is streamed" (the gRPC server). It holds one latest snapshot per node: setting a new
one replaces any that was not yet sent, so a node never has more than one pending push.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from tsunagi.xds.protocol import TypeStatus
from tsunagi.xds.resources import Snapshot

Resolver = Callable[[str, Any, bool, bool], Snapshot]
"""Makes the snapshot for a newly connected node from its id, its metadata, and what its
client certificate proved (:attr:`NodeEntry.verified`, :attr:`NodeEntry.proven`)."""


class ProxyStream(Protocol):
    """What the cache and the proxy status pages use of a connected stream.

    Both :class:`~tsunagi.xds.protocol.SotwStream` and
    :class:`~tsunagi.xds.protocol.DeltaStream` are one; the cache sees nothing else of them.
    """

    def set_snapshot(self, snapshot: Snapshot) -> None:
        """Make ``snapshot`` the node's desired config (latest wins)."""
        ...

    def status(self) -> Mapping[str, TypeStatus]:
        """Per-type protocol state, keyed by type URL."""
        ...

    def acked_versions(self, type_url: str) -> dict[str, str]:
        """Name → version of each resource of a type as the proxy last ACKed it."""
        ...

    def synced(self, snapshot: Snapshot | None = None) -> bool:
        """Whether the proxy has ACKed exactly ``snapshot`` (default: the current one)."""
        ...


@dataclass
class NodeEntry:
    """One connected proxy: its identity, desired snapshot and stream status."""

    id: str
    metadata: Any
    snapshot: Snapshot
    stream: ProxyStream
    connected_at: float = field(default_factory=time.time)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    nacks: list[tuple[str, str]] = field(default_factory=list)
    verified: bool = False
    """Whether its client certificate proved its claims and carries the CA's gateway mark,
    so it may hold its Gateways' keys (set by the server, never by the node;
    :mod:`.peer_identity`)."""
    identity: str | None = None
    """The SPIFFE ID its client certificate proved; None on a plaintext port (tests). A
    stream of another identity may not take this node id over (:func:`.peer_identity.takeover`)."""

    @property
    def proven(self) -> bool:
        """Whether its client certificate proved its namespace (and service account, when
        claimed): enough for its own namespace's Secrets that a selecting DestinationRule
        names (:attr:`tsunagi.mesh.Node.proven`)."""
        return self.identity is not None


class SnapshotCache:
    """Latest-wins snapshots per node, plus a condition that fires on every ACK or NACK."""

    def __init__(self) -> None:
        self.nodes: dict[str, NodeEntry] = {}
        self.resolver: Resolver | None = None
        self.changed = asyncio.Condition()

    def connect(
        self,
        node_id: str,
        metadata: Any,
        stream: ProxyStream,
        verified: bool = False,
        identity: str | None = None,
    ) -> NodeEntry:
        """Register a newly connected node and give its stream the resolver's snapshot; it
        replaces an entry of the same id (a reconnecting Envoy)."""
        if self.resolver is None:
            raise RuntimeError("no resolver: the control plane has not started pushing yet")
        # proven: its certificate proved its namespace (identity is None on a plaintext port)
        snapshot = self.resolver(node_id, metadata, verified, identity is not None)
        entry = NodeEntry(node_id, metadata, snapshot, stream, verified=verified, identity=identity)
        stream.set_snapshot(entry.snapshot)
        self.nodes[node_id] = entry
        return entry

    def disconnect(self, entry: NodeEntry) -> None:
        """Forget ``entry`` (its stream ended)."""
        # A reconnecting Envoy may already have replaced this entry; leave the new one.
        if self.nodes.get(entry.id) is entry:
            del self.nodes[entry.id]

    def set_snapshot(self, node_id: str, snapshot: Snapshot) -> None:
        """Make ``snapshot`` the node's desired config and wake its stream's writer."""
        entry = self.nodes.get(node_id)
        if entry is None:
            return
        entry.snapshot = snapshot
        entry.stream.set_snapshot(snapshot)
        entry.wake.set()

    async def notify(self) -> None:
        """Wake everyone waiting on :attr:`changed` (an ACK, NACK or disconnect happened)."""
        async with self.changed:
            self.changed.notify_all()
