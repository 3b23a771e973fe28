"""Table and scenario tests for the sans-I/O ADS state machines (SotW and delta).

Every test drives a stream with real DiscoveryRequests built from tiny real protos and
asserts the exact responses that come out. ``FakeEnvoy`` plays the client side the way
Envoy does: it ACKs, and after applying clusters/listeners it subscribes to their
endpoints/routes; with ``warming=True`` it also holds a CDS (LDS) ACK until every cluster
(listener) it applied got its endpoints (routes), as Envoy does.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, config_source_pb2, extension_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2
from google.rpc import status_pb2

from tsunagi.xds.dependencies import DependencyCache, cluster_eds_names, listener_route_names
from tsunagi.xds.protocol import (
    Ack,
    DeltaStream,
    Nack,
    NodeIdentified,
    SotwStream,
    StaleNonce,
    Subscribed,
    Unsubscribed,
)
from tsunagi.xds.resources import (
    CLUSTER,
    ENDPOINT,
    EXTENSION_CONFIG,
    LISTENER,
    ROUTE,
    SECRET,
    SHORT_NAMES,
    Resource,
    Snapshot,
    type_version,
)

# ------------------------------------------------------------------------------ resources


def _ads() -> config_source_pb2.ConfigSource:
    src = config_source_pb2.ConfigSource()
    src.ads.SetInParent()
    return src


def cluster(name: str, *, eds: bool = True, ads: bool = True, timeout: int = 1) -> Resource:
    c = cluster_pb2.Cluster(name=name)
    c.connect_timeout.seconds = timeout
    if eds:
        c.type = cluster_pb2.Cluster.EDS
        if ads:
            c.eds_cluster_config.eds_config.CopyFrom(_ads())
        else:
            c.eds_cluster_config.eds_config.path_config_source.path = "/etc/eds.yaml"
    else:
        c.type = cluster_pb2.Cluster.STRICT_DNS
    return Resource.pack(name, c)


def cla(name: str, port: int = 80) -> Resource:
    address = address_pb2.Address(
        socket_address=address_pb2.SocketAddress(address="10.0.0.1", port_value=port)
    )
    lb = endpoint_components_pb2.LbEndpoint(
        endpoint=endpoint_components_pb2.Endpoint(address=address)
    )
    return Resource.pack(
        name,
        endpoint_pb2.ClusterLoadAssignment(
            cluster_name=name,
            endpoints=[endpoint_components_pb2.LocalityLbEndpoints(lb_endpoints=[lb])],
        ),
    )


def listener(name: str, route_name: str, port: int = 15001) -> Resource:
    hcm = hcm_pb2.HttpConnectionManager(
        stat_prefix=name, rds=hcm_pb2.Rds(route_config_name=route_name, config_source=_ads())
    )
    typed = any_pb2.Any()
    typed.Pack(hcm)
    chain = listener_components_pb2.FilterChain(
        filters=[listener_components_pb2.Filter(name="hcm", typed_config=typed)]
    )
    lst = listener_pb2.Listener(name=name, filter_chains=[chain])
    lst.address.socket_address.port_value = port
    return Resource.pack(name, lst)


def route(name: str, to: str, prefix: str = "/") -> Resource:
    action = route_components_pb2.Route(
        match=route_components_pb2.RouteMatch(prefix=prefix),
        route=route_components_pb2.RouteAction(cluster=to),
    )
    vhost = route_components_pb2.VirtualHost(name="all", domains=["*"], routes=[action])
    return Resource.pack(name, route_pb2.RouteConfiguration(name=name, virtual_hosts=[vhost]))


def world(
    clusters: Iterable[str] = ("a", "b"),
    *,
    port: int = 80,
    listeners: Iterable[str] = ("l",),
    to: str = "a",
    timeout: int = 1,
    lport: int = 15001,
    revision: int = 1,
) -> Snapshot:
    """A node's config: EDS clusters with endpoints, listeners ``x`` routing via ``rt-x``."""
    cs = list(clusters)
    ls = list(listeners)
    return Snapshot.build(
        {
            CLUSTER: [cluster(c, timeout=timeout) for c in cs],
            ENDPOINT: [cla(c, port) for c in cs],
            LISTENER: [listener(x, f"rt-{x}", lport) for x in ls],
            ROUTE: [route(f"rt-{x}", to) for x in ls],
        },
        revision,
    )


# ------------------------------------------------------------------------- wire helpers

_MESSAGES: dict[str, Any] = {
    CLUSTER: cluster_pb2.Cluster,
    ENDPOINT: endpoint_pb2.ClusterLoadAssignment,
    LISTENER: listener_pb2.Listener,
    ROUTE: route_pb2.RouteConfiguration,
    EXTENSION_CONFIG: extension_pb2.TypedExtensionConfig,
}


def name_of(body: any_pb2.Any) -> str:
    msg = _MESSAGES[body.type_url]()
    body.Unpack(msg)
    return str(msg.cluster_name if body.type_url == ENDPOINT else msg.name)


def sotw_req(
    t: str,
    names: Iterable[str] = (),
    nonce: str = "",
    version: str = "",
    error: str | None = None,
    node: str | None = None,
) -> discovery_pb2.DiscoveryRequest:
    req = discovery_pb2.DiscoveryRequest(
        type_url=t, resource_names=list(names), response_nonce=nonce, version_info=version
    )
    if error is not None:
        req.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
    if node is not None:
        req.node.CopyFrom(base_pb2.Node(id=node, cluster="svc"))
    return req


def delta_req(
    t: str,
    sub: Iterable[str] = (),
    unsub: Iterable[str] = (),
    nonce: str = "",
    error: str | None = None,
    initial: dict[str, str] | None = None,
    node: str | None = None,
) -> discovery_pb2.DeltaDiscoveryRequest:
    req = discovery_pb2.DeltaDiscoveryRequest(
        type_url=t,
        resource_names_subscribe=list(sub),
        resource_names_unsubscribe=list(unsub),
        response_nonce=nonce,
        initial_resource_versions=initial or {},
    )
    if error is not None:
        req.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
    if node is not None:
        req.node.CopyFrom(base_pb2.Node(id=node, cluster="svc"))
    return req


def summary(
    resp: Any,
) -> tuple[str, tuple[str, ...]] | tuple[str, tuple[str, ...], tuple[str, ...]]:
    """("CDS", names) for SotW, ("CDS", names, removed) for delta."""
    short = SHORT_NAMES[resp.type_url]
    if isinstance(resp, discovery_pb2.DeltaDiscoveryResponse):
        return short, tuple(r.name for r in resp.resources), tuple(resp.removed_resources)
    return short, tuple(name_of(r) for r in resp.resources)


def drain(stream: SotwStream | DeltaStream) -> list[Any]:
    out = []
    while (resp := stream.next_response()) is not None:
        out.append(resp)
    return out


