"""What both protocol variants share: snapshot, node, nonces, ACK/NACK bookkeeping, the
shared start of every request, and the status and sync checks the control plane reads.

The ordering policy comes from :class:`~tsunagi.xds.protocol._order._Ordering`; each variant
adds only how a request changes its subscription and how a response is built.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2

from tsunagi.xds.dependencies import DependencyCache
from tsunagi.xds.protocol._events import Ack, Event, Nack, NodeIdentified, StaleNonce
from tsunagi.xds.protocol._order import _PARENT_TYPE, _Ordering
from tsunagi.xds.protocol._state import TypeStatus, _TypeState
from tsunagi.xds.resources import WILDCARD_TYPES, Resource, Snapshot


class _Stream(_Ordering):
    """What both protocol variants share: snapshot, ordering, ACK bookkeeping, status."""

    # Whether a request answering a stale nonce is dropped whole, or only its ACK/NACK is.
    _STALE_DROPS_REQUEST: ClassVar[bool]

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

    def acked_versions(self, type_url: str) -> dict[str, str]:
        """Name → version of each resource of a type as Envoy last ACKed it (empty when
        it ACKed none): what ``proxy-config`` reports as active, per resource."""
        st = self._types.get(type_url)
        return {} if st is None else {name: r.version for name, r in st.acked.items()}

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

    def receive(
        self, request: discovery_pb2.DiscoveryRequest | discovery_pb2.DeltaDiscoveryRequest
    ) -> list[Event]:
        """Feed one request Envoy sent (``DiscoveryRequest`` on a state-of-the-world stream,
        ``DeltaDiscoveryRequest`` on a delta one); returns what it meant, in order."""
        events = self._see_node(request.node, request.HasField("node"))
        t = request.type_url
        st = self._state(t)
        nonce = request.response_nonce
        if nonce:
            error = request.error_detail.message if request.HasField("error_detail") else None
            answered = self._answer(t, nonce, error)
            if answered is None:
                events.append(StaleNonce(t, nonce))
                if self._STALE_DROPS_REQUEST:
                    return events
            else:
                events += answered
        self._apply_request(t, st, request, nonce, events)
        return events

    # --- what each variant adds

    def _apply_request(
        self,
        t: str,
        st: _TypeState,
        request: discovery_pb2.DiscoveryRequest | discovery_pb2.DeltaDiscoveryRequest,
        nonce: str,
        events: list[Event],
    ) -> None:
        """The variant's part of ``request`` (its subscription), after the shared nonce
        handling; appends what it meant to ``events``."""
        raise NotImplementedError

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

    def _take(self) -> tuple[str, _TypeState, Mapping[str, Resource], str] | None:
        """The type to send next, its state, and what to send of it at which version."""
        nxt = self._next_type()
        if nxt is None:
            return None
        t, retain = nxt
        st = self._types[t]
        target, version = self._plan(t, st, retain)
        return t, st, target, version

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
