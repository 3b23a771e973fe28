"""State of the world: every request repeats the whole subscription; CDS and LDS responses
hold every resource of the type, EDS and RDS responses only what the client lacks."""

from __future__ import annotations

from collections.abc import Iterable

from envoy.service.discovery.v3 import discovery_pb2

from tsunagi.xds.protocol._events import WILDCARD, Event, subscription_events
from tsunagi.xds.protocol._order import _PARTIAL_SOTW_TYPES
from tsunagi.xds.protocol._state import _NO_NAMES, _diff, _TypeState
from tsunagi.xds.protocol._stream import _Stream
from tsunagi.xds.protocol._wire import Outgoing, sotw_response
from tsunagi.xds.resources import WILDCARD_TYPES


class SotwStream(_Stream):
    """One state-of-the-world ADS stream (``StreamAggregatedResources``).

    ``nonce_prefix`` makes nonces unique across streams in logs; ``deps`` lets streams share
    one :class:`DependencyCache`.
    """

    # Every SotW request repeats the full subscription, and Envoy answers our latest response
    # with one too, so dropping a request that answers an older one loses nothing.
    _STALE_DROPS_REQUEST = True

    def _apply_request(
        self,
        t: str,
        st: _TypeState,
        request: discovery_pb2.DiscoveryRequest,
        nonce: str,
        events: list[Event],
    ) -> None:
        if not nonce:
            # A fresh subscription (first request or reconnect): always answered with the
            # current state, whatever version Envoy says it has. A response still in flight
            # is superseded; its late ACK will be stale.
            st.outstanding = False
            st.force = True
            st.full = True
        requested = set(request.resource_names)
        wildcard = WILDCARD in requested or (not requested and t in WILDCARD_TYPES)
        requested.discard(WILDCARD)
        first = not st.subscribed
        if not first and wildcard == st.wildcard and requested == st.names:
            return  # every SotW request repeats the subscription; the usual case
        before = st.subscription() if st.subscribed else _NO_NAMES
        if wildcard != st.wildcard:
            st.full = True
        st.subscribed, st.wildcard = True, wildcard
        if requested != st.names:
            st.names = frozenset(requested)
        if not wildcard:
            # Envoy forgets what it no longer subscribes to, so a name subscribed again later
            # must be sent again even if unchanged: forget it too, in what it ACKed as well
            # (else ``synced()`` would count a resource Envoy no longer has).
            st.forget()
        after = st.subscription()
        if after != before:
            st.force = True
        events += subscription_events(t, before, after, first)

    def next_response(self) -> discovery_pb2.DiscoveryResponse | None:
        """:meth:`next_wire`'s response (it counts as sent) as a message, for tests."""
        out = self.next_wire()
        return None if out is None else discovery_pb2.DiscoveryResponse.FromString(out.data)

    def next_wire(self) -> Outgoing | None:
        """The next response that may be sent now, as it goes out, or ``None``; it counts
        as sent."""
        taken = self._take()
        if taken is None:
            return None
        t, st, target, version = taken
        names: Iterable[str] | None = None  # all of them
        if t in _PARTIAL_SOTW_TYPES and not st.wildcard and not st.full:
            # Only what the client lacks; see _PARTIAL_SOTW_TYPES for why that is enough.
            lacking = _diff(st.known, target)[0]
            if len(lacking) < len(target):
                names = lacking
        nonce = self._mark_sent(st, target, version)
        return sotw_response(t, target, names, version, nonce)
