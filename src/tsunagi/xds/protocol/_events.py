"""What a request meant: plain, immutable data the streams return from ``receive()``.

Events carry no behaviour; the adapter logs them and the tests compare them by value.
"""

from __future__ import annotations

from dataclasses import dataclass

# The pseudo resource name Envoy uses for a wildcard subscription; events use it too.
WILDCARD = "*"


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


def subscription_events(
    type_url: str, before: frozenset[str], after: frozenset[str], first: bool
) -> list[Event]:
    """The events for a subscription going from ``before`` to ``after``."""
    events: list[Event] = []
    added, removed = after - before, before - after
    # The first request always reports, even with no names, so the adapter sees the type.
    if added or first:
        events.append(Subscribed(type_url, added))
    if removed:
        events.append(Unsubscribed(type_url, removed))
    return events
