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

SotW responses of CDS and LDS hold every resource of the type; those of EDS and RDS (and
delta responses) hold only what the client lacks, see :data:`_PARTIAL_SOTW_TYPES`.

Cost: with thousands of resources per type and a thousand streams, asking "is there anything
to send?" on every wake must not walk the resources. Snapshots remember their per-type
versions, each stream remembers the version of what the client holds (``known``) and of what
it ACKed, and what the dependency checks derive from an ACKed set, all by identity of the
immutable mappings involved. In the common case (nothing retained for removal, subscription
unchanged) a check is one string comparison; only when something is to be sent, or a removal
is pending, is the type diffed. What the client holds is kept as a reference to the
snapshot's own mapping whenever it is exactly that, not as a per-stream copy.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

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
    mapping_version,
    type_version,
)

# The pseudo resource name Envoy uses for a wildcard subscription; events use it too.
WILDCARD = "*"

# Removals, once everything else is in place, go listeners first: a listener that goes away
# stops taking traffic before the routes and clusters it may still use go too, and each
# parent goes before its dependents, which Envoy then simply unsubscribes from.
_BREAK_ORDER = (LISTENER, ROUTE, CLUSTER, ENDPOINT)

# What each type's resources can point at, directly or through another type: a listener
# loads route configs and names clusters, routes name clusters, clusters load endpoints.
_REFERENCED_BY: dict[str, frozenset[str]] = {
    LISTENER: frozenset({ROUTE, CLUSTER, ENDPOINT}),
    ROUTE: frozenset({CLUSTER, ENDPOINT}),
    CLUSTER: frozenset({ENDPOINT}),
}

# Dependent type -> the type whose resources reference its names (EDS <- CDS, RDS <- LDS).
_PARENT_TYPE = {child: parent for parent, child in DEPENDENT_TYPE.items()}

