"""Sans-I/O state machines for one ADS stream, state-of-the-world and delta (incremental).

A stream object knows nothing about sockets, tasks or time. The gRPC adapter feeds it every
request Envoy sends (:meth:`SotwStream.receive` / :meth:`DeltaStream.receive`), tells it the
node's newest desired config (``set_snapshot``), and after either drains
``next_response()`` until it returns ``None``, writing each response in order.

What the machine guarantees, for both variants:

* Nothing of a type is sent before Envoy asked for that type, nor before a snapshot is set.
* At most one un-answered response per type; a NACK is recorded and never blindly retried:
  the type is sent again only when what the client should have changes.
* Make before break: types go out in :data:`PUSH_ORDER`; no type is sent while an earlier one
  awaits its ACK/NACK, except that while CDS (LDS) awaits its answer EDS (RDS) may still go:
  Envoy ACKs clusters (listeners) only once they warmed, which needs the endpoints (routes)
  it asks for meanwhile. Nothing later goes: LDS/RDS wait until CDS is ACKed and Envoy's EDS
  subscription covers every EDS cluster of that CDS (Envoy asks for those endpoints only
  after applying CDS).
* Removals last: a resource that vanishes from the snapshot stays, at the content the client
  last got, until every type is ACKed (none NACKed) and every dependent subscription caught
  up; only then do the removals go out, one type at a time, listeners first (LDS, RDS, CDS,
  EDS), so nothing is removed while something Envoy runs may still use it.
* Latest wins: responses are computed when they are taken, from the newest snapshot.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2

from tsunagi.xds.dependencies import DEPENDENT_TYPE, DependencyCache
from tsunagi.xds.resources import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    PUSH_ORDER,
    ROUTE,
    WILDCARD_TYPES,
    Resource,
    Snapshot,
    type_version,
)

# The pseudo resource name Envoy uses for a wildcard subscription; events use it too.
WILDCARD = "*"

# Removals, once everything else is in place, go listeners first: a listener that goes away
# stops taking traffic before the routes and clusters it may still use go too, and each
# parent goes before its dependents, which Envoy then simply unsubscribes from.
_BREAK_ORDER = (LISTENER, ROUTE, CLUSTER, ENDPOINT)

# Dependent type -> the type whose resources reference its names (EDS <- CDS, RDS <- LDS).
_PARENT_TYPE = {child: parent for parent, child in DEPENDENT_TYPE.items()}


# --------------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class NodeIdentified:
    """The first request carrying a node arrived; the full proto is ``stream.node``."""

    node_id: str
    cluster: str


@dataclass(frozen=True, slots=True)
class Ack:
    """Envoy accepted the response ``nonce``, which carried ``version``."""

    type_url: str
    version: str
    nonce: str


@dataclass(frozen=True, slots=True)
class Nack:
    """Envoy rejected the response ``nonce`` (which carried ``version``) saying ``message``."""

    type_url: str
    version: str
    nonce: str
    message: str


@dataclass(frozen=True, slots=True)
class Subscribed:
    """Envoy added ``names`` to its subscription (``"*"`` is the wildcard)."""

    type_url: str
    names: frozenset[str]


@dataclass(frozen=True, slots=True)
class Unsubscribed:
    """Envoy dropped ``names`` from its subscription (``"*"`` is the wildcard)."""

    type_url: str
    names: frozenset[str]


@dataclass(frozen=True, slots=True)
class StaleNonce:
    """A request answered a response that is not the latest of its type; it was ignored
    (delta: its subscription changes were still applied, since they are not repeated)."""

    type_url: str
    nonce: str


Event = NodeIdentified | Ack | Nack | Subscribed | Unsubscribed | StaleNonce


@dataclass(frozen=True, slots=True)
class TypeStatus:
    """What one type looks like on this stream, for proxy status pages."""

    type_url: str
    subscribed: bool
    wildcard: bool
    names: frozenset[str]
    sent_version: str | None
    sent_nonce: str | None
    awaiting_ack: bool
    acked_version: str | None
    rejected: bool
    """The last answered response was NACKed (and nothing newer was ACKed since)."""
    last_nack_version: str | None
    last_nack_message: str | None


# ---------------------------------------------------------------------------- internals


class _TypeState:
    """Mutable per-type bookkeeping; never leaves this module."""

    __slots__ = (
        "acked",
        "acked_version",
        "force",
        "known",
        "last_nack_message",
        "last_nack_version",
        "names",
        "nonce",
        "outstanding",
        "rejected",
        "sent_version",
        "subscribed",
        "unresolved",
        "wildcard",
    )

    def __init__(self) -> None:
        self.subscribed = False
        self.wildcard = False
        self.names: set[str] = set()
        # What the client holds as far as we know: the content we last sent for each name.
        self.known: dict[str, Resource] = {}
        # ``known`` as of the last ACK: what the dependency checks trust.
        self.acked: dict[str, Resource] = {}
        self.nonce: str | None = None
        self.outstanding = False
        self.sent_version: str | None = None
        self.acked_version: str | None = None
        self.rejected = False
        self.last_nack_version: str | None = None
        self.last_nack_message: str | None = None
        # A request that must be answered even if nothing changed (fresh subscription).
        self.force = False
        # Delta: names Envoy subscribed to that still need an answer (resource or removal).
        self.unresolved: set[str] = set()

    def subscription(self) -> frozenset[str]:
        return frozenset(self.names | {WILDCARD}) if self.wildcard else frozenset(self.names)

    def wants(self, name: str) -> bool:
        return self.wildcard or name in self.names


def _same_versions(a: Mapping[str, Resource], b: Mapping[str, Resource]) -> bool:
    """Whether ``a`` and ``b`` hold the same names at the same versions.

    Runs for every type on every ``next_response``/``pending`` call over every resource of
    the type (thousands per proxy), so it stops at the first difference and skips the
    version comparison when both hold the very same resource object.
    """
    if len(a) != len(b):
        return False
    for name, res in a.items():
        other = b.get(name)
        if other is None or (other is not res and other.version != res.version):
            return False
    return True


def _subscription_events(
    type_url: str, before: frozenset[str], after: frozenset[str], first: bool
) -> list[Event]:
    events: list[Event] = []
    added, removed = after - before, before - after
    # The first request always reports, even with no names, so the adapter sees the type.
    if added or first:
        events.append(Subscribed(type_url, added))
    if removed:
        events.append(Unsubscribed(type_url, removed))
    return events


class _Stream:
    """What both protocol variants share: snapshot, ordering, ACK bookkeeping, status."""

    def __init__(self, nonce_prefix: str = "", deps: DependencyCache | None = None) -> None:
        self._nonce_prefix = nonce_prefix
        self._nonce_counter = 0
        self._deps = deps if deps is not None else DependencyCache()
        self._types: dict[str, _TypeState] = {}
        self._snapshot: Snapshot | None = None
        self._node: base_pb2.Node | None = None

    # --- public, shared

    @property
    def node(self) -> base_pb2.Node | None:
        """The first non-empty ``node`` Envoy sent on this stream (``None`` until then)."""
        return self._node

    @property
    def snapshot(self) -> Snapshot | None:
        """The newest snapshot given to :meth:`set_snapshot`."""
        return self._snapshot

    def set_snapshot(self, snapshot: Snapshot) -> None:
        """Make ``snapshot`` the node's desired config; only the newest one ever matters.

        Nothing is computed here: responses are derived when taken from ``next_response``,
        so many calls while responses are outstanding cost nothing and skip stale states.
        """
        self._snapshot = snapshot

    def pending(self) -> bool:
        """Whether ``next_response()`` would return a response right now."""
        return self._next_type() is not None

    def status(self) -> Mapping[str, TypeStatus]:
        """Per-type protocol state, keyed by type URL, for every type Envoy has requested."""
        return {
            t: TypeStatus(
                type_url=t,
                subscribed=st.subscribed,
                wildcard=st.wildcard,
                names=frozenset(st.names),
                sent_version=st.sent_version,
                sent_nonce=st.nonce,
                awaiting_ack=st.outstanding,
                acked_version=st.acked_version,
                rejected=st.rejected,
                last_nack_version=st.last_nack_version,
                last_nack_message=st.last_nack_message,
            )
            for t, st in self._types.items()
        }

    def synced(self, snapshot: Snapshot | None = None) -> bool:
        """Whether Envoy has ACKed exactly ``snapshot`` (default: the current one).

        True when every type Envoy subscribed to is ACKed at the snapshot's content for its
        subscription, every wildcard type with resources is subscribed, and Envoy's EDS/RDS
        subscriptions cover every name the snapshot's clusters/listeners reference.
        """
        snap = snapshot if snapshot is not None else self._snapshot
        if snap is None:
            return False
        for t in set(snap.resources) | set(self._types):
            st = self._types.get(t)
            if st is None or not st.subscribed:
                if t in WILDCARD_TYPES and snap.of(t):
                    return False
                continue
            if st.outstanding or st.rejected:
                return False
            expected = snap.version(t, None if st.wildcard else st.names)
            if type_version(st.acked.values()) != expected:
                return False
        for child, parent in _PARENT_TYPE.items():
            required = self._deps.required(parent, snap.of(parent).values())
            if not self._covers(child, required):
                return False
        return True

    # --- shared machinery

    def _state(self, type_url: str) -> _TypeState:
        st = self._types.get(type_url)
        if st is None:
            st = self._types[type_url] = _TypeState()
        return st

    def _see_node(self, node: base_pb2.Node, has_node: bool) -> list[Event]:
        if self._node is not None or not has_node or node.ByteSize() == 0:
            return []
        self._node = base_pb2.Node()
        self._node.CopyFrom(node)
        return [NodeIdentified(node_id=node.id, cluster=node.cluster)]

    def _fresh_nonce(self) -> str:
        self._nonce_counter += 1
        return f"{self._nonce_prefix}{self._nonce_counter}"

    def _answer(self, type_url: str, nonce: str, error: str | None) -> list[Event] | None:
        """Apply an ACK/NACK; ``None`` when ``nonce`` is stale (not our latest)."""
        st = self._types.get(type_url)
        if st is None or st.nonce is None or nonce != st.nonce:
            return None
        if not st.outstanding:
            # Envoy repeats its latest nonce on every later request of the type (e.g. to
            # change its subscription); the response was already answered once.
            return []
        st.outstanding = False
        version = st.sent_version or ""
        if error is not None:
            st.rejected = True
            st.last_nack_version = version
            st.last_nack_message = error
            return [Nack(type_url, version, nonce, error)]
        st.rejected = False
        st.acked = dict(st.known)
        st.acked_version = version
        return [Ack(type_url, version, nonce)]

    def _target(self, type_url: str, retain: bool) -> dict[str, Resource]:
        """What the client of ``type_url`` should hold now (``retain``: keep removed ones)."""
        assert self._snapshot is not None
        st = self._types[type_url]
        desired = self._snapshot.of(type_url)
        out = dict(desired) if st.wildcard else {n: desired[n] for n in st.names if n in desired}
        if retain:
            # Removals last: what the client holds but the snapshot dropped stays as it was.
            for name, res in st.known.items():
                if name not in out and st.wants(name):
                    out[name] = res
        return out

    def _wants_send(self, type_url: str, retain: bool) -> bool:
        st = self._types[type_url]
        if not st.subscribed:
            return False
        if st.force or st.unresolved:
            return True
        return not _same_versions(self._target(type_url, retain), st.known)

    def _covers(self, child: str, required: Iterable[str]) -> bool:
        required = frozenset(required)
        if not required:
            return True
        st = self._types.get(child)
        if st is None or not st.subscribed:
            return False
        return st.wildcard or required <= st.names

    def _dependency_caught_up(self, child: str) -> bool:
        """Envoy subscribed to every ``child`` name its ACKed parent resources reference."""
        parent = self._types.get(_PARENT_TYPE[child])
        if parent is None:
            return True
        return self._covers(child, self._deps.required(_PARENT_TYPE[child], parent.acked.values()))

    def _removals_allowed(self) -> bool:
        """Everything but pending removals is ACKed, so dropping resources breaks nothing."""
        for t, st in self._types.items():
            if not st.subscribed:
                continue
            if st.outstanding or st.rejected or self._wants_send(t, retain=True):
                return False
        return all(self._dependency_caught_up(child) for child in _PARENT_TYPE)

    def _next_type(self) -> tuple[str, bool] | None:
        """The type to send next and whether removed resources are still retained."""
        if self._snapshot is None:
            return None
        if self._removals_allowed():
            for t in (*_BREAK_ORDER, *sorted(set(self._types) - set(_BREAK_ORDER))):
                st = self._types.get(t)
                if st is not None and st.subscribed and self._wants_send(t, retain=False):
                    return t, False
            return None
        # Types outside PUSH_ORDER (e.g. SDS secrets, which warming clusters and listeners
        # wait for) neither wait for nor hold back the ordered ones.
        for t in sorted(set(self._types) - set(PUSH_ORDER)):
            if not self._types[t].outstanding and self._wants_send(t, retain=True):
                return t, True
        for t in PUSH_ORDER:
            st = self._types.get(t)
            if st is not None and st.subscribed:
                if st.outstanding:
                    # Envoy ACKs CDS (LDS) only once what it applied has warmed, which needs
                    # the endpoints (routes) it asks for meanwhile: those may go now, but
                    # nothing after them.
                    child = DEPENDENT_TYPE.get(t)
                    cst = self._types.get(child) if child is not None else None
                    if (
                        child is not None
                        and cst is not None
                        and not cst.outstanding
                        and self._wants_send(child, retain=True)
                    ):
                        return child, True
                    return None
                if self._wants_send(t, retain=True):
                    return t, True
            if t in _PARENT_TYPE and not self._dependency_caught_up(t):
                # Envoy has yet to ask for endpoints/routes of what it just applied.
                return None
        return None

    def _mark_sent(self, st: _TypeState, target: dict[str, Resource], version: str) -> str:
        nonce = self._fresh_nonce()
        st.known = target
        st.sent_version = version
        st.nonce = nonce
        st.outstanding = True
        st.force = False
        st.unresolved.clear()
        return nonce


# ------------------------------------------------------------------------ state of the world


class SotwStream(_Stream):
    """One state-of-the-world ADS stream (``StreamAggregatedResources``).

    ``nonce_prefix`` makes nonces unique across streams in logs; ``deps`` lets streams share
    one :class:`DependencyCache`.
    """

    def receive(self, request: discovery_pb2.DiscoveryRequest) -> list[Event]:
        """Feed one ``DiscoveryRequest``; returns what it meant, in order."""
        events = self._see_node(request.node, request.HasField("node"))
        t = request.type_url
        st = self._state(t)
        nonce = request.response_nonce
        if nonce:
            error = request.error_detail.message if request.HasField("error_detail") else None
            answered = self._answer(t, nonce, error)
            if answered is None:
                # Every SotW request repeats the full subscription, and Envoy answers our
                # latest response with one too, so dropping this loses nothing.
                events.append(StaleNonce(t, nonce))
                return events
            events += answered
        else:
            # A fresh subscription (first request or reconnect): always answered with the
            # current state, whatever version Envoy says it has. A response still in flight
            # is superseded; its late ACK will be stale.
            st.outstanding = False
            st.force = True
        events += self._update_subscription(t, st, request.resource_names)
        return events

    def _update_subscription(self, t: str, st: _TypeState, names: Iterable[str]) -> list[Event]:
        requested = set(names)
        wildcard = WILDCARD in requested or (not requested and t in WILDCARD_TYPES)
        requested.discard(WILDCARD)
        first = not st.subscribed
        before = st.subscription() if st.subscribed else frozenset()
        st.subscribed, st.wildcard, st.names = True, wildcard, requested
        after = st.subscription()
        if after != before:
            st.force = True
        return _subscription_events(t, before, after, first)

    def next_response(self) -> discovery_pb2.DiscoveryResponse | None:
        """The next response that may be sent now, or ``None``; it counts as sent."""
        nxt = self._next_type()
        if nxt is None:
            return None
        t, retain = nxt
        st = self._types[t]
        target = self._target(t, retain)
        version = type_version(target.values())
        nonce = self._mark_sent(st, target, version)
        return discovery_pb2.DiscoveryResponse(
            version_info=version,
            resources=[target[n].body for n in sorted(target)],
            type_url=t,
            nonce=nonce,
        )


# ------------------------------------------------------------------------------------ delta


class DeltaStream(_Stream):
    """One incremental ADS stream (``DeltaAggregatedResources``).

    Responses carry only resources whose version differs from what the client holds, plus
    ``removed_resources``; ``system_version_info`` is the version of the client's whole set
    of that type after applying the response.
    """

    def __init__(self, nonce_prefix: str = "", deps: DependencyCache | None = None) -> None:
        super().__init__(nonce_prefix, deps)
        # Some resource Envoy announced is known only by version (see ``set_snapshot``).
        self._placeholders = False

    def receive(self, request: discovery_pb2.DeltaDiscoveryRequest) -> list[Event]:
        """Feed one ``DeltaDiscoveryRequest``; returns what it meant, in order."""
        events = self._see_node(request.node, request.HasField("node"))
        t = request.type_url
        st = self._state(t)
        nonce = request.response_nonce
        if nonce:
            error = request.error_detail.message if request.HasField("error_detail") else None
            answered = self._answer(t, nonce, error)
            # Unlike SotW, subscription changes are never repeated, so even a stale
            # request's subscribe/unsubscribe lists must be applied.
            events += [StaleNonce(t, nonce)] if answered is None else answered
        subscribe = set(request.resource_names_subscribe)
        unsubscribe = set(request.resource_names_unsubscribe)
        if not st.subscribed:
            events += self._first_request(t, st, subscribe, request.initial_resource_versions)
        else:
            events += self._change_subscription(t, st, subscribe, unsubscribe)
        return events

    def _first_request(
        self, t: str, st: _TypeState, subscribe: set[str], initial: Mapping[str, str]
    ) -> list[Event]:
        st.subscribed = True
        st.wildcard = WILDCARD in subscribe or (not subscribe and t in WILDCARD_TYPES)
        st.names = subscribe - {WILDCARD}
        # After a reconnect Envoy says what it holds; trust it so that equal versions are
        # not re-sent and names that no longer exist are reported removed.
        st.known = {
            name: self._held(t, name, version)
            for name, version in initial.items()
            if st.wants(name)
        }
        st.acked = dict(st.known)
        st.acked_version = type_version(st.known.values()) if st.known else None
        self._placeholders |= any(not r.body.type_url for r in st.known.values())
        # Names Envoy asks for but lacks wait for an answer: the resource or its removal.
        st.unresolved = st.names - set(st.known)
        # A brand-new wildcard subscription is answered even if empty: Envoy's startup
        # waits for a first response of CDS/LDS.
        st.force = st.wildcard and not initial
        return _subscription_events(t, frozenset(), st.subscription(), first=True)

    def set_snapshot(self, snapshot: Snapshot) -> None:
        """Make ``snapshot`` the node's desired config; only the newest one ever matters."""
        super().set_snapshot(snapshot)
        if not self._placeholders:
            return
        # Envoy may announce what it holds before the first snapshot is known; once it is,
        # swap version-only placeholders for the real (identical) resources so that the
        # dependency checks can look inside them.
        self._placeholders = False
        for t, st in self._types.items():
            for held in (st.known, st.acked):
                for name, res in held.items():
                    if not res.body.type_url:
                        held[name] = self._held(t, name, res.version)
                        self._placeholders |= not held[name].body.type_url

    def _held(self, t: str, name: str, version: str) -> Resource:
        # Versions are content hashes, so a matching snapshot resource is exactly what Envoy
        # holds (and lets the dependency checks see into it); otherwise only the version is
        # known, which is all that diffing needs.
        current = self._snapshot.of(t).get(name) if self._snapshot is not None else None
        if current is not None and current.version == version:
            return current
        return Resource(name=name, body=any_pb2.Any(), version=version)

    def _change_subscription(
        self, t: str, st: _TypeState, subscribe: set[str], unsubscribe: set[str]
    ) -> list[Event]:
        before = st.subscription()
        if WILDCARD in subscribe:
            st.wildcard = True
        if WILDCARD in unsubscribe:
            st.wildcard = False
            # Envoy drops what it held only through the wildcard.
            st.known = {n: r for n, r in st.known.items() if n in st.names}
        added = subscribe - {WILDCARD}
        dropped = unsubscribe - {WILDCARD}
        st.names = (st.names | added) - dropped
        st.unresolved = (st.unresolved | added) - dropped
        for name in dropped:
            if st.wildcard:
                # Envoy keeps such a resource only if the server confirms the wildcard still
                # covers it, so it needs an answer: the resource, or its removal.
                st.unresolved.add(name)
            else:
                # Unsubscribing needs no answer; the client forgets the resource itself.
                st.known.pop(name, None)
                st.acked.pop(name, None)
        return _subscription_events(t, before, st.subscription(), first=False)

    def next_response(self) -> discovery_pb2.DeltaDiscoveryResponse | None:
        """The next response that may be sent now, or ``None``; it counts as sent."""
        nxt = self._next_type()
        if nxt is None:
            return None
        t, retain = nxt
        st = self._types[t]
        target = self._target(t, retain)
        changed = [
            target[n]
            for n in sorted(target)
            if n in st.unresolved or n not in st.known or st.known[n].version != target[n].version
        ]
        removed = sorted((set(st.known) | st.unresolved) - set(target))
        version = type_version(target.values())
        nonce = self._mark_sent(st, target, version)
        return discovery_pb2.DeltaDiscoveryResponse(
            system_version_info=version,
            resources=[
                discovery_pb2.Resource(name=r.name, version=r.version, resource=r.body)
                for r in changed
            ],
            removed_resources=removed,
            type_url=t,
            nonce=nonce,
        )


__all__ = [
    "WILDCARD",
    "Ack",
    "DeltaStream",
    "Event",
    "Nack",
    "NodeIdentified",
    "SotwStream",
    "StaleNonce",
    "Subscribed",
    "TypeStatus",
    "Unsubscribed",
]
