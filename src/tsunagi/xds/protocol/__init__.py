"""Sans-I/O state machines for one ADS stream, state-of-the-world and delta (incremental).

A stream object knows nothing about sockets, tasks or time. The gRPC adapter feeds it every
request Envoy sends (``receive``), tells it the node's newest desired config
(``set_snapshot``), and after either drains ``next_wire()`` until it returns ``None``,
writing each response's bytes in order (``next_response()`` gives the same as a message).

What the machine guarantees, for both variants:

* Nothing of a type is sent before Envoy asked for that type, nor before a snapshot is set.
* At most one un-answered response per type; a NACK is recorded and never blindly retried:
  the type is sent again only when what the client should have changes.
* Make before break: types go out in ``PUSH_ORDER``; no type is sent while an earlier one
  awaits its ACK/NACK, except that while CDS (LDS) awaits its answer EDS (RDS) may still go:
  Envoy ACKs clusters (listeners) only once they warmed, which needs the endpoints (routes)
  it asks for meanwhile. Nothing later goes: LDS/RDS wait until CDS is ACKed and Envoy's EDS
  subscription covers every EDS cluster of that CDS (Envoy asks for those endpoints only
  after applying CDS).
* Removals last: a resource that vanishes from the snapshot stays, at the content the client
  last got, until every type is ACKed (none NACKed) and every dependent subscription caught
  up; only then do the removals go out, one type at a time, listeners first (LDS, ECDS, RDS,
  CDS, EDS), so nothing is removed while something Envoy runs may still use it.
* Latest wins: responses are computed when they are taken, from the newest snapshot.

SotW responses of CDS and LDS hold every resource of the type; those of EDS and RDS (and
delta responses) hold only what the client lacks.

Cost: with thousands of resources per type and a thousand streams, asking "is there anything
to send?" on every wake must not walk the resources. Snapshots remember their per-type
versions, each stream remembers the version of what the client holds (``known``) and of what
it ACKed, and what the dependency checks derive from an ACKed set, all by identity of the
immutable mappings involved. In the common case (nothing retained for removal, subscription
unchanged) a check is one string comparison; only when something is to be sent, or a removal
is pending, is the type diffed. What the client holds is kept as a reference to the
snapshot's own mapping whenever it is exactly that, not as a per-stream copy.

One concern per module:

* ``_events``: what a request meant (plain frozen dataclasses).
* ``_state``: per-type bookkeeping (``_TypeState``), its public summary (``TypeStatus``),
  and diffs of what a client holds.
* ``_wire``: each resource's response entry serialized once and shared; response assembly.
* ``_order``: make-before-break ordering and removals last (which type goes next).
* ``_stream``: the base both variants share (snapshot, nonces, ACK/NACK, ``receive``'s start,
  ``status``, ``synced``).
* ``_sotw``, ``_delta``: what each variant adds (its subscriptions and responses).
"""

from tsunagi.xds.protocol._delta import DeltaStream
from tsunagi.xds.protocol._events import (
    WILDCARD,
    Ack,
    Event,
    Nack,
    NodeIdentified,
    StaleNonce,
    Subscribed,
    Unsubscribed,
)
from tsunagi.xds.protocol._sotw import SotwStream
from tsunagi.xds.protocol._state import TypeStatus
from tsunagi.xds.protocol._wire import Outgoing

__all__ = [
    "WILDCARD",
    "Ack",
    "DeltaStream",
    "Event",
    "Nack",
    "NodeIdentified",
    "Outgoing",
    "SotwStream",
    "StaleNonce",
    "Subscribed",
    "TypeStatus",
    "Unsubscribed",
]
