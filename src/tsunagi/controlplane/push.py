"""The push path: store changes → debounced World → per-node snapshots → streams.

Bursts coalesce: after the first change we wait for a short quiet period (bounded by a
maximum delay) and then build once. Work that only depends on the World or a namespace is
done once per push, not once per node; the heavy part runs in a worker thread so the event
loop keeps serving xDS and the API while it runs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from tsunagi.controlplane.world_builder import WorldBuilder
from tsunagi.mesh import Node, World
from tsunagi.store import Store
from tsunagi.xds.cache import SnapshotCache
from tsunagi.xds.resources import Snapshot
from tsunagi.xds.translate import (
    Local,
    Memo,
    Outbound,
    Shared,
    assemble,
    translate_local,
    translate_outbound,
    translate_shared,
)

log = logging.getLogger("tsunagi.push")


class Pusher:
    """Keeps every connected node's snapshot in step with the store."""

    def __init__(
        self, store: Store, cache: SnapshotCache, quiet: float = 0.005, max_delay: float = 0.05
    ) -> None:
        self.store = store
        self.cache = cache
        self.quiet = quiet
        self.max_delay = max_delay
        self.builder = WorldBuilder()
        self.world = self.builder.build(store.contents())
        self.processed = self.world.revision
        self.memo = Memo()
        self._shared = translate_shared(self.world, self.memo)
        self._outbound: dict[str, Outbound] = {}
        self._locals: dict[str, tuple[Node, Local]] = {}
        cache.resolver = self.resolve

    def _outbound_for(self, namespace: str) -> Outbound:
        out = self._outbound.get(namespace)
        if out is None:
            out = translate_outbound(self.world, namespace, self.memo, self._shared)
            self._outbound[namespace] = out
        return out

    def _local_for(self, node: Node) -> Local:
        cached = self._locals.get(node.id)
        if cached is None or cached[0] != node:
            cached = (node, translate_local(node))
            self._locals[node.id] = cached
        return cached[1]

    def resolve(self, node_id: str, metadata: Any) -> Snapshot:
        """The snapshot for a node that just connected (its metadata comes from bootstrap)."""
        node = Node.from_metadata(node_id, metadata or {})
        return assemble(
            self._outbound_for(node.namespace), self._local_for(node), self.world.revision
        )

    async def run(self) -> None:
        """Push forever; cancel to stop."""
        while True:
            await self.store.wait_for_change(self.processed)
            await self._settle()
            contents = self.store.contents()
            started = time.perf_counter()
            nodes = {
                e.id: Node.from_metadata(e.id, e.metadata or {}) for e in self.cache.nodes.values()
            }
            try:
                world, shared, outbound, snapshots = await asyncio.to_thread(
                    self._compute, contents, nodes
                )
            except Exception:
                # A bug must not stop every later push: log it, keep the last good config,
                # and try again on the next change.
                log.exception(
                    "revision %d: translation failed; proxies keep their config", contents.revision
                )
                self.processed = contents.revision
                continue
            # Publish World and shared parts together, on the loop, so a node connecting
            # now gets a snapshot that is consistent with its revision.
            self.world, self._shared, self._outbound = world, shared, outbound
            for gone in self._locals.keys() - self.cache.nodes.keys():
                del self._locals[gone]
            for node_id, snap in snapshots.items():
                self.cache.set_snapshot(node_id, snap)
            for node_id, entry in list(self.cache.nodes.items()):
                if node_id not in snapshots:  # connected while we computed: catch it up
                    self.cache.set_snapshot(node_id, self.resolve(node_id, entry.metadata))
            self.processed = world.revision
            await self.cache.notify()
            log.info(
                "revision %d: pushed to %d proxies in %.1f ms",
                world.revision,
                len(snapshots),
                (time.perf_counter() - started) * 1000,
            )

    async def _settle(self) -> None:
        """Wait until changes stop arriving for ``quiet`` seconds, at most ``max_delay``."""
        deadline = time.monotonic() + self.max_delay
        seen = self.store.contents().revision
        while (left := deadline - time.monotonic()) > 0:
            try:
                seen = await asyncio.wait_for(
                    self.store.wait_for_change(seen), timeout=min(self.quiet, left)
                )
            except TimeoutError:
                return

    def _compute(
        self, contents: Any, nodes: dict[str, Node]
    ) -> tuple[World, Shared, dict[str, Outbound], dict[str, Snapshot]]:
        world = self.builder.build(contents)
        shared = translate_shared(world, self.memo)
        outbound = {
            ns: translate_outbound(world, ns, self.memo, shared)
            for ns in {n.namespace for n in nodes.values()}
        }
        snapshots = {
            node_id: assemble(outbound[node.namespace], self._local_for(node), world.revision)
            for node_id, node in nodes.items()
        }
        self.memo.rotate()
        return world, shared, outbound, snapshots