class FakeEnvoy:
    """The client side of one stream, behaving like Envoy (for either protocol variant)."""

    def __init__(self, stream: SotwStream | DeltaStream, *, warming: bool = False) -> None:
        self.stream = stream
        self.warming = warming
        self.warming_acks: dict[str, Any] = {}  # CDS/LDS response whose ACK waits for warming
        self.delta = isinstance(stream, DeltaStream)
        self.subs: dict[str, set[str] | None] = {}  # None: wildcard
        self.held: dict[str, dict[str, Resource]] = {}
        self.last_nonce: dict[str, str] = {}
        self.events: list[Any] = []
        self.log: list[Any] = []
        self.reject: dict[str, str] = {}  # type -> NACK message to answer with

    def send(self, req: Any) -> list[Any]:
        events = self.stream.receive(req)
        self.events += events
        return events

    def start(self, *types: str, initial: dict[str, dict[str, str]] | None = None) -> None:
        for t in types:
            self.subs[t] = None
            if self.delta:
                init = (initial or {}).get(t)
                self.send(delta_req(t, initial=init, node="n1"))
            else:
                self.send(sotw_req(t, node="n1"))

    def subscribe(self, t: str, names: set[str]) -> None:
        old = self.subs.get(t) or set()
        self.subs[t] = set(names)
        if self.delta:
            self.send(delta_req(t, sub=sorted(names - old), unsub=sorted(old - names)))
        else:
            self.send(sotw_req(t, sorted(names), nonce=self.last_nonce.get(t, "")))
        # Envoy forgets what it no longer subscribes to (both variants).
        for n in old - names:
            self.held.get(t, {}).pop(n, None)

    def apply(self, resp: Any) -> None:
        t = resp.type_url
        held = self.held.setdefault(t, {})
        if self.delta:
            for r in resp.resources:
                held[r.name] = Resource(r.name, r.resource, r.version)
            for n in resp.removed_resources:
                held.pop(n, None)
        elif t in (ENDPOINT, ROUTE):
            # SotW EDS/RDS responses carry what changed; absence removes nothing.
            held.update({name_of(b): Resource(name_of(b), b, "") for b in resp.resources})
        else:
            self.held[t] = {name_of(b): Resource(name_of(b), b, "") for b in resp.resources}

    def answer(self, resp: Any) -> None:
        t = resp.type_url
        self.last_nonce[t] = resp.nonce
        error = self.reject.get(t)
        if error is None:
            self.apply(resp)
        if self.delta:
            self.send(delta_req(t, nonce=resp.nonce, error=error))
        else:
            subs = self.subs.get(t)
            version = resp.version_info if error is None else ""
            self.send(sotw_req(t, sorted(subs or ()), resp.nonce, version, error))

    def references(self, t: str) -> set[str]:
        """The endpoint (route) names the held clusters (listeners) need."""
        refs = cluster_eds_names if t == CLUSTER else listener_route_names
        return {n for r in self.held.get(t, {}).values() for n in refs(r.body)}

    def follow_dependencies(self, t: str) -> None:
        # Like Envoy: after applying clusters/listeners, ask for their endpoints/routes.
        if t not in (CLUSTER, LISTENER):
            return
        want = self.references(t)
        child = ENDPOINT if t == CLUSTER else ROUTE
        if want != (self.subs.get(child) or set()) or child not in self.subs:
            self.subscribe(child, want)

    def ack_warmed(self) -> None:
        # A held CDS (LDS) ACK goes once every cluster (listener) has its endpoints (routes).
        for t, resp in list(self.warming_acks.items()):
            child = ENDPOINT if t == CLUSTER else ROUTE
            if self.references(t) <= set(self.held.get(child, {})):
                del self.warming_acks[t]
                self.answer(resp)

    def step(self) -> Any | None:
        resp = self.stream.next_response()
        if resp is None:
            return None
        t = resp.type_url
        self.log.append(summary(resp))
        if self.warming and t in (CLUSTER, LISTENER) and t not in self.reject:
            # Apply now, ACK once warmed (Envoy's nonce bookkeeping sees the response now).
            self.last_nonce[t] = resp.nonce
            self.apply(resp)
            self.warming_acks[t] = resp
        else:
            self.answer(resp)
        if t not in self.reject:
            self.follow_dependencies(t)
        self.ack_warmed()
        return resp

    def run(self) -> list[Any]:
        """Exchange messages until the stream has nothing more to say; the wire log."""
        start = len(self.log)
        for _ in range(100):
            if self.step() is None:
                return self.log[start:]
        raise AssertionError("stream never settled")


MODES = [pytest.param(SotwStream, id="sotw"), pytest.param(DeltaStream, id="delta")]


def connected(
    mode: type[SotwStream | DeltaStream], snap: Snapshot, *, warming: bool = False
) -> FakeEnvoy:
    """A stream that went through the initial flow for ``snap`` and is fully ACKed."""
    stream = mode(nonce_prefix="t-")
    stream.set_snapshot(snap)
    envoy = FakeEnvoy(stream, warming=warming)
    envoy.start(CLUSTER, LISTENER)
    envoy.run()
    assert stream.synced(snap)
    return envoy


def types_sent(log: Sequence[Any]) -> list[str]:
    return [entry[0] for entry in log]


# ---------------------------------------------------------------------- dependency parsing


def test_dependencies_are_extracted_from_real_protos() -> None:
    assert cluster_eds_names(cluster("a").body) == {"a"}
    assert cluster_eds_names(cluster("a", eds=False).body) == frozenset()
    # Endpoints fetched from a file never arrive on this stream: nothing to wait for.
    assert cluster_eds_names(cluster("a", ads=False).body) == frozenset()
    c = cluster_pb2.Cluster(name="outbound|80||x", type=cluster_pb2.Cluster.EDS)
    c.eds_cluster_config.service_name = "x-endpoints"
    c.eds_cluster_config.eds_config.CopyFrom(_ads())
    assert cluster_eds_names(Resource.pack("x", c).body) == {"x-endpoints"}
    assert listener_route_names(listener("l", "rt-l").body) == {"rt-l"}
    assert listener_route_names(any_pb2.Any(value=b"\xff\xff")) == frozenset()


def test_dependency_cache_decodes_each_version_once() -> None:
    cache = DependencyCache()
    res = cluster("a")
    assert cache.references(CLUSTER, res) == {"a"}
    # Same name and version: answered from the cache, even with the body gone.
    assert cache.references(CLUSTER, Resource("a", any_pb2.Any(), res.version)) == {"a"}
    assert cache.required(LISTENER, [listener("l1", "r1"), listener("l2", "r2")]) == {
        "r1",
        "r2",
    }


# ------------------------------------------------------------------ SotW: the basic flow


def test_sotw_initial_flow_cds_eds_lds_rds_with_exact_responses() -> None:
    snap = world()
    s = SotwStream(nonce_prefix="s1-")
    s.set_snapshot(snap)
    assert s.receive(sotw_req(CLUSTER, node="n1")) == [
        NodeIdentified("n1", "svc"),
        Subscribed(CLUSTER, frozenset({"*"})),
    ]
    assert s.node is not None and s.node.id == "n1"
    assert s.receive(sotw_req(LISTENER)) == [Subscribed(LISTENER, frozenset({"*"}))]

    cds = s.next_response()
    assert cds.type_url == CLUSTER
    assert cds.version_info == snap.version(CLUSTER)
    assert cds.nonce == "s1-1"
    assert list(cds.resources) == [snap.of(CLUSTER)["a"].body, snap.of(CLUSTER)["b"].body]
    # LDS waits for the CDS answer, and after it for Envoy to ask for the clusters' EDS.
    assert s.next_response() is None
    assert s.receive(sotw_req(CLUSTER, nonce="s1-1", version=cds.version_info)) == [
        Ack(CLUSTER, cds.version_info, "s1-1")
    ]
    assert s.next_response() is None
    assert not s.pending()

    assert s.receive(sotw_req(ENDPOINT, ["a", "b"])) == [
        Subscribed(ENDPOINT, frozenset({"a", "b"}))
    ]
    assert s.pending()
    eds = s.next_response()
    assert (eds.type_url, eds.nonce) == (ENDPOINT, "s1-2")
    assert eds.version_info == snap.version(ENDPOINT, ["a", "b"])
    assert [name_of(r) for r in eds.resources] == ["a", "b"]
    assert s.next_response() is None
    s.receive(sotw_req(ENDPOINT, ["a", "b"], nonce="s1-2", version=eds.version_info))

    lds = s.next_response()
    assert (lds.type_url, lds.nonce, lds.version_info) == (
        LISTENER,
        "s1-3",
        snap.version(LISTENER),
    )
    assert s.next_response() is None
    s.receive(sotw_req(LISTENER, nonce="s1-3", version=lds.version_info))
    assert s.next_response() is None  # RDS not requested yet
    assert not s.synced()
    s.receive(sotw_req(ROUTE, ["rt-l"]))
    rds = s.next_response()
    assert [name_of(r) for r in rds.resources] == ["rt-l"]
    assert rds.version_info == snap.version(ROUTE, ["rt-l"])
    assert not s.synced()
    s.receive(sotw_req(ROUTE, ["rt-l"], nonce=rds.nonce, version=rds.version_info))
    assert s.synced(snap)
    assert s.next_response() is None

    status = s.status()
    assert status[CLUSTER].acked_version == snap.version(CLUSTER)
    assert status[ENDPOINT].names == {"a", "b"}
    assert not any(st.awaiting_ack or st.rejected for st in status.values())


