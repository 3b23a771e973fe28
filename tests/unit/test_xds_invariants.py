"""Randomized tests of the ADS state machine's invariants (SotW and delta).

Hypothesis drives a stream and the fake Envoy of ``test_xds_protocol`` through random
sequences of snapshot changes (clusters, endpoints, listeners and routes added, changed and
removed, some of them invalid so that Envoy NACKs), partial exchanges, stale nonces,
repeated requests and subscription changes. On every response it checks:

* ordering: nothing goes while an earlier type of CDS → EDS → LDS → RDS awaits its answer or
  has an update still to send (except EDS while CDS awaits, RDS while LDS awaits: warming);
* one answer at a time: a type is never sent while its previous response is unanswered, and
  never before Envoy asked for it;
* nothing is sent when nothing changed: every response carries something new, or answers a
  changed subscription;
* dependencies first: LDS and RDS wait until Envoy asked for the endpoints of the clusters it
  runs;
* removals last: nothing Envoy holds is removed while anything else is still to be sent or
  answered or Envoy's subscriptions lag, nor while a resource Envoy runs (its last good
  config) still names it.

At the end Envoy stops rejecting and follows its dependencies to rest; then what it holds is
the latest snapshot, type by type (no lost update), ``synced()`` holds, and nothing more is
sent, not even when an identical snapshot is set again. Along the way, setting an identical
snapshot, repeating a request or answering a stale nonce changes nothing.

Some generated resources are invalid (marked by content no valid variant has), and Envoy may
reject a whole type for a while (the table tests' ``reject``). Like the table tests' fake,
this one rejects a response as a whole: it NACKs it and applies none of it, keeping its last
good config of the type, which is what the state machine assumes Envoy runs after a NACK.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from google.protobuf import any_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tsunagi.xds.dependencies import (
    DEPENDENT_TYPE,
    cluster_eds_names,
    inconsistencies,
    listener_route_names,
)
from tsunagi.xds.protocol import Ack, DeltaStream, Nack, SotwStream, StaleNonce, TypeStatus
from tsunagi.xds.resources import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    PUSH_ORDER,
    ROUTE,
    SHORT_NAMES,
    Snapshot,
)

from .test_xds_protocol import (
    FakeEnvoy,
    cla,
    cluster,
    delta_req,
    listener,
    name_of,
    route,
    sotw_req,
)

CLUSTERS = ("a", "b", "c")
LISTENERS = ("l1", "l2")
ROUTE_CONFIGS = ("r1", "r2")
# Content marking a resource Envoy rejects: no valid variant uses these values.
BAD_TIMEOUT, BAD_PORT, BAD_PREFIX = 13, 13, "/bad"

# ------------------------------------------------------------------------- configurations


@dataclass(frozen=True)
class ClusterSpec:
    name: str
    eds: bool
    timeout: int
    port: int  # of its endpoints (EDS clusters only)


@dataclass(frozen=True)
class ListenerSpec:
    name: str
    route_config: str
    port: int


@dataclass(frozen=True)
class RouteSpec:
    name: str
    to: str
    prefix: str


@dataclass(frozen=True)
class Config:
    clusters: tuple[ClusterSpec, ...]
    listeners: tuple[ListenerSpec, ...]
    routes: tuple[RouteSpec, ...]

    def snapshot(self, revision: int) -> Snapshot:
        return Snapshot.build(
            {
                CLUSTER: [cluster(c.name, eds=c.eds, timeout=c.timeout) for c in self.clusters],
                ENDPOINT: [cla(c.name, c.port) for c in self.clusters if c.eds],
                LISTENER: [listener(x.name, x.route_config, x.port) for x in self.listeners],
                ROUTE: [route(r.name, r.to, r.prefix) for r in self.routes],
            },
            revision,
        )


@st.composite
def configs(draw: st.DrawFn, allow_bad: bool = True) -> Config:
    """A consistent config: every EDS cluster has endpoints, every listener its routes, and
    routes send only to clusters that exist. Some resources may be invalid."""

    def bad() -> bool:
        return allow_bad and draw(st.integers(0, 9)) == 0

    names = draw(st.lists(st.sampled_from(CLUSTERS), unique=True, max_size=len(CLUSTERS)))
    clusters = tuple(
        ClusterSpec(
            name,
            eds=draw(st.integers(0, 4)) > 0,
            timeout=BAD_TIMEOUT if bad() else draw(st.sampled_from((1, 2))),
            port=BAD_PORT if bad() else draw(st.sampled_from((80, 81))),
        )
        for name in sorted(names)
    )
    if not clusters:
        return Config((), (), ())
    lnames = draw(st.lists(st.sampled_from(LISTENERS), unique=True, max_size=len(LISTENERS)))
    listeners = tuple(
        ListenerSpec(
            name,
            route_config=draw(st.sampled_from(ROUTE_CONFIGS)),
            port=BAD_PORT if bad() else draw(st.sampled_from((15001, 15002))),
        )
        for name in sorted(lnames)
    )
    routes = tuple(
        RouteSpec(
            name,
            to=draw(st.sampled_from([c.name for c in clusters])),
            prefix=BAD_PREFIX if bad() else draw(st.sampled_from(("/", "/v2"))),
        )
        for name in sorted({x.route_config for x in listeners})
    )
    return Config(clusters, listeners, routes)


# ---------------------------------------------------------------------------- inspection

_MESSAGES: dict[str, Any] = {
    CLUSTER: cluster_pb2.Cluster,
    ENDPOINT: endpoint_pb2.ClusterLoadAssignment,
    LISTENER: listener_pb2.Listener,
    ROUTE: route_pb2.RouteConfiguration,
}


def _decode(t: str, body: any_pb2.Any) -> Any:
    msg = _MESSAGES[t]()
    body.Unpack(msg)
    return msg


def is_bad(t: str, body: any_pb2.Any) -> bool:
    msg = _decode(t, body)
    if t == CLUSTER:
        return bool(msg.connect_timeout.seconds == BAD_TIMEOUT)
    if t == ENDPOINT:
        ports = [
            lb.endpoint.address.socket_address.port_value
            for group in msg.endpoints
            for lb in group.lb_endpoints
        ]
        return BAD_PORT in ports
    if t == LISTENER:
        return bool(msg.address.socket_address.port_value == BAD_PORT)
    return any(r.match.prefix == BAD_PREFIX for vh in msg.virtual_hosts for r in vh.routes)


# Which types' resources name resources of which type: clusters load endpoints, listeners
# load route configurations, routes send to clusters.
_NAMES_OF = {CLUSTER: ENDPOINT, LISTENER: ROUTE, ROUTE: CLUSTER}


def named(t: str, body: any_pb2.Any) -> frozenset[str]:
    """Names of ``_NAMES_OF[t]`` that the resource ``body`` of type ``t`` refers to."""
    if t == CLUSTER:
        return cluster_eds_names(body)
    if t == LISTENER:
        return listener_route_names(body)
    msg = _decode(t, body)
    return frozenset(r.route.cluster for vh in msg.virtual_hosts for r in vh.routes)


# ------------------------------------------------------------------------------ the fake


class Violation(AssertionError):
    pass


class CheckedEnvoy(FakeEnvoy):
    """The fake Envoy, rejecting responses with invalid resources, checking every response
    it gets."""

    def __init__(self, stream: SotwStream | DeltaStream, *, warming: bool) -> None:
        super().__init__(stream, warming=warming)
        self.rejecting = True
        # What the server has sent of each type as the client would hold it (bodies by
        # name), whatever the answer: the server's side of the bookkeeping.
        self.sent: dict[str, dict[str, bytes]] = {}
        self.nonces: dict[str, list[str]] = {}
        # Delta: names the server said are gone (or never existed), which ends warming too.
        self.told_absent: dict[str, set[str]] = {}
        # Nonces of responses accepted and applied on arrival, their ACK held for warming.
        self.warmed: set[str] = set()
        # Types whose subscription changed since their last response (or that never had one).
        self.resubscribed: set[str] = set()

    # --- the client

    def rejection(self, resp: Any) -> str | None:
        """Why Envoy rejects ``resp``: it holds an invalid resource, or Envoy rejects its
        whole type for now (``reject``); ``None`` when it accepts it."""
        t = resp.type_url
        if t in self.reject:
            return self.reject[t]
        if self.delta:
            bad = [r.name for r in resp.resources if is_bad(t, r.resource)]
        else:
            bad = [name_of(b) for b in resp.resources if is_bad(t, b)]
        return f"invalid {SHORT_NAMES[t]}: {', '.join(bad)}" if bad and self.rejecting else None

    def answer(self, resp: Any) -> None:
        t = resp.type_url
        self.last_nonce[t] = resp.nonce
        # A response held for warming was judged (and applied) when it arrived.
        error = None if resp.nonce in self.warmed else self.rejection(resp)
        if error is None:
            self.apply(resp)
        if self.delta:
            events = self.send(delta_req(t, nonce=resp.nonce, error=error))
            version = resp.system_version_info
        else:
            subs = self.subs.get(t)
            version = resp.version_info
            ver = version if error is None else ""
            events = self.send(sotw_req(t, sorted(subs or ()), resp.nonce, ver, error))
        answer: Ack | Nack = Ack(t, version, resp.nonce)
        if error is not None:
            answer = Nack(t, version, resp.nonce, error)
        if [e for e in events if isinstance(e, Ack | Nack | StaleNonce)] != [answer]:
            raise Violation(f"answering {resp.nonce} meant {events}, not {answer}")

    def subscribe(self, t: str, names: set[str]) -> None:
        if t not in self.subs or self.subs[t] != names:
            self.resubscribed.add(t)
        super().subscribe(t, names)
        # The server forgets what the client no longer subscribes to, as the client does.
        sent = self.sent.get(t, {})
        for n in set(sent) - names:
            del sent[n]

    def step(self) -> Any | None:
        before = self.stream.status()
        resp = self.stream.next_response()
        if resp is None:
            return None
        self.check(resp, before)
        self.record(resp)
        t = resp.type_url
        self.log.append(t)
        self.nonces.setdefault(t, []).append(resp.nonce)
        valid = self.rejection(resp) is None
        if self.warming and t in (CLUSTER, LISTENER) and valid:
            # Apply now, ACK once warmed.
            self.last_nonce[t] = resp.nonce
            self.apply(resp)
            self.warming_acks[t] = resp
            self.warmed.add(resp.nonce)
        else:
            self.answer(resp)
        if valid:
            self.follow_dependencies(t)
        self.ack_warmed()
        return resp

    def ack_warmed(self, timeout: bool = False) -> None:
        """A held CDS (LDS) ACK goes once every cluster (listener) got its endpoints (routes)
        or heard they are gone, or, with ``timeout``, when Envoy's initial fetch timeout ends
        warming without them."""
        for t, resp in list(self.warming_acks.items()):
            child = ENDPOINT if t == CLUSTER else ROUTE
            ready = set(self.held.get(child, {})) | self.told_absent.get(child, set())
            if timeout or self.references(t) <= ready:
                del self.warming_acks[t]
                self.answer(resp)

    def settle(self) -> None:
        """Exchange until the stream has nothing to send and nothing is warming."""
        for _ in range(200):
            if self.step() is None:
                if not self.warming_acks:
                    return
                self.ack_warmed(timeout=True)
        raise Violation("the stream never settled")

    def check_synced(self) -> None:
        """Proxy status never lies: when the stream says Envoy is in sync, Envoy runs
        exactly the snapshot (what it subscribed to of it)."""
        if not self.stream.synced():
            return
        for t in self.subs:
            held = {n: r.body.value for n, r in self.held.get(t, {}).items()}
            if held != self.wanted(t):
                raise Violation(f"synced() while Envoy's {SHORT_NAMES[t]} differs")

    # --- the server's side, as seen from the wire

    def sent_after(self, resp: Any) -> dict[str, bytes]:
        """What the server has sent of the type once ``resp`` is counted."""
        t = resp.type_url
        if self.delta:
            sent = dict(self.sent.get(t, {}))
            sent.update((r.name, r.resource.value) for r in resp.resources)
            for n in resp.removed_resources:
                sent.pop(n, None)
            return sent
        bodies = {name_of(b): b.value for b in resp.resources}
        if t in (CLUSTER, LISTENER):
            return bodies
        return {**self.sent.get(t, {}), **bodies}

    def record(self, resp: Any) -> None:
        t = resp.type_url
        self.sent[t] = self.sent_after(resp)
        self.resubscribed.discard(t)
        if self.delta:
            absent = self.told_absent.setdefault(t, set())
            absent.difference_update(r.name for r in resp.resources)
            absent.update(resp.removed_resources)

    def wanted(self, t: str) -> dict[str, bytes]:
        """What the client should hold of ``t``: the snapshot, within its subscription."""
        snap = self.stream.snapshot
        assert snap is not None
        names = self.subs[t]
        return {n: r.body.value for n, r in snap.of(t).items() if names is None or n in names}

    def unsent(self, t: str) -> set[str]:
        """Names of ``t`` whose wanted content the server has yet to send."""
        if t not in self.subs:
            return set()
        sent = self.sent.get(t, {})
        return {n for n, body in self.wanted(t).items() if sent.get(n) != body}

    def uncovered(self, parent: str) -> set[str]:
        """Names the clusters (listeners) Envoy runs load that it has not subscribed to."""
        subs = self.subs.get(ENDPOINT if parent == CLUSTER else ROUTE, set())
        return set() if subs is None else self.references(parent) - subs

    def removes(self, resp: Any) -> set[str]:
        """What the response takes away from what the client holds."""
        held = self.held.get(resp.type_url, {})
        if self.delta:
            return set(resp.removed_resources) & held.keys()
        if resp.type_url in (CLUSTER, LISTENER):
            return held.keys() - {name_of(b) for b in resp.resources}
        return set()  # SotW EDS/RDS: absence removes nothing

    def check(self, resp: Any, before: dict[str, TypeStatus]) -> None:
        t = resp.type_url
        short = SHORT_NAMES[t]
        if t not in self.subs:
            raise Violation(f"{short} sent before Envoy asked for it")
        if t in before and before[t].awaiting_ack:
            raise Violation(f"{short} sent while its previous response is unanswered")
        # Nothing is sent when nothing changed: each response after the first of its type
        # carries something new, or answers a change of subscription.
        if t in self.sent and t not in self.resubscribed and self.sent_after(resp) == self.sent[t]:
            raise Violation(f"{short} sent with nothing new")
        # LDS and RDS wait until Envoy asked for the endpoints of every cluster it runs.
        if t in (LISTENER, ROUTE) and self.uncovered(CLUSTER):
            raise Violation(f"{short} sent before Envoy asked for EDS {self.uncovered(CLUSTER)}")
        # Make before break: every earlier type is answered and sent, except the parent of
        # what goes (EDS may go while CDS awaits its warming ACK, RDS while LDS does).
        for u in PUSH_ORDER[: PUSH_ORDER.index(t)]:
            warming_parent = DEPENDENT_TYPE.get(u) == t and u in before and before[u].awaiting_ack
            if warming_parent:
                continue
            if u in before and before[u].awaiting_ack:
                raise Violation(f"{short} sent while {SHORT_NAMES[u]} awaits its answer")
            if self.unsent(u):
                raise Violation(f"{short} sent before {SHORT_NAMES[u]} {sorted(self.unsent(u))}")
        removed = self.removes(resp)
        if not removed:
            return
        # Removals last: a removal goes only when everything else is sent and answered. (A
        # removal Envoy rejected may be repeated along with later updates of its type: the
        # response after a NACK restates all that differs from Envoy's last good config.)
        first_time = removed & self.sent.get(t, {}).keys()
        for parent in (CLUSTER, LISTENER) if first_time else ():
            if self.uncovered(parent):
                raise Violation(f"{short} removes {first_time} before Envoy caught up")
        for u in self.subs if first_time else ():
            if u in before and before[u].awaiting_ack:
                raise Violation(f"{short} removes {first_time} while {SHORT_NAMES[u]} awaits")
            if self.unsent(u):
                raise Violation(
                    f"{short} removes {first_time} before {SHORT_NAMES[u]} {self.unsent(u)} is sent"
                )
        # ...and nothing Envoy runs (its last good config) still names what goes.
        for parent, child in _NAMES_OF.items():
            if child != t:
                continue
            for name, res in self.held.get(parent, {}).items():
                if named(parent, res.body) & removed:
                    raise Violation(
                        f"{short} removes {sorted(removed)}, still named by "
                        f"{SHORT_NAMES[parent]} {name!r} that Envoy runs"
                    )


# ----------------------------------------------------------------------------- the test

ops = st.one_of(
    st.tuples(st.just("snapshot"), configs()),
    st.tuples(st.just("step"), st.integers(1, 4)),
    st.tuples(st.just("stale"), st.sampled_from(PUSH_ORDER)),
    st.tuples(st.just("repeat"), st.sampled_from(PUSH_ORDER)),
    st.tuples(st.just("same"), st.none()),
    st.tuples(st.just("timeout"), st.none()),
    st.tuples(st.just("reject"), st.sampled_from(PUSH_ORDER)),
    st.tuples(
        st.just("subscribe"),
        st.one_of(
            st.tuples(st.just(ENDPOINT), st.frozensets(st.sampled_from(CLUSTERS))),
            st.tuples(st.just(ROUTE), st.frozensets(st.sampled_from(ROUTE_CONFIGS))),
        ),
    ),
)


def unchanged_by(envoy: CheckedEnvoy, what: str, action: Any) -> list[Any]:
    """Run ``action``; fail if it changed what the stream would send or reports."""
    stream = envoy.stream
    status, pending = stream.status(), stream.pending()
    events = action()
    if stream.status() != status or stream.pending() != pending:
        raise Violation(f"{what} changed the stream: {events}")
    return list(events or ())


def stale(envoy: CheckedEnvoy, t: str) -> None:
    status = envoy.stream.status().get(t)
    if status is None:
        return
    old = [n for n in envoy.nonces.get(t, []) if n != status.sent_nonce]
    nonce = old[-1] if old else "never-sent"
    names = sorted(envoy.subs.get(t) or ())
    if envoy.delta:
        request: Any = delta_req(t, nonce=nonce)
    else:
        request = sotw_req(t, names, nonce=nonce, version="stale")
    events = unchanged_by(envoy, "a stale nonce", partial(envoy.send, request))
    if events != [StaleNonce(t, nonce)]:
        raise Violation(f"a stale nonce meant {events}")


def repeat(envoy: CheckedEnvoy, t: str) -> None:
    """Envoy repeating its last request of ``t`` (already answered): nothing new."""
    if t not in envoy.subs or t not in envoy.last_nonce or t in envoy.warming_acks:
        return
    status = envoy.stream.status()[t]
    if status.awaiting_ack:
        return  # the latest response is not answered yet: this would be its answer
    nonce = envoy.last_nonce[t]
    if envoy.delta:
        request: Any = delta_req(t, nonce=nonce)
    else:
        request = sotw_req(t, sorted(envoy.subs[t] or ()), nonce=nonce)
    events = unchanged_by(envoy, "a repeated request", partial(envoy.send, request))
    if events:
        raise Violation(f"a repeated request meant {events}")


def fixed(config: Config) -> Config:
    """``config`` with every invalid resource replaced by a new, valid version."""
    return Config(
        tuple(
            ClusterSpec(
                c.name,
                c.eds,
                3 if c.timeout == BAD_TIMEOUT else c.timeout,
                82 if c.port == BAD_PORT else c.port,
            )
            for c in config.clusters
        ),
        tuple(
            ListenerSpec(x.name, x.route_config, 15003 if x.port == BAD_PORT else x.port)
            for x in config.listeners
        ),
        tuple(
            RouteSpec(r.name, r.to, "/v3" if r.prefix == BAD_PREFIX else r.prefix)
            for r in config.routes
        ),
    )


def renewed(config: Config) -> Config:
    """``config`` with a new version of every resource (none had this content before), and
    one more of each type, so that every type changes even if it was empty."""
    return Config(
        (
            *(ClusterSpec(c.name, c.eds, 4, 84) for c in config.clusters),
            ClusterSpec("z", True, 4, 84),
        ),
        (
            *(ListenerSpec(x.name, x.route_config, 15004) for x in config.listeners),
            ListenerSpec("lz", "rz", 15004),
        ),
        (*(RouteSpec(r.name, r.to, "/v4") for r in config.routes), RouteSpec("rz", "z", "/v4")),
    )


def run(mode: type[SotwStream | DeltaStream], warming: bool, first: Config, steps: Any) -> None:
    revision = 1
    config = first
    rejected_types = False
    stream = mode(nonce_prefix="h-")
    stream.set_snapshot(config.snapshot(revision))
    envoy = CheckedEnvoy(stream, warming=warming)
    envoy.start(CLUSTER, LISTENER)
    for op, arg in steps:
        if op == "snapshot":
            revision += 1
            config = arg
            stream.set_snapshot(config.snapshot(revision))
        elif op == "step":
            for _ in range(arg):
                if envoy.step() is None:
                    break
        elif op == "stale":
            stale(envoy, arg)
        elif op == "repeat":
            repeat(envoy, arg)
        elif op == "same":
            again = config.snapshot(revision)  # equal content, another object
            unchanged_by(envoy, "an identical snapshot", partial(stream.set_snapshot, again))
        elif op == "timeout":
            envoy.ack_warmed(timeout=True)
        elif op == "reject":  # toggles
            if envoy.reject.pop(arg, None) is None:
                envoy.reject[arg] = f"{SHORT_NAMES[arg]} rejected"
                rejected_types = True
        elif op == "subscribe":
            t, names = arg
            envoy.subscribe(t, set(names))
        envoy.check_synced()
    envoy.settle()
    envoy.check_synced()

    # Envoy stops rejecting, follows its dependencies, and comes to rest. A rejected
    # resource is never re-sent as it was (no blind retries): only a new version fixes it.
    final = renewed(config) if rejected_types else fixed(config)
    envoy.rejecting = False
    envoy.reject.clear()
    if final != config:
        revision += 1
        stream.set_snapshot(final.snapshot(revision))
    envoy.follow_dependencies(CLUSTER)
    envoy.follow_dependencies(LISTENER)
    envoy.settle()
    snap = stream.snapshot
    assert snap is not None
    assert inconsistencies(snap) == []
    for t in PUSH_ORDER:
        if t not in envoy.subs:
            assert not snap.of(t), f"{SHORT_NAMES[t]} never subscribed"
            continue
        held = {n: r.body.value for n, r in envoy.held.get(t, {}).items()}
        assert held == envoy.wanted(t), f"{SHORT_NAMES[t]}: a lost update"
        status = stream.status()[t]
        assert not status.awaiting_ack
        if status.rejected:
            # Only when Envoy rejected exactly what it runs (an empty type: nothing to renew).
            assert status.last_nack_version == snap.version(t, envoy.subs[t])
    assert envoy.subs.get(ENDPOINT, set()) == envoy.references(CLUSTER)
    assert envoy.subs.get(ROUTE, set()) == envoy.references(LISTENER)
    assert stream.synced()
    assert stream.next_response() is None
    stream.set_snapshot(final.snapshot(revision + 1))
    assert stream.next_response() is None, "an identical snapshot was sent again"
    assert stream.synced()


SETTINGS = settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.mark.parametrize("mode", [SotwStream, DeltaStream], ids=["sotw", "delta"])
@SETTINGS
@given(
    warming=st.booleans(),
    first=configs(),
    steps=st.lists(ops, max_size=30),
)
def test_invariants_hold_for_any_history(
    mode: type[SotwStream | DeltaStream], warming: bool, first: Config, steps: Any
) -> None:
    run(mode, warming, first, steps)
