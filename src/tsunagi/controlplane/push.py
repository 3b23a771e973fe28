"""The push path: store changes → debounced World → per-node snapshots → streams.

Bursts coalesce: after the first change we wait for a short quiet period (bounded by a
maximum delay) and then build once. Work that only depends on the World or a namespace is
done once per push, not once per node; the heavy part runs in a worker thread so the event
loop keeps serving xDS and the API while it runs.

Ownership, so that no state is shared between threads by accident:

- the worker thread (:meth:`Pusher._compute`) alone uses ``_memo`` and ``_builder``; pushes
  run one at a time, so it never runs twice at once. It reads only its arguments and returns
  everything it made. The one thing it shares is the memo's ``last_good`` store (each piece's
  last successful output), which locks;
- the event loop alone reads and writes the published state (``world``, ``_shared``,
  ``_outbound``, ``_locals``, ``errors``); it swaps in what the worker returned in one step.

A node that connects between pushes is resolved on the loop from the published parts (its
namespace's routes with a memo of its own, if no node of that namespace was connected yet).

Failures stay contained: translation isolates each service, each VirtualService per host and
each node's own part (see :mod:`tsunagi.xds.translate.isolation`), and a stored document that
no longer parses keeps its last parsed revision. What failed is kept in :attr:`Pusher.errors`
for ``tsunagi get`` and ``tsunagi proxy-status``; every other proxy still gets its config.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

from tsunagi.controlplane.heap import GcFreezer
from tsunagi.controlplane.world_builder import WorldBuilder
from tsunagi.mesh import ClientScope, Node, World
from tsunagi.mesh.outbound_policy import ALLOW_ANY, Mode
from tsunagi.mesh.security import MeshSecurity, WorkloadSecurity
from tsunagi.mesh.telemetry import MeshTelemetry, ProxyTelemetry
from tsunagi.store import Contents, Key, Store
from tsunagi.xds.cache import SnapshotCache
from tsunagi.xds.resources import Snapshot
from tsunagi.xds.translate import (
    Local,
    Memo,
    Outbound,
    Patched,
    Shared,
    TranslationError,
    assemble_patched,
    translate_local,
    translate_outbound,
    translate_shared,
)
from tsunagi.xds.translate.isolation import isolated

log = logging.getLogger("tsunagi.push")

_NO_LOCAL = Local(clusters={}, listeners={})


@dataclass(frozen=True)
class Debounce:
    """How long a push waits for a burst of changes to end (as Istio's PILOT_DEBOUNCE_AFTER
    and PILOT_DEBOUNCE_MAX, with defaults sized for a local mesh)."""

    quiet: float = 0.005
    """Push once no change arrived for this many seconds..."""
    max_delay: float = 0.05
    """...or once the first change is this old, whichever comes first."""


class PushHooks(Protocol):
    """What the push path reports as it goes (the control plane's metrics listen). Called on
    the event loop; each returns at once."""

    def debounced(self, changed_at: float) -> None:
        """A burst of changes that began at ``changed_at`` (``time.monotonic()``) settled."""
        ...

    def pushed(self, changed_at: float, node_ids: Iterable[str]) -> None:
        """New snapshots for ``node_ids`` were handed to their streams."""
        ...


class _NoHooks:
    def debounced(self, changed_at: float) -> None:
        pass

    def pushed(self, changed_at: float, node_ids: Iterable[str]) -> None:
        pass


@dataclass(frozen=True)
class PushErrors:
    """What the last push could not translate, by where it shows."""

    by_resource: Mapping[Key, tuple[str, ...]] = field(default_factory=dict)
    """Applied resource → what failed in it (``tsunagi get KIND NAME`` shows these)."""
    shared: tuple[str, ...] = ()
    """Failures that affect every proxy (a service's clusters, the World itself)."""
    by_namespace: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Failures in one client namespace's routes."""
    by_node: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Failures in one proxy's own listeners and clusters, and its EnvoyFilters' patches."""
    envoy_filters: Mapping[str, Mapping[str, tuple[str, ...]]] = field(default_factory=dict)
    """Proxy → xDS type URL → the EnvoyFilters that changed its resources of that type (so
    a NACK can name them)."""

    def lines(self) -> set[str]:
        """Every failure, once (to log only what is new since the last push)."""
        return {
            *self.shared,
            *(line for ls in self.by_namespace.values() for line in ls),
            *(line for ls in self.by_node.values() for line in ls),
        }

    def for_node(self, node_id: str, namespace: str) -> list[str]:
        """Every failure that leaves something out of this proxy's config."""
        return [
            *self.shared,
            *self.by_namespace.get(namespace, ()),
            *self.by_node.get(node_id, ()),
        ]


@dataclass(frozen=True)
class _Computed:
    """Everything one push made, handed from the worker to the loop."""

    world: World
    shared: Shared
    outbound: dict[ClientScope, Outbound]
    locals: dict[str, _NodeLocal]
    parse_errors: dict[Key, str]
    snapshots: dict[str, Snapshot]
    patched: dict[str, Patched] = field(default_factory=dict)


@dataclass(frozen=True)
class _NodeLocal:
    """A node's own part, remembered until the node's metadata changes."""

    node: Node
    local: Local
    error: TranslationError | None = None
    telemetry: ProxyTelemetry = field(default_factory=ProxyTelemetry)
    security: WorkloadSecurity = field(default_factory=WorkloadSecurity)

    def fits(self, node: Node, telemetry: ProxyTelemetry, security: WorkloadSecurity) -> bool:
        """Whether this is still the node's local part."""
        return self.node == node and self.telemetry == telemetry and self.security == security

    @classmethod
    def of(
        cls, node: Node, telemetry: ProxyTelemetry, security: WorkloadSecurity, memo: Memo
    ) -> _NodeLocal:
        """Translate the node's own part, isolated like every other piece: one odd node must
        not stop the others' push (it gets no listeners, and the error is reported)."""
        errors: list[TranslationError] = []
        local = isolated(
            errors,
            None,
            node.id,
            node.id,
            tuple,
            partial("listeners and inbound clusters of proxy {}".format, node.id),
            partial(translate_local, node, telemetry, security, memo),
            _NO_LOCAL,
        )
        return cls(node, local, errors[0] if errors else None, telemetry, security)

    @classmethod
    def reuse(cls, cached: _NodeLocal | None, world: World, node: Node, memo: Memo) -> _NodeLocal:
        """``cached`` while it still fits ``node`` in ``world``, else a fresh translation."""
        telemetry = world.telemetry_for(node)
        security = world.security_for(node)
        if cached is not None and cached.fits(node, telemetry, security):
            return cached
        return cls.of(node, telemetry, security, memo)


def _scope_order(item: tuple[ClientScope, Outbound]) -> tuple[Any, ...]:
    """A scope's place in error reports. Not the scopes' own order: two replicas of a
    gateway differ only in ``reporting``, which has none (comparing them raised, and the
    push loop died)."""
    s = item[0]
    proxy = s.reporting.proxy if s.reporting is not None else ""
    return (s.namespace, s.labels, s.locality, s.gateway, s.gateway_ports, proxy, s.verified)


def _collect(
    parse_errors: Mapping[Key, str],
    shared: Shared,
    outbound: Mapping[ClientScope, Outbound],
    locals_: Mapping[str, _NodeLocal],
    patched: Mapping[str, Patched] | None = None,
) -> PushErrors:
    by_resource: dict[Key, list[str]] = {}
    for key, message in parse_errors.items():
        by_resource.setdefault(key, []).append(message)

    def blame(errors: Iterable[TranslationError]) -> tuple[str, ...]:
        lines = []
        for e in errors:
            lines.append(e.describe())
            for key in e.resources:
                by_resource.setdefault(key, []).append(e.describe())
        return tuple(lines)

    shared_lines = blame(shared.errors)
    parse_lines = tuple(f"{k[0]} {k[1]}/{k[2]}: {m}" for k, m in sorted(parse_errors.items()))
    namespaces: dict[str, tuple[str, ...]] = {}
    for scope, out in sorted(outbound.items(), key=_scope_order):
        lines = namespaces.get(scope.namespace, ()) + blame(out.errors)
        namespaces[scope.namespace] = tuple(dict.fromkeys(lines))
    by_node: dict[str, tuple[str, ...]] = {
        n: (nl.error.describe(),) for n, nl in locals_.items() if nl.error
    }
    for node_id, p in sorted((patched or {}).items()):
        if p.errors:
            by_node[node_id] = by_node.get(node_id, ()) + blame(p.errors)
    return PushErrors(
        by_resource={k: tuple(dict.fromkeys(v)) for k, v in by_resource.items()},
        shared=parse_lines + shared_lines,
        by_namespace={ns: lines for ns, lines in namespaces.items() if lines},
        by_node=by_node,
        envoy_filters={n: p.touched for n, p in (patched or {}).items() if p.touched},
    )


class Pusher:
    """Keeps every connected node's snapshot in step with the store."""

    def __init__(
        self,
        store: Store,
        cache: SnapshotCache,
        debounce: Debounce | None = None,
        mesh_telemetry: MeshTelemetry | None = None,
        outbound_policy: Mode = ALLOW_ANY,
        mesh_security: MeshSecurity | None = None,
    ) -> None:
        self.store = store
        self.cache = cache
        self.debounce = debounce or Debounce()
        self._builder = WorldBuilder(mesh_telemetry, outbound_policy, mesh_security)
        self._memo = Memo()
        self.world = self._builder.build(store.contents())
        self.processed = self.world.revision
        self._shared = translate_shared(self.world, self._memo)
        # A restart: every stored workload's proxy reconnects at once, and the xDS port
        # opens only after this, so their routes are ready rather than built on the event
        # loop by the first proxy of each namespace.
        self._outbound: dict[ClientScope, Outbound] = {
            scope: translate_outbound(self.world, scope, self._memo, self._shared)
            for scope in self.world.registered_scopes
        }
        self._locals: dict[str, _NodeLocal] = {}
        self._patched: dict[str, Patched] = {}
        """Each node's EnvoyFilter outcome (failures, which filters changed what)."""
        self._resolve_memo = Memo(self._memo.last_good)
        """EnvoyFilter results for nodes resolved on the loop, shared until the next World
        (so proxies connecting in a burst are patched once, not once each)."""
        self._made: dict[Hashable, Any] = {}
        """Translations made on the loop since the last push, for the worker's memo."""
        self.errors = _collect(self._builder.errors, self._shared, {}, {})
        self.hooks: PushHooks = _NoHooks()
        """Told of every push (set by whoever wants to know, e.g. the metrics)."""
        cache.resolver = self.resolve
        self._wanted = asyncio.Event()
        """Set by :meth:`use_jwks`: push even though the store did not change."""
        self._gc = GcFreezer()
        """Keeps what a push published out of full collections (see :mod:`.heap`)."""

    def _outbound_for(self, scope: ClientScope) -> Outbound:
        out = self._outbound.get(scope)
        if out is None:
            # A memo of its own (the worker's may be in use by a push right now), sharing
            # the last good output of each piece, which locks.
            memo = Memo(self._memo.last_good)
            out = translate_outbound(self.world, scope, memo, self._shared)
            # The next push adopts these routes if the routing did not change meanwhile.
            self._made.update(memo.made())
            self._outbound[scope] = out
        return out

    def resolve(
        self, node_id: str, metadata: Any, verified: bool = False, proven: bool = False
    ) -> Snapshot:
        """The snapshot for a node that just connected (its metadata comes from bootstrap;
        ``verified``: its certificate proved its claims and carries the gateway mark;
        ``proven``: it proved its namespace, see :mod:`tsunagi.xds.peer_identity`)."""
        node = Node.from_metadata(node_id, metadata or {}, verified, proven)
        cached = self._locals[node_id] = _NodeLocal.reuse(
            self._locals.get(node_id), self.world, node, self._resolve_memo
        )
        outbound = self._outbound_for(self.world.scope_of(node))
        snapshot, self._patched[node_id] = assemble_patched(
            self.world, node, outbound, cached.local, self.world.revision, self._resolve_memo
        )
        return snapshot

    async def run(self) -> None:
        """Push forever; cancel to stop."""
        while True:
            await self._next_change()
            changed = time.monotonic()
            await self._settle()
            self.hooks.debounced(changed)
            contents = self.store.contents()
            started = time.perf_counter()
            nodes = {
                e.id: Node.from_metadata(e.id, e.metadata or {}, e.verified, e.proven)
                for e in self.cache.nodes.values()
            }
            try:
                made, self._made = self._made, {}
                done = await asyncio.to_thread(
                    self._compute,
                    contents,
                    nodes,
                    dict(self._locals),
                    made,
                    partial(self._moved_past, contents.revision),
                )
            except Exception as e:
                # Translation isolates each piece, so this is a bug outside of them (building
                # the World): keep the last good config, say so, and try again on the next change.
                log.exception(
                    "revision %d: push failed; proxies keep their config", contents.revision
                )
                self.errors = PushErrors(
                    by_resource=self.errors.by_resource,
                    shared=(f"revision {contents.revision} was not pushed: {e!r}",),
                )
                self.processed = contents.revision
                continue
            self._publish(done)
            self._gc.published()
            for node_id, entry in list(self.cache.nodes.items()):
                if node_id not in done.snapshots:  # connected while we computed: catch it up
                    self.cache.set_snapshot(
                        node_id,
                        self.resolve(node_id, entry.metadata, entry.verified, entry.proven),
                    )
            self.processed = done.world.revision
            self.hooks.pushed(changed, done.snapshots.keys())
            await self.cache.notify()
            log.info(
                "revision %d: pushed to %d proxies in %.1f ms",
                done.world.revision,
                len(done.snapshots),
                (time.perf_counter() - started) * 1000,
            )

    def use_jwks(self, documents: Mapping[str, str]) -> None:
        """Key sets fetched for RequestAuthentications (:mod:`tsunagi.controlplane.jwks`):
        the next World has them, and that push starts now."""
        self._builder.jwks = documents
        self._wanted.set()

    async def _next_change(self) -> None:
        """Until the store moves past what was pushed, or a push is wanted without it."""
        change = asyncio.ensure_future(self.store.wait_for_change(self.processed))
        wanted = asyncio.ensure_future(self._wanted.wait())
        try:
            await asyncio.wait((change, wanted), return_when=asyncio.FIRST_COMPLETED)
        finally:
            change.cancel()
            wanted.cancel()
        self._wanted.clear()

    def _moved_past(self, revision: int) -> bool:
        """Whether the store changed after ``revision`` (read from the worker: one
        attribute of an immutable snapshot)."""
        return self.store.contents().revision != revision

    def _publish(self, done: _Computed) -> None:
        """Swap in what a push computed (on the loop, so a node connecting now gets a
        snapshot consistent with its revision)."""
        self.world, self._shared, self._outbound = done.world, done.shared, done.outbound
        self._resolve_memo = Memo(self._memo.last_good)
        self._locals.update(done.locals)
        self._patched.update(done.patched)
        for gone in self._locals.keys() - self.cache.nodes.keys():
            del self._locals[gone]
        for gone in self._patched.keys() - self.cache.nodes.keys():
            del self._patched[gone]
        errors = _collect(
            done.parse_errors, done.shared, done.outbound, self._locals, self._patched
        )
        for line in errors.lines() - self.errors.lines():
            log.error("revision %d: not translated: %s", done.world.revision, line)
        self.errors = errors
        for node_id, snap in done.snapshots.items():
            self.cache.set_snapshot(node_id, snap)

    async def _settle(self) -> None:
        """Wait until changes stop arriving for ``quiet`` seconds, at most ``max_delay``."""
        deadline = time.monotonic() + self.debounce.max_delay
        seen = self.store.contents().revision
        while (left := deadline - time.monotonic()) > 0:
            try:
                seen = await asyncio.wait_for(
                    self.store.wait_for_change(seen), timeout=min(self.debounce.quiet, left)
                )
            except TimeoutError:
                return

    def _compute(
        self,
        contents: Contents,
        nodes: dict[str, Node],
        known: Mapping[str, _NodeLocal],
        made: Mapping[Hashable, Any],
        moved: Callable[[], bool],
    ) -> _Computed:
        """The worker's part: reads its arguments, the memo and the builder; returns all it
        made. ``moved``: whether the store changed since ``contents`` (another push follows)."""
        self._memo.adopt(made)
        world = self._builder.build(contents)
        shared = translate_shared(world, self._memo)
        scopes = {node_id: world.scope_of(node) for node_id, node in nodes.items()}
        outbound = {
            scope: translate_outbound(world, scope, self._memo, shared)
            for scope in set(scopes.values())
        }
        if not moved():
            # The last push of a burst (or a lone one): also the scopes of registered
            # workloads without a connected proxy, ready for when they connect (a mesh
            # populated before its proxies start). While changes keep coming, every push
            # would redo them: left to the last one.
            for scope in world.registered_scopes - outbound.keys():
                outbound[scope] = translate_outbound(world, scope, self._memo, shared)
        locals_ = {
            node_id: _NodeLocal.reuse(known.get(node_id), world, node, self._memo)
            for node_id, node in nodes.items()
        }
        snapshots: dict[str, Snapshot] = {}
        patched: dict[str, Patched] = {}
        for node_id, node in nodes.items():
            out, local = outbound[scopes[node_id]], locals_[node_id].local
            snapshots[node_id], patched[node_id] = assemble_patched(
                world, node, out, local, world.revision, self._memo
            )
        self._memo.rotate()
        return _Computed(
            world,
            shared,
            outbound,
            locals_,
            dict(self._builder.errors),
            snapshots,
            patched,
        )
