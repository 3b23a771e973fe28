"""Delta (incremental) xDS: subscriptions change by difference, responses carry only what
changed plus the names removed, and a reconnecting Envoy says what it already holds."""

from __future__ import annotations

from collections.abc import Mapping

from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2

from tsunagi.xds.dependencies import DependencyCache
from tsunagi.xds.protocol._events import WILDCARD, Event, subscription_events
from tsunagi.xds.protocol._state import _diff, _TypeState
from tsunagi.xds.protocol._stream import _Stream
from tsunagi.xds.protocol._wire import Outgoing, delta_response
from tsunagi.xds.resources import WILDCARD_TYPES, Resource, Snapshot


class DeltaStream(_Stream):
    """One incremental ADS stream (``DeltaAggregatedResources``).

    Responses carry only resources whose version differs from what the client holds, plus
    ``removed_resources``; ``system_version_info`` is the version of the client's whole set
    of that type after applying the response.
    """

    # Subscription changes are never repeated (unlike SotW), so even a request answering an
    # older response must have its subscribe/unsubscribe lists applied.
    _STALE_DROPS_REQUEST = False

    def __init__(self, nonce_prefix: str = "", deps: DependencyCache | None = None) -> None:
        super().__init__(nonce_prefix, deps)
        # Some resource Envoy announced is known only by version (see ``set_snapshot``).
        self._placeholders = False

    def _apply_request(
        self,
        t: str,
        st: _TypeState,
        request: discovery_pb2.DeltaDiscoveryRequest,
        nonce: str,
        events: list[Event],
    ) -> None:
        subscribe = set(request.resource_names_subscribe)
        unsubscribe = set(request.resource_names_unsubscribe)
        if not st.subscribed:
            events += self._first_request(t, st, subscribe, request.initial_resource_versions)
        elif subscribe or unsubscribe:  # else an ACK/NACK: the usual case
            events += self._change_subscription(t, st, subscribe, unsubscribe)

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
        return subscription_events(t, frozenset(), st.subscription(), first=True)

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
        before = st.subscription()
        if WILDCARD in subscribe:
            st.wildcard = True
        if WILDCARD in unsubscribe:
            st.wildcard = False
            # Envoy drops what it held only through the wildcard.
            st.forget()
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
            st.forget(dropped)
            if st.rejected:
                # The rejected resource may be one Envoy just dropped: a response (complete
                # since the NACK) tells whether what is left is accepted, as SotW's
                # subscription change does; otherwise the rejection would outlive its cause.
                st.force = True
        return subscription_events(t, before, st.subscription(), first=False)

    def next_response(self) -> discovery_pb2.DeltaDiscoveryResponse | None:
        """:meth:`next_wire`'s response (it counts as sent) as a message, for tests."""
        out = self.next_wire()
        return None if out is None else discovery_pb2.DeltaDiscoveryResponse.FromString(out.data)

    def next_wire(self) -> Outgoing | None:
        """The next response that may be sent now, as it goes out, or ``None``; it counts
        as sent."""
        taken = self._take()
        if taken is None:
            return None
        t, st, target, version = taken
        changed_names, removed_names = _diff(st.known, target)
        if st.full:
            # After a NACK, what Envoy kept of the rejected response is unknown: like SotW's
            # complete response, send all that differs from what it last ACKed, and remove
            # what either state could hold (removing what Envoy lacks is a no-op).
            resend, gone = _diff(st.acked, target)
            changed_names = tuple(sorted({*changed_names, *resend}))
            removed_names = tuple(sorted({*removed_names, *gone}))
        if st.unresolved:
            changed_names = tuple(
                sorted({*changed_names, *(n for n in st.unresolved if n in target)})
            )
            removed_names = tuple(
                sorted({*removed_names, *(n for n in st.unresolved if n not in target)})
            )
        nonce = self._mark_sent(st, target, version)
        # Every resource (a new stream's first response): sent as the shared blocks.
        changed = None if len(changed_names) == len(target) else changed_names
        return delta_response(t, target, changed, removed_names, version, nonce)