@pytest.mark.parametrize("mode", MODES)
def test_nothing_is_sent_before_a_snapshot_or_a_request(mode: type[SotwStream]) -> None:
    s = mode()
    assert s.next_response() is None
    s.set_snapshot(world())
    assert s.next_response() is None  # Envoy asked for nothing yet
    envoy = FakeEnvoy(s)
    envoy.start(LISTENER)
    # Only LDS was requested; CDS is never sent unasked.
    assert types_sent(envoy.run()) == ["LDS", "RDS"]


@pytest.mark.parametrize("mode", MODES)
def test_full_flow_order_for_both_variants(mode: type[SotwStream]) -> None:
    stream = mode()
    stream.set_snapshot(world())
    envoy = FakeEnvoy(stream)
    envoy.start(CLUSTER, LISTENER)
    log = envoy.run()
    if mode is SotwStream:
        assert log == [
            ("CDS", ("a", "b")),
            ("EDS", ("a", "b")),
            ("LDS", ("l",)),
            ("RDS", ("rt-l",)),
        ]
    else:
        assert log == [
            ("CDS", ("a", "b"), ()),
            ("EDS", ("a", "b"), ()),
            ("LDS", ("l",), ()),
            ("RDS", ("rt-l",), ()),
        ]
    assert stream.synced()
    assert [type(e) for e in envoy.events].count(Ack) == 4


# ------------------------------------------------------------------------- ACK / NACK


@pytest.mark.parametrize("mode", MODES)
def test_nack_is_recorded_and_never_retried(mode: type[SotwStream]) -> None:
    envoy = connected(mode, world())
    s = envoy.stream
    bad = world(timeout=2, revision=2)
    s.set_snapshot(bad)
    envoy.reject[CLUSTER] = "cluster a: bad timeout"
    assert types_sent(envoy.run()) == ["CDS"]
    nack = envoy.events[-1]
    assert isinstance(nack, Nack)
    assert nack.message == "cluster a: bad timeout"
    assert nack.version == s.status()[CLUSTER].sent_version
    st = s.status()[CLUSTER]
    assert st.rejected and st.last_nack_message == "cluster a: bad timeout"
    assert st.acked_version == world().version(CLUSTER)
    assert not s.synced(bad)

    # Same content again (new revision, same versions): nothing is re-sent.
    del envoy.reject[CLUSTER]
    s.set_snapshot(world(timeout=2, revision=3))
    assert envoy.run() == []
    # A changed snapshot is sent, and its ACK clears the rejection.
    fixed = world(timeout=3, revision=4)
    s.set_snapshot(fixed)
    assert types_sent(envoy.run()) == ["CDS"]
    assert not s.status()[CLUSTER].rejected
    assert s.status()[CLUSTER].last_nack_message == "cluster a: bad timeout"
    assert s.synced(fixed)


@pytest.mark.parametrize("mode", MODES)
def test_nack_counts_as_an_answer_for_ordering(mode: type[SotwStream]) -> None:
    envoy = connected(mode, world())
    envoy.reject[ENDPOINT] = "bad endpoints"
    envoy.stream.set_snapshot(world(port=81, to="b", revision=2))
    # EDS is rejected, yet RDS (which changed too) still goes out afterwards.
    assert types_sent(envoy.run()) == ["EDS", "RDS"]


def test_sotw_stale_nonce_is_ignored() -> None:
    envoy = connected(SotwStream, world())
    s = envoy.stream
    s.set_snapshot(world(timeout=2, revision=2))
    cds = s.next_response()
    before = s.status()
    # An answer to an older response, even one claiming an error or other names.
    events = s.receive(sotw_req(CLUSTER, ["x"], nonce="t-1", error="old"))
    assert events == [StaleNonce(CLUSTER, "t-1")]
    assert s.status() == before
    assert s.next_response() is None
    assert s.receive(sotw_req(CLUSTER, nonce="bogus")) == [StaleNonce(CLUSTER, "bogus")]
    assert s.receive(sotw_req(CLUSTER, nonce=cds.nonce, version=cds.version_info)) == [
        Ack(CLUSTER, cds.version_info, cds.nonce)
    ]


def test_sotw_fresh_request_is_always_answered_even_with_our_version() -> None:
    snap = world()
    s = SotwStream()
    s.set_snapshot(snap)
    # Reconnect: Envoy already has this version, but a nonce-less request is a subscription.
    s.receive(sotw_req(CLUSTER, version=snap.version(CLUSTER), node="n1"))
    cds = s.next_response()
    assert cds is not None and cds.version_info == snap.version(CLUSTER)


def test_sotw_repeated_latest_nonce_with_same_names_sends_nothing() -> None:
    envoy = connected(SotwStream, world())
    s = envoy.stream
    nonce = envoy.last_nonce[ENDPOINT]
    assert s.receive(sotw_req(ENDPOINT, ["a", "b"], nonce=nonce)) == []
    assert s.next_response() is None


# --------------------------------------------------------------- subscribe / unsubscribe


@pytest.mark.parametrize(
    ("names", "events", "sent"),
    [
        # Envoy already holds what it still subscribes to, and a missing name has nothing to
        # send, so these responses carry no resources, only the new set's version.
        pytest.param(["a"], [Unsubscribed(ENDPOINT, frozenset({"b"}))], (), id="drop-b"),
        pytest.param(
            ["a", "b", "c"], [Subscribed(ENDPOINT, frozenset({"c"}))], (), id="add-missing"
        ),
        pytest.param(
            ["b", "zz"],
            [Subscribed(ENDPOINT, frozenset({"zz"})), Unsubscribed(ENDPOINT, frozenset({"a"}))],
            (),
            id="swap",
        ),
        pytest.param([], [Unsubscribed(ENDPOINT, frozenset({"a", "b"}))], (), id="drop-all"),
    ],
)
def test_sotw_subscription_change_triggers_response_with_new_set(
    names: list[str], events: list[Any], sent: tuple[str, ...]
) -> None:
    envoy = connected(SotwStream, world())
    s = envoy.stream
    got = s.receive(sotw_req(ENDPOINT, names, nonce=envoy.last_nonce[ENDPOINT]))
    assert got == events
    resp = s.next_response()
    assert summary(resp) == ("EDS", sent)
    assert resp.version_info == world().version(ENDPOINT, names)
    assert s.status()[ENDPOINT].names == set(names)