# SotW types whose responses carry only what changed. The xDS protocol ("Grouping Resources
# into Responses", envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol): "In the SotW
# protocol variants, all resource types except for Listener and Cluster are grouped into
# responses in the same way as in the incremental protocol variants", i.e. the server "does
# not need to resend the [...] resources that have not changed, and the client must not
# delete the unchanged resources"; for those types absence never means removal ("Deleting
# Resources": removal is implied by the parent no longer referencing the resource). Listener
# and Cluster responses "must include the complete state of the world". Newly requested
# names must be sent even if unchanged ("How the client specifies what resources to
# return"), so names dropped from the subscription are forgotten (see ``known``).
# ``version_info`` stays the version of the whole subscribed set, so ACKs mean the same.
_PARTIAL_SOTW_TYPES = frozenset({ENDPOINT, ROUTE})
_NO_NAMES: frozenset[str] = frozenset()
_EMPTY: Mapping[str, Resource] = MappingProxyType({})


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
    """Mutable per-type bookkeeping; never leaves this module.

    ``known`` and ``acked`` are never changed in place, only replaced: they are often the
    very mapping of a snapshot (shared by many streams), and the caches below recognise
    them by identity.
    """

    __slots__ = (
        "_acked_v",
        "_covers",
        "_known_v",
        "_plan",
        "_required",
        "acked",
        "acked_version",
        "force",
        "full",
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
        # Replaced (never mutated) when the subscription changes, so it doubles as its key.
        self.names: frozenset[str] = _NO_NAMES
        # What the client holds as far as we know: the content we last sent for each name.
        self.known: Mapping[str, Resource] = _EMPTY
        # ``known`` as of the last ACK: what the dependency checks trust.
        self.acked: Mapping[str, Resource] = _EMPTY
        self.nonce: str | None = None
        self.outstanding = False
        self.sent_version: str | None = None
        self.acked_version: str | None = None
        self.rejected = False
        self.last_nack_version: str | None = None
        self.last_nack_message: str | None = None
        # A request that must be answered even if nothing changed (fresh subscription).
        self.force = False
        # SotW: the next response must hold the whole subscribed set, even for EDS/RDS (the
        # client's state is unknown: fresh subscription or a NACKed response).
        self.full = False
        # Delta: names Envoy subscribed to that still need an answer (resource or removal).
        self.unresolved: set[str] = set()
        # Caches, each (inputs by identity..., result):
        self._known_v: tuple[Mapping[str, Resource], str] | None = None
        self._acked_v: tuple[Mapping[str, Resource], str] | None = None
        # (acked, names this type's ACKed resources make Envoy request)
        self._required: tuple[Mapping[str, Resource], frozenset[str]] | None = None
        # (required names, self.names, whether the subscription covers them)
        self._covers: tuple[frozenset[str], frozenset[str], bool] | None = None
        # (view, known, names, wildcard, target, target version): see ``_Stream._plan``
        self._plan: (
            tuple[
                Mapping[str, Resource],
                Mapping[str, Resource],
                frozenset[str],
                bool,
                Mapping[str, Resource],
                str,
            ]
            | None
        ) = None

    def subscription(self) -> frozenset[str]:
        return self.names | {WILDCARD} if self.wildcard else self.names

    def wants(self, name: str) -> bool:
        return self.wildcard or name in self.names

    def set_known(self, known: Mapping[str, Resource], version: str | None = None) -> None:
        self.known = known
        if version is not None:
            self._known_v = (known, version)

    def known_version(self) -> str:
        """The version of ``known``, computed once per ``known``."""
        cached = self._known_v
        if cached is None or cached[0] is not self.known:
            cached = self._known_v = (self.known, mapping_version(self.known))
        return cached[1]

    def acked_content_version(self) -> str:
        """The version of ``acked``, computed once per ``acked``."""
        cached = self._acked_v
        if cached is None or cached[0] is not self.acked:
            known = self._known_v
            if known is not None and known[0] is self.acked:
                cached = known
            else:
                cached = (self.acked, mapping_version(self.acked))
            self._acked_v = cached
        return cached[1]

    def adopt(self, view: Mapping[str, Resource], version: str) -> None:
        """``known`` holds exactly ``view``'s content: keep the (shared) view instead, and
        what was derived from the old mapping (same names, same versions)."""
        if self.acked is self.known:
            required = self._required
            if required is not None and required[0] is self.acked:
                self._required = (view, required[1])
            self.acked = view
            self._acked_v = (view, version)
        self.set_known(view, version)


def _without(held: Mapping[str, Resource], names: Iterable[str]) -> Mapping[str, Resource]:
    """``held`` minus ``names``: ``held`` itself when none of them is in it, else a copy."""
    drop = {n for n in names if n in held}
    if not drop:
        return held
    return {n: r for n, r in held.items() if n not in drop}


# Diffs between two large frozen mappings (e.g. every sidecar's endpoints before and after a
# push), by identity, so that a thousand streams moving from one to the other diff it once.
_DIFF_MIN_SIZE = 64
_DIFF_MAX_ENTRIES = 16
_diffs: dict[
    tuple[int, int],
    tuple[Mapping[str, Resource], Mapping[str, Resource], tuple[str, ...], tuple[str, ...]],
] = {}
_diffs_lock = threading.Lock()


def _diff(
    old: Mapping[str, Resource], new: Mapping[str, Resource]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(names in ``new`` that ``old`` lacks or holds at another version, names only in
    ``old``), each sorted."""
    if old is new:
        return (), ()
    shared = (
        type(old) is MappingProxyType
        and type(new) is MappingProxyType
        and len(new) >= _DIFF_MIN_SIZE
        and len(old) >= _DIFF_MIN_SIZE
    )
    key = (id(old), id(new))
    if shared:
        with _diffs_lock:
            hit = _diffs.pop(key, None)
            if hit is not None and hit[0] is old and hit[1] is new:
                _diffs[key] = hit
                return hit[2], hit[3]
    changed = []
    for name, res in new.items():
        had = old.get(name)
        if had is None or (had is not res and had.version != res.version):
            changed.append(name)
    changed.sort()
    removed = tuple(sorted(n for n in old if n not in new))
    out = (tuple(changed), removed)
    if shared:
        with _diffs_lock:
            _diffs[key] = (old, new, *out)
            while len(_diffs) > _DIFF_MAX_ENTRIES:
                del _diffs[next(iter(_diffs))]
    return out


# Both response messages hold their resources in field 2: entries are tag 0x12 (field 2,
# length-delimited), the entry's length as a varint, then the entry's bytes.
_RESOURCES_TAG = b"\x12"
assert discovery_pb2.DiscoveryResponse.DESCRIPTOR.fields_by_name["resources"].number == 2
assert discovery_pb2.DeltaDiscoveryResponse.DESCRIPTOR.fields_by_name["resources"].number == 2


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


class _Entries:
    """Each resource's serialized response entry (an ``Any`` for SotW, a ``Resource`` for
    delta), by resource identity: every stream sends the very same resource objects, so each
    is wrapped and serialized once, not once per stream. Bounded by size: it starts over
    when full, as entries are cheap to make again."""

    def __init__(self, max_bytes: int = 32 << 20) -> None:
        self._max_bytes = max_bytes
        self._bytes = 0
        self._entries: dict[tuple[int, bool], tuple[Resource, bytes]] = {}
        self._lock = threading.Lock()

    def get(self, res: Resource, delta: bool) -> bytes:
        key = (id(res), delta)
        hit = self._entries.get(key)
        if hit is not None and hit[0] is res:
            return hit[1]
        if delta:
            msg = discovery_pb2.Resource(name=res.name, version=res.version, resource=res.body)
            data: bytes = msg.SerializeToString()
        else:
            data = res.body.SerializeToString()
        entry = _RESOURCES_TAG + _varint(len(data)) + data
        with self._lock:
            if self._bytes + len(entry) > self._max_bytes:
                self._entries.clear()
                self._bytes = 0
            self._entries[key] = (res, entry)
            self._bytes += len(entry)
        return entry


_entries = _Entries()


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
                names=st.names,  # a frozenset already: shared, not copied
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

        Called for every node on every ACK while someone waits (``apply --wait``): once
        computed for a snapshot and an ACKed state, this is a few comparisons per type.
        """
        snap = snapshot if snapshot is not None else self._snapshot
        if snap is None:
            return False
        for t in snap.resources.keys() | self._types.keys():
            st = self._types.get(t)
            if st is None or not st.subscribed:
                if t in WILDCARD_TYPES and snap.of(t):
                    return False
                continue
            if st.outstanding:
                return False
            # A NACKed type is in sync again once what Envoy runs (its last ACKed state) is
            # what the snapshot wants, e.g. after the offending resource was deleted.
            view, expected = snap.view(t, None if st.wildcard else st.names)
            if st.acked is not view and st.acked_content_version() != expected:
                return False
        for child, parent in _PARENT_TYPE.items():
            pst = self._types.get(parent)
            if pst is not None and pst.subscribed and pst.wildcard:
                # Checked above: what Envoy ACKed of the parent is exactly the snapshot's.
                required = self._required(parent)
            elif snap.of(parent):
                # An explicit parent subscription (not Envoy's way): the snapshot's all.
                required = self._deps.required(parent, snap.of(parent).values())
            else:
                continue
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
            # What Envoy kept of a rejected response is unknown (it applies EDS/RDS per
            # resource): the next response of the type is complete.
            st.full = True
            st.rejected = True
            st.last_nack_version = version
            st.last_nack_message = error
            return [Nack(type_url, version, nonce, error)]
        st.rejected = False
        st.acked = st.known
        st.acked_version = version
        return [Ack(type_url, version, nonce)]

    def _plan(self, t: str, st: _TypeState, retain: bool) -> tuple[Mapping[str, Resource], str]:
        """What the client of ``t`` should hold now (``retain``: keep removed ones), and its
        version. Without anything to retain this is the snapshot's own (cached) view."""
        assert self._snapshot is not None
        view, version = self._snapshot.view(t, None if st.wildcard else st.names)
        known = st.known
        if known is view or not retain or not known:
            return view, version
        if st.known_version() == version:
            # The client holds exactly the view (versions hash names and contents): nothing
            # is retained, and the shared view can stand in for the per-stream copy.
            st.adopt(view, version)
            return view, version
        plan = st._plan
        if (
            plan is not None
            and plan[0] is view
            and plan[1] is known
            and plan[2] is st.names
            and plan[3] == st.wildcard
        ):
            return plan[4], plan[5]
        # Removals last: what the client holds but the snapshot dropped stays as it was.
        retained = {n: r for n, r in known.items() if n not in view and st.wants(n)}
        target: Mapping[str, Resource] = view
        target_version = version
        if retained:
            target = {**view, **retained}
            target_version = type_version(target.values())
        st._plan = (view, known, st.names, st.wildcard, target, target_version)
        return target, target_version

    def _wants_send(self, type_url: str, retain: bool) -> bool:
        st = self._types[type_url]
        if not st.subscribed:
            return False
        if st.force or st.unresolved:
            return True
        target, version = self._plan(type_url, st, retain)
        return target is not st.known and version != st.known_version()

    def _required(self, parent: str) -> frozenset[str]:
        """The names of the dependent type that ``parent``'s ACKed resources reference."""
        st = self._types.get(parent)
        if st is None:
            return _NO_NAMES
        cached = st._required
        if cached is None or cached[0] is not st.acked:
            cached = st._required = (st.acked, self._deps.required(parent, st.acked.values()))
        return cached[1]

    def _covers(self, child: str, required: frozenset[str]) -> bool:
        if not required:
            return True
        st = self._types.get(child)
        if st is None or not st.subscribed:
            return False
        if st.wildcard:
            return True
        cached = st._covers
        if cached is None or cached[0] is not required or cached[1] is not st.names:
            cached = st._covers = (required, st.names, required <= st.names)
        return cached[2]

    def _dependency_caught_up(self, child: str) -> bool:
        """Envoy subscribed to every ``child`` name its ACKed parent resources reference."""
        parent = _PARENT_TYPE[child]
        if parent not in self._types:
            return True
        return self._covers(child, self._required(parent))

    def _removals_allowed(self) -> bool:
        """Everything but pending removals is answered, so dropping resources breaks nothing.

        A NACKed type counts as answered here (Envoy keeps its last good config for it and
        nothing is re-sent until the snapshot changes); :meth:`_held_by_rejection` decides
        which removals it still holds back.
        """
        for t, st in self._types.items():
            if not st.subscribed:
                continue
            if st.outstanding or self._wants_send(t, retain=True):
                return False
        return all(self._dependency_caught_up(child) for child in _PARENT_TYPE)

    def _held_by_rejection(self, type_url: str) -> bool:
        """Whether a NACKed type may still reference resources of ``type_url``.

        Envoy runs its last good config of a rejected type, so what that config can point at
        stays: rejected routes (or listeners) keep clusters and endpoints, rejected clusters
        keep endpoints. A rejected type blocks nothing it does not reference — otherwise one
        bad endpoint set would hold every later cluster removal back forever.
        """
        return any(
            st.rejected and type_url in _REFERENCED_BY.get(t, ()) for t, st in self._types.items()
        )

    def _next_type(self) -> tuple[str, bool] | None:
        """The type to send next and whether removed resources are still retained."""
        if self._snapshot is None:
            return None
        if self._removals_allowed():
            for t in (*_BREAK_ORDER, *sorted(set(self._types) - set(_BREAK_ORDER))):
                st = self._types.get(t)
                if (
                    st is not None
                    and st.subscribed
                    and not self._held_by_rejection(t)
                    and self._wants_send(t, retain=False)
                ):
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

    def _mark_sent(self, st: _TypeState, target: Mapping[str, Resource], version: str) -> str:
        nonce = self._fresh_nonce()
        st.set_known(target, version)
        st.sent_version = version
        st.nonce = nonce
        st.outstanding = True
        st.force = False
        st.full = False
        if st.unresolved:
            st.unresolved = set()
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
            st.full = True
        events += self._update_subscription(t, st, request.resource_names)
        return events

    def _update_subscription(self, t: str, st: _TypeState, names: Iterable[str]) -> list[Event]:
        requested = set(names)
        wildcard = WILDCARD in requested or (not requested and t in WILDCARD_TYPES)
        requested.discard(WILDCARD)
        first = not st.subscribed
        if not first and wildcard == st.wildcard and requested == st.names:
            return []  # every SotW request repeats the subscription; the usual case
        before = st.subscription() if st.subscribed else _NO_NAMES
        if wildcard != st.wildcard:
            st.full = True
        st.subscribed, st.wildcard = True, wildcard
        if requested != st.names:
            st.names = frozenset(requested)
        if not wildcard:
            # Envoy forgets what it no longer subscribes to, so a name subscribed again later
            # must be sent again even if unchanged: forget it too.
            st.set_known(_without(st.known, st.known.keys() - st.names))
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
        target, version = self._plan(t, st, retain)
        if t in _PARTIAL_SOTW_TYPES and not st.wildcard and not st.full:
            # Only what the client lacks; see _PARTIAL_SOTW_TYPES for why that is enough.
            names: Iterable[str] = _diff(st.known, target)[0]
        else:
            names = sorted(target)
        nonce = self._mark_sent(st, target, version)
        # Parsing the resources' cached entries builds the same message as adding each body.
        response = discovery_pb2.DiscoveryResponse.FromString(
            b"".join([_entries.get(target[n], delta=False) for n in names])
        )
        # The version of the whole subscribed set, even when only part of it is sent.
        response.version_info = version
        response.type_url = t
        response.nonce = nonce
        return response


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
        st.names = frozenset(subscribe - {WILDCARD})
        # After a reconnect Envoy says what it holds; trust it so that equal versions are
        # not re-sent and names that no longer exist are reported removed.
        known = {
            name: self._held(t, name, version)
            for name, version in initial.items()
            if st.wants(name)
        }
        st.set_known(known)
        st.acked = known
        st.acked_version = st.known_version() if known else None
        self._placeholders |= any(not r.body.type_url for r in known.values())
        # Names Envoy asks for but lacks wait for an answer: the resource or its removal.
        st.unresolved = set(st.names - known.keys())
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
            same = st.acked is st.known
            st.set_known(self._resolve_placeholders(t, st.known))
            st.acked = st.known if same else self._resolve_placeholders(t, st.acked)

    def _resolve_placeholders(self, t: str, held: Mapping[str, Resource]) -> Mapping[str, Resource]:
        if all(res.body.type_url for res in held.values()):
            return held
        out = {name: self._held(t, name, res.version) for name, res in held.items()}
        self._placeholders |= any(not res.body.type_url for res in out.values())
        return out

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
        if not subscribe and not unsubscribe:
            return []  # an ACK/NACK: the usual case
        before = st.subscription()
        if WILDCARD in subscribe:
            st.wildcard = True
        if WILDCARD in unsubscribe:
            st.wildcard = False
            # Envoy drops what it held only through the wildcard.
            st.set_known(_without(st.known, st.known.keys() - st.names))
        added = subscribe - {WILDCARD}
        dropped = unsubscribe - {WILDCARD}
        names = (st.names | added) - dropped
        if names != st.names:
            st.names = names
        st.unresolved = (st.unresolved | added) - dropped
        if st.wildcard:
            # Envoy keeps such a resource only if the server confirms the wildcard still
            # covers it, so it needs an answer: the resource, or its removal.
            st.unresolved |= dropped
        elif dropped:
            # Unsubscribing needs no answer; the client forgets the resource itself.
            same = st.acked is st.known
            st.set_known(_without(st.known, dropped))
            st.acked = st.known if same else _without(st.acked, dropped)
        return _subscription_events(t, before, st.subscription(), first=False)

    def next_response(self) -> discovery_pb2.DeltaDiscoveryResponse | None:
        """The next response that may be sent now, or ``None``; it counts as sent."""
        nxt = self._next_type()
        if nxt is None:
            return None
        t, retain = nxt
        st = self._types[t]
        target, version = self._plan(t, st, retain)
        changed_names, removed_names = _diff(st.known, target)
        if st.unresolved:
            changed_names = tuple(
                sorted({*changed_names, *(n for n in st.unresolved if n in target)})
            )
            removed_names = tuple(
                sorted({*removed_names, *(n for n in st.unresolved if n not in target)})
            )
        nonce = self._mark_sent(st, target, version)
        # Parsing the resources' cached entries builds the same message as adding each one.
        response = discovery_pb2.DeltaDiscoveryResponse.FromString(
            b"".join([_entries.get(target[n], delta=True) for n in changed_names])
        )
        response.system_version_info = version
        response.removed_resources.extend(removed_names)
        response.type_url = t
        response.nonce = nonce
        return response


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