@pytest.mark.parametrize(
    ("request_", "events", "sent"),
    [
        pytest.param(
            delta_req(ENDPOINT, sub=["c"]),
            [Subscribed(ENDPOINT, frozenset({"c"}))],
            ("EDS", ("c",), ()),
            id="subscribe-existing",
        ),
        pytest.param(
            delta_req(ENDPOINT, sub=["nope"]),
            [Subscribed(ENDPOINT, frozenset({"nope"}))],
            # Envoy waits for an answer for every name: a missing one is reported removed.
            ("EDS", (), ("nope",)),
            id="subscribe-missing",
        ),
        pytest.param(
            delta_req(ENDPOINT, unsub=["a"]),
            [Unsubscribed(ENDPOINT, frozenset({"a"}))],
            None,
            id="unsubscribe-sends-nothing",
        ),
    ],
)
def test_delta_subscription_changes(request_: Any, events: list[Any], sent: Any) -> None:
    snap = world(("a", "b", "c"))
    envoy = FakeEnvoy(DeltaStream())
    s = envoy.stream
    s.set_snapshot(snap)
    envoy.start(CLUSTER)
    envoy.run()
    # Start from an EDS subscription to a and b only.
    s.receive(delta_req(ENDPOINT, unsub=["c"]))
    assert s.next_response() is None
    assert s.receive(request_) == events
    resp = s.next_response()
    assert (summary(resp) if resp else None) == sent
    assert s.next_response() is None


def test_delta_unsubscribed_name_is_forgotten_and_resent_on_resubscribe() -> None:
    envoy = connected(DeltaStream, world())
    s = envoy.stream
    s.receive(delta_req(ENDPOINT, unsub=["b"]))
    assert s.next_response() is None
    s.receive(delta_req(ENDPOINT, sub=["b"]))
    assert summary(s.next_response()) == ("EDS", ("b",), ())


def test_delta_stale_nonce_still_applies_subscription_changes() -> None:
    envoy = connected(DeltaStream, world())
    s = envoy.stream
    s.set_snapshot(world(port=81, revision=2))
    eds = s.next_response()
    events = s.receive(delta_req(ENDPOINT, unsub=["b"], nonce="t-1"))
    assert events == [StaleNonce(ENDPOINT, "t-1"), Unsubscribed(ENDPOINT, frozenset({"b"}))]
    assert s.status()[ENDPOINT].names == {"a"}
    assert s.status()[ENDPOINT].awaiting_ack
    s.receive(delta_req(ENDPOINT, nonce=eds.nonce))
    assert s.next_response() is None


def test_delta_wildcard_unsubscribe_needs_confirmation() -> None:
    # Envoy holding a resource through both the wildcard and an explicit name asks the
    # server to confirm the wildcard still covers it when dropping the explicit name.
    envoy = connected(DeltaStream, world())
    s = envoy.stream
    s.receive(delta_req(CLUSTER, sub=["a"]))
    assert summary(s.next_response()) == ("CDS", ("a",), ())
    s.receive(delta_req(CLUSTER, nonce=s.status()[CLUSTER].sent_nonce or ""))
    s.receive(delta_req(CLUSTER, unsub=["a"]))
    assert summary(s.next_response()) == ("CDS", ("a",), ())


# --------------------------------------------------------------------- delta reconnect


def test_delta_reconnect_with_matching_versions_sends_nothing() -> None:
    snap = world()
    s = DeltaStream()
    s.set_snapshot(snap)
    held = {t: {n: r.version for n, r in snap.of(t).items()} for t in snap.resources}
    assert s.receive(delta_req(CLUSTER, initial=held[CLUSTER], node="n1")) == [
        NodeIdentified("n1", "svc"),
        Subscribed(CLUSTER, frozenset({"*"})),
    ]
    s.receive(delta_req(ENDPOINT, sub=["a", "b"], initial=held[ENDPOINT]))
    s.receive(delta_req(LISTENER, initial=held[LISTENER]))
    s.receive(delta_req(ROUTE, sub=["rt-l"], initial=held[ROUTE]))
    assert drain(s) == []
    assert s.synced(snap)


def test_delta_reconnect_sends_only_differences_and_removes_vanished_last() -> None:
    old = world(("a", "b", "gone"), port=80)
    new = world(("a", "b"), port=81)
    s = DeltaStream()
    envoy = FakeEnvoy(s)
    # The adapter feeds the first request before the snapshot is known: must still work.
    envoy.start(CLUSTER, initial={CLUSTER: {n: r.version for n, r in old.of(CLUSTER).items()}})
    envoy.held = {t: dict(old.of(t)) for t in old.resources}
    s.set_snapshot(new)
    envoy.subs[ENDPOINT] = {"a", "b", "gone"}
    s.receive(
        delta_req(
            ENDPOINT,
            sub=["a", "b", "gone"],
            initial={n: r.version for n, r in old.of(ENDPOINT).items()},
        )
    )
    envoy.start(LISTENER, initial={LISTENER: {"l": old.of(LISTENER)["l"].version}})
    envoy.subs[ROUTE] = {"rt-l"}
    s.receive(delta_req(ROUTE, sub=["rt-l"], initial={"rt-l": old.of(ROUTE)["rt-l"].version}))
    # Clusters unchanged; endpoints of a and b changed; "gone" goes only at the very end.
    assert envoy.run() == [("EDS", ("a", "b"), ()), ("CDS", (), ("gone",))]
    assert s.status()[ENDPOINT].names == {"a", "b"}
    assert s.synced(new)


def test_delta_first_wildcard_request_is_answered_even_when_empty() -> None:
    s = DeltaStream()
    s.set_snapshot(Snapshot.build({}, 1))
    s.receive(delta_req(CLUSTER, node="n1"))
    resp = s.next_response()
    assert summary(resp) == ("CDS", (), ())
    assert resp.system_version_info == Snapshot().version(CLUSTER)


def test_delta_explicit_star_subscribes_wildcard() -> None:
    s = DeltaStream()
    s.set_snapshot(world())
    assert s.receive(delta_req(CLUSTER, sub=["*"])) == [Subscribed(CLUSTER, frozenset({"*"}))]
    assert summary(s.next_response()) == ("CDS", ("a", "b"), ())


# ---------------------------------------------------------------- changes after settling


# (new snapshot, types sent over SotW, types sent over delta) after the initial world()
CHANGES = [
    pytest.param(world(revision=9), [], [], id="nothing-changed"),
    pytest.param(world(port=81, revision=2), ["EDS"], ["EDS"], id="endpoints-only"),
    pytest.param(world(to="b", revision=2), ["RDS"], ["RDS"], id="routes-only"),
    pytest.param(world(timeout=5, revision=2), ["CDS"], ["CDS"], id="clusters-only"),
    pytest.param(world(lport=8080, revision=2), ["LDS"], ["LDS"], id="listeners-only"),
    pytest.param(
        world(port=81, timeout=5, to="b", lport=8080, revision=2),
        ["CDS", "EDS", "LDS", "RDS"],
        ["CDS", "EDS", "LDS", "RDS"],
        id="every-type-in-place",
    ),
    pytest.param(
        world(("a", "c"), port=81, listeners=("m",), timeout=5, to="c", revision=2),
        # Make (b and l kept), then break: l first, then b. SotW re-sends the shrunk
        # RDS/EDS subscriptions; delta has nothing to say when Envoy unsubscribes.
        ["CDS", "EDS", "LDS", "RDS", "LDS", "RDS", "CDS", "EDS"],
        ["CDS", "EDS", "LDS", "RDS", "LDS", "CDS"],
        id="everything-renamed",
    ),
    pytest.param(
        Snapshot.build({}, 2),
        ["LDS", "RDS", "CDS", "EDS"],
        ["LDS", "CDS"],
        id="everything-removed",
    ),
]


@pytest.mark.parametrize("warming", [False, True], ids=["acks-at-once", "acks-after-warming"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("change", "sotw", "delta"), CHANGES)
def test_push_order_after_a_change(
    mode: type[SotwStream], change: Snapshot, sotw: list[str], delta: list[str], warming: bool
) -> None:
    envoy = connected(mode, world(), warming=warming)
    envoy.stream.set_snapshot(change)
    assert types_sent(envoy.run()) == (sotw if mode is SotwStream else delta)
    assert envoy.stream.synced(change)
    assert not envoy.warming_acks


def test_delta_endpoint_only_change_sends_only_changed_assignments() -> None:
    envoy = connected(DeltaStream, world(("a", "b", "c")))
    s = envoy.stream
    changed = Snapshot.build(
        {
            CLUSTER: world(("a", "b", "c")).of(CLUSTER).values(),
            ENDPOINT: [cla("a"), cla("b", 81), cla("c")],
            LISTENER: world().of(LISTENER).values(),
            ROUTE: world().of(ROUTE).values(),
        },
        2,
    )
    s.set_snapshot(changed)
    resp = s.next_response()
    assert summary(resp) == ("EDS", ("b",), ())
    assert resp.resources[0].version == cla("b", 81).version
    assert resp.resources[0].resource == cla("b", 81).body
    assert resp.system_version_info == changed.version(ENDPOINT, ["a", "b", "c"])


@pytest.mark.parametrize("mode", MODES)
def test_every_type_changing_at_once_holds_the_order_step_by_step(
    mode: type[SotwStream],
) -> None:
    envoy = connected(mode, world())
    s = envoy.stream
    after = world(port=81, timeout=5, to="b", lport=8080, revision=2)
    s.set_snapshot(after)
    cds = s.next_response()
    assert SHORT_NAMES[cds.type_url] == "CDS"
    # While CDS awaits its answer only its dependent type may follow, nothing after it.
    eds = s.next_response()
    assert SHORT_NAMES[eds.type_url] == "EDS"
    assert s.next_response() is None
    envoy.answer(eds)
    assert s.next_response() is None  # LDS waits for the CDS ACK
    envoy.answer(cds)
    envoy.follow_dependencies(CLUSTER)
    lds = s.next_response()
    assert SHORT_NAMES[lds.type_url] == "LDS"
    rds = s.next_response()
    assert SHORT_NAMES[rds.type_url] == "RDS"
    assert s.next_response() is None
    envoy.answer(rds)
    envoy.answer(lds)
    envoy.follow_dependencies(LISTENER)
    assert s.next_response() is None
    assert s.synced(after)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("eds_request_first", [False, True], ids=["ack-first", "eds-first"])
def test_new_eds_cluster_holds_lds_until_envoy_subscribes(
    mode: type[SotwStream], eds_request_first: bool
) -> None:
    envoy = connected(mode, world())
    s = envoy.stream
    # A new cluster "c" and a new listener whose routes go to it.
    after = world(("a", "b", "c"), to="c", listeners=("l", "m"), revision=2)
    s.set_snapshot(after)
    cds = s.next_response()
    assert summary(cds)[:2] == (("CDS", ("a", "b", "c")) if mode is SotwStream else ("CDS", ("c",)))
    expected_eds = ("EDS", ("c",))  # SotW too: a and b are unchanged
    if eds_request_first:
        # Envoy asks for c's endpoints before it ACKs CDS (it ACKs once c warmed): EDS goes,
        # LDS still waits for the CDS ACK.
        envoy.apply(cds)
        envoy.follow_dependencies(CLUSTER)
        eds = s.next_response()
        assert summary(eds)[:2] == expected_eds
        assert s.next_response() is None
        envoy.answer(eds)
        assert s.next_response() is None
        envoy.answer(cds)
    else:
        envoy.answer(cds)
        # ACKed, but Envoy has not asked for c's endpoints yet: c is still warming.
        assert s.next_response() is None
        assert not s.pending()
        envoy.follow_dependencies(CLUSTER)
        eds = s.next_response()
        assert summary(eds)[:2] == expected_eds
        assert s.next_response() is None
        envoy.answer(eds)
    assert types_sent(envoy.run()) == ["LDS", "RDS"]
    assert s.synced(after)


@pytest.mark.parametrize("mode", MODES)
def test_envoy_acks_cds_and_lds_only_after_warming(mode: type[SotwStream]) -> None:
    # Envoy 1.40's real sequence: a CDS response adding an EDS cluster is ACKed only once
    # that cluster has its endpoints, which Envoy asks for in between; the same for a new
    # listener and its route config. Holding EDS (RDS) until the ACK would deadlock.
    delta = mode is DeltaStream
    envoy = connected(mode, world())
    s = envoy.stream
    after = Snapshot.build(
        {
            CLUSTER: [cluster("a"), cluster("b"), cluster("c")],
            ENDPOINT: [cla("a"), cla("b"), cla("c")],
            LISTENER: [listener("l", "rt-l"), listener("m", "rt-m", 15002)],
            ROUTE: [route("rt-l", "a"), route("rt-m", "c")],
        },
        2,
    )
    s.set_snapshot(after)

    cds = s.next_response()
    assert summary(cds) == (("CDS", ("c",), ()) if delta else ("CDS", ("a", "b", "c")))
    assert s.next_response() is None  # nothing else until Envoy reacts
    # Envoy applies the clusters and subscribes to c's endpoints, without ACKing CDS.
    envoy.apply(cds)
    envoy.follow_dependencies(CLUSTER)
    assert envoy.events[-1] == Subscribed(ENDPOINT, frozenset({"c"}))
    eds = s.next_response()
    assert summary(eds) == (("EDS", ("c",), ()) if delta else ("EDS", ("c",)))
    assert s.status()[CLUSTER].awaiting_ack
    assert s.next_response() is None  # listeners wait for the CDS ACK
    envoy.answer(eds)
    assert s.next_response() is None
    assert not s.pending()
    envoy.answer(cds)  # c warmed

    lds = s.next_response()
    assert summary(lds) == (("LDS", ("m",), ()) if delta else ("LDS", ("l", "m")))
    assert s.next_response() is None  # rt-m not asked for yet; rt-l unchanged
    # Envoy applies the listeners and subscribes to rt-m, without ACKing LDS.
    envoy.apply(lds)
    envoy.follow_dependencies(LISTENER)
    assert envoy.events[-1] == Subscribed(ROUTE, frozenset({"rt-m"}))
    rds = s.next_response()
    assert summary(rds) == (("RDS", ("rt-m",), ()) if delta else ("RDS", ("rt-m",)))
    assert s.status()[LISTENER].awaiting_ack
    assert s.next_response() is None
    envoy.answer(rds)
    assert s.next_response() is None
    assert not s.synced(after)
    envoy.answer(lds)  # m warmed
    assert s.next_response() is None
    assert s.synced(after)
    assert [type(e) for e in envoy.events[-6:]] == [Subscribed, Ack, Ack, Subscribed, Ack, Ack]


@pytest.mark.parametrize("mode", MODES)
def test_new_listener_gets_routes_before_its_lds_ack(mode: type[SotwStream]) -> None:
    envoy = connected(mode, world(), warming=True)
    s = envoy.stream
    after = world(listeners=("l", "m"), revision=2)
    s.set_snapshot(after)
    lds = s.next_response()
    assert SHORT_NAMES[lds.type_url] == "LDS"
    assert s.next_response() is None
    envoy.apply(lds)
    envoy.follow_dependencies(LISTENER)
    rds = s.next_response()
    assert summary(rds)[:2] == ("RDS", ("rt-m",))  # SotW too: rt-l is unchanged
    assert s.next_response() is None
    envoy.answer(rds)
    envoy.answer(lds)
    assert s.next_response() is None
    assert s.synced(after)


@pytest.mark.parametrize("mode", MODES)
def test_envoy_that_acks_after_warming_never_deadlocks(mode: type[SotwStream]) -> None:
    stream = mode()
    stream.set_snapshot(world())
    envoy = FakeEnvoy(stream, warming=True)
    envoy.start(CLUSTER, LISTENER)
    assert types_sent(envoy.run()) == ["CDS", "EDS", "LDS", "RDS"]
    assert stream.synced()
    assert not envoy.warming_acks


def test_cluster_with_non_ads_endpoints_does_not_hold_lds() -> None:
    snap = Snapshot.build(
        {
            CLUSTER: [cluster("file", ads=False)],
            LISTENER: [listener("l", "rt-l")],
            ROUTE: [route("rt-l", "file")],
        },
        1,
    )
    s = SotwStream()
    s.set_snapshot(snap)
    envoy = FakeEnvoy(s)
    envoy.start(CLUSTER, LISTENER)
    assert types_sent(envoy.run()) == ["CDS", "EDS", "LDS", "RDS"]
    assert s.synced()


# -------------------------------------------------------------------------- removals last


@pytest.mark.parametrize("mode", MODES)
def test_removals_go_last(mode: type[SotwStream]) -> None:
    envoy = connected(mode, world(("a", "b"), listeners=("l", "m")))
    s = envoy.stream
    after = world(("a",), listeners=("l",), port=81, revision=2)
    s.set_snapshot(after)
    log = envoy.run()
    if mode is SotwStream:
        assert log == [
            # b's endpoints changed port, but b itself is kept meanwhile at its old content,
            # which Envoy has: only a goes
            ("EDS", ("a",)),
            # then break, listeners first
            ("LDS", ("l",)),
            ("RDS", ()),  # Envoy dropped m and its RDS subscription: only a new version
            ("CDS", ("a",)),
            ("EDS", ()),  # Envoy dropped b and its EDS subscription: only a new version
        ]
    else:
        assert log == [
            ("EDS", ("a",), ()),
            ("LDS", (), ("m",)),
            ("CDS", (), ("b",)),
        ]
    assert s.synced(after)


@pytest.mark.parametrize("mode", MODES)
def test_removed_resources_keep_their_old_content_until_everything_is_acked(
    mode: type[SotwStream],
) -> None:
    before = world(("a", "b"))
    envoy = connected(mode, before)
    s = envoy.stream
    # b goes away and a new cluster c comes; b must outlive the whole make-before-break.
    after = world(("a", "c"), to="c", revision=2)
    s.set_snapshot(after)
    cds = s.next_response()
    if mode is SotwStream:
        assert list(cds.resources) == [
            after.of(CLUSTER)["a"].body,
            before.of(CLUSTER)["b"].body,
            after.of(CLUSTER)["c"].body,
        ]
        assert cds.version_info not in (before.version(CLUSTER), after.version(CLUSTER))
    else:
        assert summary(cds) == ("CDS", ("c",), ())
    envoy.answer(cds)
    envoy.follow_dependencies(CLUSTER)
    expected = ["EDS", "RDS", "CDS", "EDS"] if mode is SotwStream else ["EDS", "RDS", "CDS"]
    assert types_sent(envoy.run()) == expected
    assert s.synced(after)
    assert set(envoy.held[CLUSTER]) == {"a", "c"}


@pytest.mark.parametrize("mode", MODES)
def test_removal_waits_while_a_type_is_rejected(mode: type[SotwStream]) -> None:
    envoy = connected(mode, world(("a", "b"), to="b"))
    s = envoy.stream
    envoy.reject[ROUTE] = "bad route"
    # Routes move from b to a and b goes away, but Envoy rejects the new routes: it still
    # sends traffic to b, so b must not be removed.
    s.set_snapshot(world(("a",), to="a", revision=2))
    assert types_sent(envoy.run()) == ["RDS"]
    assert set(envoy.held[CLUSTER]) == {"a", "b"}
    assert s.status()[ROUTE].rejected
    # A fixed route config is accepted; only then does b go.
    del envoy.reject[ROUTE]
    fixed = Snapshot.build(
        {
            **{t: m.values() for t, m in world(("a",)).resources.items()},
            ROUTE: [route("rt-l", "a", "/v2")],
        },
        3,
    )
    s.set_snapshot(fixed)
    expected = ["RDS", "CDS", "EDS"] if mode is SotwStream else ["RDS", "CDS"]
    assert types_sent(envoy.run()) == expected
    assert set(envoy.held[CLUSTER]) == {"a"}
    assert s.synced(fixed)


@pytest.mark.parametrize("mode", MODES)
def test_rejected_endpoints_do_not_hold_back_a_cluster_removal(mode: type[SotwStream]) -> None:
    envoy = connected(mode, world(("a",)))
    s = envoy.stream
    # A new service whose endpoints Envoy refuses (say, a hostname where an IP belongs).
    envoy.reject[ENDPOINT] = "malformed IP address"
    s.set_snapshot(world(("a", "b"), revision=2))
    envoy.run()
    assert s.status()[ENDPOINT].rejected
    # The user deletes it: its cluster must go, although EDS was never ACKed again.
    del envoy.reject[ENDPOINT]
    s.set_snapshot(world(("a",), revision=3))
    envoy.run()
    assert set(envoy.held[CLUSTER]) == {"a"}
    assert s.synced(world(("a",)))


@pytest.mark.parametrize("mode", MODES)
def test_removed_resource_coming_back(mode: type[SotwStream]) -> None:
    envoy = connected(mode, world(("a", "b")))
    s = envoy.stream
    s.set_snapshot(world(("a",), revision=2))
    s.set_snapshot(world(("a", "b"), timeout=7, revision=3))  # back, with new content
    envoy.run()
    assert s.synced(world(("a", "b"), timeout=7))
    # Removed while its removal is in flight, then back unchanged.
    s.set_snapshot(world(("a",), timeout=7, revision=4))
    cds = s.next_response()
    assert SHORT_NAMES[cds.type_url] == "CDS"  # the final removal of b
    s.set_snapshot(world(("a", "b"), timeout=7, revision=5))
    envoy.answer(cds)
    envoy.follow_dependencies(CLUSTER)
    envoy.run()
    assert set(envoy.held[CLUSTER]) == {"a", "b"}
    assert s.synced(world(("a", "b"), timeout=7))


# ------------------------------------------------- SotW EDS/RDS: only what the client lacks


def replaced(snap: Snapshot, revision: int, **by_type: list[Resource]) -> Snapshot:
    """``snap`` with some types' resources replaced (keyword: short name, e.g. ``EDS``)."""
    urls = {short: t for t, short in SHORT_NAMES.items()}
    return Snapshot.build(
        {
            **{t: m.values() for t, m in snap.resources.items()},
            **{urls[short]: rs for short, rs in by_type.items()},
        },
        revision,
    )


def test_sotw_endpoint_change_sends_only_the_changed_assignment() -> None:
    envoy = connected(SotwStream, world(("a", "b", "c")))
    s = envoy.stream
    changed = replaced(world(("a", "b", "c")), 2, EDS=[cla("a"), cla("b", 81), cla("c")])
    s.set_snapshot(changed)
    eds = s.next_response()
    assert summary(eds) == ("EDS", ("b",))
    assert list(eds.resources) == [cla("b", 81).body]
    # The version is still that of the whole subscribed set, as Envoy will ACK it.
    assert eds.version_info == changed.version(ENDPOINT, ["a", "b", "c"])
    assert s.next_response() is None
    envoy.answer(eds)
    assert s.status()[ENDPOINT].acked_version == changed.version(ENDPOINT, ["a", "b", "c"])
    assert s.synced(changed)
    assert s.next_response() is None
    assert envoy.held[ENDPOINT]["b"].body == cla("b", 81).body
    assert set(envoy.held[ENDPOINT]) == {"a", "b", "c"}


def test_sotw_route_change_sends_only_the_changed_route_configuration() -> None:
    before = world(listeners=("l", "m"))
    envoy = connected(SotwStream, before)
    s = envoy.stream
    after = replaced(before, 2, RDS=[route("rt-l", "a"), route("rt-m", "b")])
    s.set_snapshot(after)
    rds = s.next_response()
    assert summary(rds) == ("RDS", ("rt-m",))
    assert rds.version_info == after.version(ROUTE, ["rt-l", "rt-m"])
    envoy.answer(rds)
    assert s.next_response() is None
    assert s.synced(after)


def test_sotw_cds_and_lds_stay_complete() -> None:
    before = world(listeners=("l", "m"))
    envoy = connected(SotwStream, before)
    s = envoy.stream
    after = replaced(
        before,
        2,
        CDS=[cluster("a", timeout=5), cluster("b")],
        LDS=[listener("l", "rt-l"), listener("m", "rt-m", 15003)],
    )
    s.set_snapshot(after)
    assert envoy.run() == [("CDS", ("a", "b")), ("LDS", ("l", "m"))]
    assert s.synced(after)


def test_sotw_resubscribed_name_is_sent_again_even_if_unchanged() -> None:
    snap = world(("a", "b", "c"))
    envoy = connected(SotwStream, snap)
    s = envoy.stream
    envoy.subscribe(ENDPOINT, {"a", "b"})
    dropped = s.next_response()
    assert summary(dropped) == ("EDS", ())
    assert dropped.version_info == snap.version(ENDPOINT, ["a", "b"])
    envoy.answer(dropped)
    envoy.subscribe(ENDPOINT, {"a", "b", "c"})
    back = s.next_response()
    assert summary(back) == ("EDS", ("c",))
    assert back.version_info == snap.version(ENDPOINT, ["a", "b", "c"])
    envoy.answer(back)
    assert s.next_response() is None
    assert s.synced(snap)


def test_sotw_unsubscribe_and_resubscribe_between_responses_sends_it_again() -> None:
    snap = world(("a", "b", "c"))
    envoy = connected(SotwStream, snap)
    s = envoy.stream
    nonce = envoy.last_nonce[ENDPOINT]
    # Envoy dropped c (and with it c's endpoints), then wants c back before we answered.
    s.receive(sotw_req(ENDPOINT, ["a", "b"], nonce=nonce))
    s.receive(sotw_req(ENDPOINT, ["a", "b", "c"], nonce=nonce))
    resp = s.next_response()
    assert summary(resp) == ("EDS", ("c",))
    assert resp.version_info == snap.version(ENDPOINT, ["a", "b", "c"])


def test_sotw_new_stream_gets_every_assignment() -> None:
    envoy = connected(SotwStream, world(("a", "b", "c")))
    s = envoy.stream
    # A nonce-less request is a fresh subscription: what Envoy holds is unknown.
    s.receive(sotw_req(ENDPOINT, ["a", "b", "c"]))
    assert summary(s.next_response()) == ("EDS", ("a", "b", "c"))


def test_sotw_response_after_a_nack_is_complete_then_partial_again() -> None:
    before = world(("a", "b", "c"))
    envoy = connected(SotwStream, before)
    s = envoy.stream
    envoy.reject[ENDPOINT] = "bad endpoints"
    s.set_snapshot(replaced(before, 2, EDS=[cla("a"), cla("b", 81), cla("c")]))
    assert envoy.run() == [("EDS", ("b",))]
    assert s.status()[ENDPOINT].rejected
    # What Envoy kept of the rejected response is unknown: the next one holds everything.
    del envoy.reject[ENDPOINT]
    fixed = replaced(before, 3, EDS=[cla("a"), cla("b", 82), cla("c")])
    s.set_snapshot(fixed)
    assert envoy.run() == [("EDS", ("a", "b", "c"))]
    assert s.synced(fixed)
    last = replaced(before, 4, EDS=[cla("a", 83), cla("b", 82), cla("c")])
    s.set_snapshot(last)
    assert envoy.run() == [("EDS", ("a",))]
    assert s.synced(last)


def test_sotw_assignment_kept_for_removal_is_not_resent() -> None:
    before = world(("a", "b"))
    envoy = connected(SotwStream, before)
    s = envoy.stream
    # b goes away while a's endpoints change: b stays meanwhile, and Envoy already has it.
    after = world(("a",), port=81, revision=2)
    s.set_snapshot(after)
    eds = s.next_response()
    assert summary(eds) == ("EDS", ("a",))
    kept = Snapshot.build({ENDPOINT: [after.of(ENDPOINT)["a"], before.of(ENDPOINT)["b"]]}, 0)
    assert eds.version_info == kept.version(ENDPOINT)
    envoy.answer(eds)
    assert types_sent(envoy.run()) == ["CDS", "EDS"]
    assert s.synced(after)


@pytest.mark.parametrize("mode", MODES)
def test_responses_are_the_messages_built_field_by_field(mode: type[SotwStream]) -> None:
    # Responses are assembled from each resource's cached serialized entry; they must be
    # exactly what adding the resources one by one gives.
    snap = world(("a", "b", "c"))
    stream = mode(nonce_prefix="t-")
    stream.set_snapshot(snap)
    envoy = FakeEnvoy(stream)
    envoy.start(CLUSTER, LISTENER)
    responses = []
    while (resp := stream.next_response()) is not None:
        responses.append(resp)
        envoy.answer(resp)
        envoy.follow_dependencies(resp.type_url)
    assert [SHORT_NAMES[r.type_url] for r in responses] == ["CDS", "EDS", "LDS", "RDS"]
    for resp in responses:
        held = snap.of(resp.type_url)
        expected: Any
        if mode is DeltaStream:
            expected = discovery_pb2.DeltaDiscoveryResponse(
                system_version_info=resp.system_version_info,
                resources=[
                    discovery_pb2.Resource(name=n, version=held[n].version, resource=held[n].body)
                    for n in sorted(held)
                ],
                type_url=resp.type_url,
                nonce=resp.nonce,
            )
        else:
            expected = discovery_pb2.DiscoveryResponse(
                version_info=resp.version_info,
                resources=[held[n].body for n in sorted(held)],
                type_url=resp.type_url,
                nonce=resp.nonce,
            )
        assert resp == expected
        assert resp.SerializeToString() == expected.SerializeToString()


# ------------------------------------------------------------------- cached versions


def test_snapshot_versions_and_views_are_computed_once() -> None:
    snap = world(("a", "b"))
    eds = snap.of(ENDPOINT)
    assert snap.version(ENDPOINT) == type_version(eds.values())
    # A subscription covering every resource is the snapshot's own mapping, not a copy.
    view, version = snap.view(ENDPOINT, frozenset({"a", "b", "zz"}))
    assert view is eds
    assert version == snap.version(ENDPOINT)
    part = snap.view(ENDPOINT, frozenset({"a", "zz"}))
    assert dict(part[0]) == {"a": eds["a"]}
    assert part[1] == type_version([eds["a"]]) == snap.version(ENDPOINT, ["a", "zz"])
    assert snap.view(ENDPOINT, frozenset({"a", "zz"})) is part


@pytest.mark.parametrize("mode", MODES)
def test_client_state_shares_the_snapshot_mappings(mode: type[SotwStream]) -> None:
    # Internals, on purpose: a thousand streams must not each copy thousands of resources.
    envoy = connected(mode, world(("a", "b")))
    s = envoy.stream
    again = world(("a", "b"), revision=2)  # equal content, new mappings
    s.set_snapshot(again)
    assert envoy.run() == []
    for t in (CLUSTER, ENDPOINT, LISTENER, ROUTE):
        st = s._types[t]
        assert st.known is again.of(t)
        assert st.acked is st.known
    assert s.synced(again)


@pytest.mark.parametrize("mode", MODES)
def test_synced_follows_subscription_and_snapshot_changes(mode: type[SotwStream]) -> None:
    snap = world(("a", "b"))
    envoy = connected(mode, snap)
    s = envoy.stream
    assert s.synced(snap)
    assert s.synced(snap)  # from the caches: same answer
    # Envoy stops asking for b's endpoints although its cluster still references them.
    envoy.subscribe(ENDPOINT, {"a"})
    envoy.run()
    assert not s.synced(snap)
    envoy.subscribe(ENDPOINT, {"a", "b"})
    envoy.run()
    assert s.synced(snap)
    assert not s.synced(world(("a", "b"), port=81))


# ---------------------------------------------------------------------------- latest wins


@pytest.mark.parametrize("mode", MODES)
def test_latest_snapshot_wins(mode: type[SotwStream]) -> None:
    envoy = connected(mode, world())
    s = envoy.stream
    s.set_snapshot(world(timeout=2, revision=2))
    cds = s.next_response()
    # Many updates while CDS is outstanding: only the newest one will be sent.
    for rev in range(3, 20):
        s.set_snapshot(world(timeout=rev, port=80 + rev, revision=rev))
    last = world(timeout=19, port=99, revision=19)
    # EDS, the dependent of the outstanding CDS, may go meanwhile: at the newest content.
    eds = s.next_response()
    assert SHORT_NAMES[eds.type_url] == "EDS"
    if mode is SotwStream:
        assert list(eds.resources) == [last.of(ENDPOINT)[n].body for n in ("a", "b")]
    else:
        assert [r.resource for r in eds.resources] == [
            last.of(ENDPOINT)[n].body for n in ("a", "b")
        ]
    assert s.next_response() is None
    envoy.answer(eds)
    envoy.answer(cds)
    log = envoy.run()
    assert types_sent(log) == ["CDS"]  # only the newest clusters; EDS is already there
    assert s.synced(last)
    if mode is SotwStream:
        assert s.status()[CLUSTER].acked_version == last.version(CLUSTER)


@pytest.mark.parametrize("mode", MODES)
def test_flapping_back_to_the_acked_state_sends_nothing(mode: type[SotwStream]) -> None:
    envoy = connected(mode, world())
    s = envoy.stream
    s.set_snapshot(world(port=90, revision=2))
    s.set_snapshot(world(revision=3))
    assert s.next_response() is None


# ---------------------------------------------------------------------------- misc


def test_secrets_are_not_ordered_and_do_not_block() -> None:
    secret = Resource.pack("cert", cluster_pb2.Cluster(name="pretend-secret"))
    snap = Snapshot.build(
        {**{t: world().of(t).values() for t in (CLUSTER, ENDPOINT)}, SECRET: [secret]}, 1
    )
    s = SotwStream()
    s.set_snapshot(snap)
    s.receive(sotw_req(CLUSTER))
    cds = s.next_response()
    assert cds.type_url == CLUSTER
    s.receive(sotw_req(SECRET, ["cert"]))
    sds = s.next_response()
    assert (sds.type_url, list(sds.resources)) == (SECRET, [secret.body])


def test_delta_sends_the_secrets_asked_for_and_a_renewed_one_again() -> None:
    def snap(content: str, revision: int) -> Snapshot:
        cred = Resource.pack("kubernetes://cred", cluster_pb2.Cluster(name=content))
        other = Resource.pack("kubernetes://other", cluster_pb2.Cluster(name="other"))
        return Snapshot.build({SECRET: [cred, other]}, revision)

    s = DeltaStream()
    s.set_snapshot(snap("first", 1))
    s.receive(delta_req(SECRET, ["kubernetes://cred"]))
    first = s.next_response()
    assert [r.name for r in first.resources] == ["kubernetes://cred"]  # only what it asked
    s.receive(delta_req(SECRET, nonce=first.nonce))  # ACK
    assert s.next_response() is None
    s.set_snapshot(snap("renewed", 2))
    renewed = s.next_response()
    assert [r.name for r in renewed.resources] == ["kubernetes://cred"]
    assert renewed.resources[0].version != first.resources[0].version


def test_node_is_the_first_non_empty_one() -> None:
    s = SotwStream()
    assert s.receive(sotw_req(CLUSTER)) == [Subscribed(CLUSTER, frozenset({"*"}))]
    assert s.node is None
    assert s.receive(sotw_req(LISTENER, node="n1"))[0] == NodeIdentified("n1", "svc")
    s.receive(sotw_req(ROUTE, node="n2"))
    assert s.node is not None and s.node.id == "n1"


def test_nonces_are_unique_and_prefixed() -> None:
    envoy = connected(SotwStream, world())
    nonces = [st.sent_nonce for st in envoy.stream.status().values()]
    assert len(set(nonces)) == len(nonces) == 4
    assert all(n and n.startswith("t-") for n in nonces)


def test_unknown_type_answer_is_stale() -> None:
    s = DeltaStream()
    assert s.receive(delta_req(ROUTE, nonce="x")) == [
        StaleNonce(ROUTE, "x"),
        Subscribed(ROUTE, frozenset()),
    ]


# ------------------------------------------- found by the randomized invariant tests


def test_delta_response_after_a_nack_restates_all_since_the_last_ack() -> None:
    before = world(("a", "b", "c"))
    envoy = connected(DeltaStream, before)
    s = envoy.stream
    envoy.reject[ENDPOINT] = "bad endpoints"
    s.set_snapshot(replaced(before, 2, EDS=[cla("a", 81), cla("b", 81), cla("c")]))
    assert envoy.run() == [("EDS", ("a", "b"), ())]
    del envoy.reject[ENDPOINT]
    # Only b changes again, but Envoy never applied the rejected a: it goes too.
    fixed = replaced(before, 3, EDS=[cla("a", 81), cla("b", 82), cla("c")])
    s.set_snapshot(fixed)
    assert envoy.run() == [("EDS", ("a", "b"), ())]
    held = {n: r.version for n, r in envoy.held[ENDPOINT].items()}
    assert held == {n: r.version for n, r in fixed.of(ENDPOINT).items()}
    assert s.synced(fixed)
    # Then only what changed, as usual.
    last = replaced(before, 4, EDS=[cla("a", 83), cla("b", 82), cla("c")])
    s.set_snapshot(last)
    assert envoy.run() == [("EDS", ("a",), ())]
    assert s.synced(last)


def test_delta_rejection_ends_when_envoy_drops_the_rejected_name() -> None:
    envoy = connected(DeltaStream, world(("a", "b")))
    s = envoy.stream
    envoy.reject[ENDPOINT] = "bad endpoints"
    s.set_snapshot(replaced(world(("a", "b")), 2, EDS=[cla("a"), cla("b", 81)]))
    assert envoy.run() == [("EDS", ("b",), ())]
    assert s.status()[ENDPOINT].rejected
    del envoy.reject[ENDPOINT]
    # Cluster b goes, Envoy drops its endpoints: an answer tells whether the rest is good.
    after = world(("a",), revision=3)
    s.set_snapshot(after)
    assert envoy.run() == [("CDS", (), ("b",)), ("EDS", (), ())]
    assert not s.status()[ENDPOINT].rejected
    assert s.synced(after)


def test_sotw_name_dropped_and_asked_again_is_not_synced_until_sent() -> None:
    snap = world(("a", "b"))
    envoy = connected(SotwStream, snap)
    s = envoy.stream
    envoy.subscribe(ENDPOINT, {"a"})  # Envoy forgets b...
    envoy.subscribe(ENDPOINT, {"a", "b"})  # ...and asks for it again before any answer
    assert not s.synced(snap)
    assert envoy.run() == [("EDS", ("b",))]
    assert s.synced(snap)
