"""The translation memo only saves work: a long-lived memo gives the same output as none.

Hypothesis builds a small random mesh (services and their instances, DestinationRules with
subsets, VirtualServices with matches and weights, ServiceEntries including DNS ones), then
changes it step by step. After each step the World is translated twice: with one memo that
lives across steps and is rotated after every push (as ``controlplane/push.py`` does), and
with a fresh memo for every call. Every resource's name, serialized bytes and version must
agree, for the shared clusters and endpoints and for the routes of several namespaces.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any, TypeVar

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tsunagi.api import Resource, fqdn, parse_document
from tsunagi.mesh import World
from tsunagi.registry import Instance
from tsunagi.xds import resources as rs
from tsunagi.xds.translate import Memo, translate_outbound, translate_shared
from tsunagi.xds.translate.layers import host_of
from tsunagi.xds.translate.protos import Cluster, RouteConfiguration

NAMESPACES = ("default", "shop")
CLIENT_NAMESPACES = (*NAMESPACES, "elsewhere")  # "elsewhere" has no services of its own
SERVICES = ("reviews", "ratings", "web")
PORTS = (80, 9080, 8080)
VERSIONS = ("v1", "v2", "v3")
LOCALITIES = ("", "eu", "eu/z1", "eu/z2/a", "us/z1")
EXTERNAL_HOSTS = ("api.example.com", "db.example.com", "ext.example.org")
RULE_NAMES = ("a", "b", "c")

Key = tuple[str, str, str]
K = TypeVar("K", bound=tuple[str, ...])
Doc = dict[str, Any]

# --------------------------------------------------------------------------- config


def _service_hosts() -> st.SearchStrategy[str]:
    """How a rule may name a service: short (relative to the rule), or fully qualified."""
    return st.one_of(
        st.sampled_from(SERVICES),
        st.builds(fqdn, st.sampled_from(SERVICES), st.sampled_from(NAMESPACES)),
    )


def _any_host() -> st.SearchStrategy[str]:
    return st.one_of(_service_hosts(), st.sampled_from(EXTERNAL_HOSTS))


def _meta(name: str, namespace: str) -> Doc:
    return {"name": name, "namespace": namespace}


# Traffic policies that each change the clusters (or, for consistent hashing, the routes).
TRAFFIC_POLICIES = st.sampled_from(
    [
        None,
        {"loadBalancer": {"simple": "ROUND_ROBIN"}},
        {"loadBalancer": {"consistentHash": {"httpHeaderName": "x-user"}}},
        {"connectionPool": {"tcp": {"maxConnections": 1}, "http": {"http1MaxPendingRequests": 1}}},
        {"outlierDetection": {"consecutive5xxErrors": 3, "interval": "1s"}},
        {"portLevelSettings": [{"port": {"number": 9080}, "loadBalancer": {"simple": "RANDOM"}}]},
    ]
)


def _with_policy(doc: Doc, policy: Doc | None) -> Doc:
    if policy is not None:
        doc["trafficPolicy"] = policy
    return doc


# exportTo: which client namespaces see a rule (and, for DestinationRules, get clusters of
# their own where the rule they see differs from the shared one).
EXPORT_TO = st.sampled_from([None, None, ["."], ["*"], ["shop"], ["default", "elsewhere"]])


def _exported(spec: Doc, export_to: list[str] | None) -> Doc:
    if export_to is not None:
        spec["exportTo"] = export_to
    return spec


@st.composite
def destination_rules(draw: st.DrawFn) -> Doc:
    subsets = draw(st.lists(st.sampled_from(VERSIONS), unique=True, max_size=3))
    spec = {
        "host": draw(st.one_of(_service_hosts(), st.sampled_from(EXTERNAL_HOSTS))),
        "subsets": [
            _with_policy({"name": v, "labels": {"version": v}}, draw(TRAFFIC_POLICIES))
            for v in subsets
        ],
    }
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": _meta(draw(st.sampled_from(RULE_NAMES)), draw(st.sampled_from(NAMESPACES))),
        "spec": _exported(_with_policy(spec, draw(TRAFFIC_POLICIES)), draw(EXPORT_TO)),
    }


STRING_MATCHES = st.sampled_from(
    [{"exact": "/x"}, {"prefix": "/"}, {"prefix": "/api"}, {"regex": "/v[0-9]+"}]
)


@st.composite
def http_matches(draw: st.DrawFn) -> Doc:
    match: Doc = {}
    if draw(st.booleans()):
        match["uri"] = draw(STRING_MATCHES)
    if draw(st.booleans()):
        match["headers"] = {"end-user": draw(st.sampled_from([{}, {"exact": "jason"}]))}
    if draw(st.booleans()):
        match["withoutHeaders"] = {"x-canary": {}}
    if draw(st.booleans()):
        match["queryParams"] = {"debug": {"exact": "1"}}
    if draw(st.booleans()):
        match["method"] = {"exact": "GET"}
    if draw(st.booleans()):
        match["port"] = draw(st.sampled_from(PORTS))
    if draw(st.booleans()):
        match["sourceNamespace"] = draw(st.sampled_from(CLIENT_NAMESPACES))
    if draw(st.booleans()):
        match["gateways"] = draw(st.sampled_from([["mesh"], ["gw"]]))
    match["ignoreUriCase"] = draw(st.booleans())
    if draw(st.integers(0, 9)) == 0:
        match["sourceLabels"] = {"app": "web"}
    return match


@st.composite
def destinations(draw: st.DrawFn) -> Doc:
    dest: Doc = {"host": draw(_any_host())}
    if draw(st.booleans()):
        dest["subset"] = draw(st.sampled_from(VERSIONS))
    if draw(st.booleans()):
        dest["port"] = {"number": draw(st.sampled_from(PORTS))}
    return {"destination": dest}


@st.composite
def http_routes(draw: st.DrawFn) -> Doc:
    http: Doc = {}
    matches = draw(st.lists(http_matches(), max_size=2))
    if matches:
        http["match"] = matches
    action = draw(st.sampled_from(["route", "route", "route", "redirect", "direct"]))
    if action == "redirect":
        http["redirect"] = {"uri": "/moved", "redirectCode": draw(st.sampled_from([301, 302]))}
    elif action == "direct":
        http["directResponse"] = {"status": 503, "body": {"string": "down"}}
    else:
        dests = draw(st.lists(destinations(), min_size=1, max_size=3))
        if len(dests) > 1:
            weights = draw(st.lists(st.integers(0, 100), min_size=len(dests), max_size=len(dests)))
            weights[0] = weights[0] or 1  # at least one weight must be above zero
            for d, w in zip(dests, weights, strict=True):
                d["weight"] = w
        http["route"] = dests
        if draw(st.booleans()):
            http["timeout"] = draw(st.sampled_from(["1.5s", "250ms", "10s", "1m"]))
        if draw(st.booleans()):
            http["retries"] = {
                "attempts": draw(st.integers(0, 3)),
                "perTryTimeout": draw(st.sampled_from(["2s", "100ms"])),
                "retryOn": draw(st.sampled_from(["5xx", "5xx,503", "connect-failure"])),
            }
    if draw(st.booleans()):
        http["name"] = draw(st.sampled_from(["primary", "fallback"]))
    return http


@st.composite
def virtual_services(draw: st.DrawFn) -> Doc:
    hosts = draw(st.lists(st.one_of(_any_host(), st.just("*.example.com")), min_size=1, max_size=2))
    spec: Doc = {
        "hosts": list(dict.fromkeys(hosts)),
        "http": draw(st.lists(http_routes(), min_size=1, max_size=3)),
    }
    gateways = draw(st.sampled_from([None, ["mesh"], ["gw"], ["mesh", "gw"]]))
    if gateways is not None:
        spec["gateways"] = gateways
    _exported(spec, draw(EXPORT_TO))
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": _meta(draw(st.sampled_from(RULE_NAMES)), draw(st.sampled_from(NAMESPACES))),
        "spec": spec,
    }


@st.composite
def service_entries(draw: st.DrawFn) -> Doc:
    resolution = draw(st.sampled_from(["NONE", "STATIC", "DNS", "DNS", "DNS_ROUND_ROBIN"]))
    numbers = draw(
        st.lists(st.sampled_from([80, 443, 8080, 5432]), min_size=1, max_size=2, unique=True)
    )
    ports: list[Doc] = [
        {"number": n, "name": f"p{n}", "protocol": "HTTP" if n != 5432 else "TCP"} for n in numbers
    ]
    if draw(st.booleans()):
        ports[0]["targetPort"] = 10000 + numbers[0]
    endpoints: list[Doc] = []
    if resolution == "STATIC":
        count = draw(st.integers(1, 3))
        endpoints = [{"address": f"192.0.2.{i + 1}"} for i in range(count)]
    elif resolution != "NONE":
        most = 1 if resolution == "DNS_ROUND_ROBIN" else 2
        count = draw(st.integers(0, most))
        endpoints = [{"address": f"backend-{i}.example.net"} for i in range(count)]
    for ep in endpoints:
        ep["labels"] = {"version": draw(st.sampled_from(VERSIONS))}
        if locality := draw(st.sampled_from(LOCALITIES)):
            ep["locality"] = locality
        if draw(st.booleans()):
            ep["ports"] = {ports[-1]["name"]: draw(st.sampled_from([7000, 7001]))}
    hosts = list(EXTERNAL_HOSTS)
    if endpoints or resolution in ("NONE", "STATIC"):
        hosts.append("*.example.com")  # a DNS entry without endpoints needs full names
    spec: Doc = {
        "hosts": draw(st.lists(st.sampled_from(hosts), min_size=1, max_size=2, unique=True)),
        "location": "MESH_EXTERNAL",
        "resolution": resolution,
        "ports": ports,
    }
    if endpoints:
        spec["endpoints"] = endpoints
    _exported(spec, draw(EXPORT_TO))
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "ServiceEntry",
        "metadata": _meta(draw(st.sampled_from(RULE_NAMES)), draw(st.sampled_from(NAMESPACES))),
        "spec": spec,
    }


CONFIG = st.one_of(destination_rules(), virtual_services(), service_entries())


@st.composite
def instances(draw: st.DrawFn) -> Instance:
    service = draw(st.sampled_from(SERVICES))
    version = draw(st.sampled_from(VERSIONS))
    return Instance(
        name=f"{service}-{draw(st.integers(0, 3))}",
        service=service,
        namespace=draw(st.sampled_from(NAMESPACES)),
        port=draw(st.sampled_from(PORTS)),
        address=f"10.0.0.{draw(st.integers(1, 4))}",
        target_port=draw(st.sampled_from([20001, 20002])),
        labels={"app": service, "version": version},
        locality=draw(st.sampled_from(LOCALITIES)),
        healthy=draw(st.booleans()),
    )


# --------------------------------------------------------------------------- changes

# A change puts a resource or an instance (replacing one with the same key), or picks an
# existing one (the i-th of its kind, in key order; nothing happens when there is none) and
# deletes it or edits it in place: an instance's health, labels or locality (same address), a
# ServiceEntry's endpoint labels and locality (same hosts and ports), a DestinationRule's
# subsets (same host). In-place edits are the changes a wrong memo key would miss.
PUT_CONFIG, DELETE_CONFIG, EDIT_CONFIG, PUT_INSTANCE, DELETE_INSTANCE, EDIT_INSTANCE = range(6)
INDEX = st.integers(0, 7)
KINDS = st.sampled_from(["VirtualService", "DestinationRule", "ServiceEntry"])
SERVICE_ENTRY_EDITS = st.tuples(
    st.just("ServiceEntry"),
    INDEX,
    st.tuples(st.sampled_from(VERSIONS), st.sampled_from(LOCALITIES)),
)
CONFIG_EDITS = st.one_of(
    SERVICE_ENTRY_EDITS,
    SERVICE_ENTRY_EDITS,
    st.tuples(
        st.just("DestinationRule"),
        INDEX,
        st.lists(st.sampled_from(VERSIONS), unique=True, max_size=3),
    ),
    # Only the policy changes (subsets stay): a memo key without it would give stale clusters.
    st.tuples(st.just("DestinationRule"), INDEX, st.tuples(st.just("policy"), TRAFFIC_POLICIES)),
)
INSTANCE_EDITS = st.one_of(
    st.tuples(st.just("healthy"), st.booleans()),
    st.tuples(st.just("locality"), st.sampled_from(LOCALITIES)),
    st.tuples(st.just("labels"), st.builds(lambda v: {"version": v}, st.sampled_from(VERSIONS))),
)
CHANGES = st.one_of(
    st.tuples(st.just(PUT_CONFIG), CONFIG),
    st.tuples(st.just(DELETE_CONFIG), st.tuples(KINDS, INDEX)),
    st.tuples(st.just(EDIT_CONFIG), CONFIG_EDITS),
    st.tuples(st.just(EDIT_CONFIG), CONFIG_EDITS),
    st.tuples(st.just(PUT_INSTANCE), instances()),
    st.tuples(st.just(DELETE_INSTANCE), INDEX),
    st.tuples(st.just(EDIT_INSTANCE), st.tuples(INDEX, INSTANCE_EDITS)),
)


def _pick(keys: Iterable[K], index: int) -> K | None:
    ordered = sorted(keys)
    return ordered[index % len(ordered)] if ordered else None


def _edited(resource: Resource, edit: Any) -> Resource:
    doc = copy.deepcopy(dict(resource.document))
    if resource.kind == "ServiceEntry":
        version, locality = edit
        for ep in doc["spec"].get("endpoints", ()):
            ep["labels"] = {"version": version}
            ep.pop("locality", None)
            if locality:
                ep["locality"] = locality
    elif isinstance(edit, tuple):
        doc["spec"].pop("trafficPolicy", None)
        _with_policy(doc["spec"], edit[1])
    else:
        doc["spec"]["subsets"] = [{"name": v, "labels": {"version": v}} for v in edit]
    return parse_document(doc)


class Mesh:
    """What the store would hold: config by key, instances by (namespace, name)."""

    def __init__(self) -> None:
        self.config: dict[Key, Resource] = {}
        self.instances: dict[tuple[str, str], Instance] = {}

    def apply(self, change: tuple[int, Any]) -> None:
        what, arg = change
        if what == PUT_CONFIG:
            resource = parse_document(arg)
            self.config[resource.key] = resource
        elif what == PUT_INSTANCE:
            self.instances[(arg.namespace, arg.name)] = arg
        elif what == DELETE_CONFIG:
            kind, index = arg
            if (key := _pick((k for k in self.config if k[0] == kind), index)) is not None:
                del self.config[key]
        elif what == EDIT_CONFIG:
            kind, index, edit = arg
            if (key := _pick((k for k in self.config if k[0] == kind), index)) is not None:
                self.config[key] = _edited(self.config[key], edit)
        elif what == DELETE_INSTANCE:
            if (name := _pick(self.instances, arg)) is not None:
                del self.instances[name]
        else:
            index, (field, value) = arg
            if (name := _pick(self.instances, index)) is not None:
                self.instances[name] = replace(self.instances[name], **{field: value})

    def world(self, revision: int) -> World:
        return World.build(revision, self.config.values(), self.instances.values())


@st.composite
def meshes(draw: st.DrawFn) -> Mesh:
    """A mesh to start from: some instances, then some config."""
    mesh = Mesh()
    for inst in draw(st.lists(instances(), min_size=1, max_size=10)):
        mesh.apply((PUT_INSTANCE, inst))
    for doc in draw(st.lists(CONFIG, max_size=8)):
        mesh.apply((PUT_CONFIG, doc))
    return mesh


INITIAL = meshes()


# --------------------------------------------------------------------------- the property

Serialized = dict[str, tuple[str, str, bytes, str]]


def _serialized(resources: Mapping[str, rs.Resource]) -> Serialized:
    """name → (resource name, type URL, packed bytes, version)."""
    return {
        name: (r.name, r.body.type_url, r.body.value, r.version) for name, r in resources.items()
    }


def _push(world: World, memo: Memo | None) -> dict[str, Serialized]:
    """What one push makes of ``world``: the shared parts once, then each namespace's. With
    no ``memo``, every call starts from a fresh one."""
    shared = translate_shared(world, memo)
    assert not shared.errors, [e.describe() for e in shared.errors]
    out = {rs.CLUSTER: _serialized(shared.clusters), rs.ENDPOINT: _serialized(shared.endpoints)}
    for ns in CLIENT_NAMESPACES:
        outbound = translate_outbound(world, ns, memo, shared)
        assert not outbound.errors, [e.describe() for e in outbound.errors]
        changed = {*world.rule_overrides(ns), *world.hidden_services(ns)}
        if changed:
            # Istio's DestinationRule lookup starts in the client's namespace: only the
            # hosts whose rule differs here get clusters of their own; the rest are shared.
            out[f"{rs.CLUSTER} {ns}"] = _serialized(outbound.clusters)
            out[f"{rs.ENDPOINT} {ns}"] = _serialized(outbound.endpoints)
            assert all(
                outbound.clusters[n] is c
                for n, c in shared.clusters.items()
                if host_of(n) not in changed
            )
        else:
            assert outbound.clusters is shared.clusters and outbound.endpoints is shared.endpoints
        out[f"{rs.ROUTE} {ns}"] = _serialized(outbound.routes)
    return out


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    initial=INITIAL,
    steps=st.lists(st.lists(CHANGES, min_size=1, max_size=3), min_size=1, max_size=6),
)
def test_a_warm_memo_translates_like_a_fresh_one(
    initial: Mesh, steps: list[list[tuple[int, Any]]]
) -> None:
    mesh = initial
    memo = Memo()
    for revision, batch in enumerate([[], *steps], start=1):
        for change in batch:
            mesh.apply(change)
        world = mesh.world(revision)
        warm = _push(world, memo)
        memo.rotate()  # after every push, as the push loop does
        assert warm == _push(world, None)


_DEFAULT_ROUTES = ("default", "allow_any", "allow_any_connect")
"""Routes every mesh has: a service's default route, the outbound policy's catch-all."""


def _service_clusters(names: Iterable[str]) -> list[str]:
    """The service clusters (``outbound|PORT|SUBSET|HOST``) among ``names``."""
    return [n for n in names if n.startswith("outbound|")]


def test_the_generated_meshes_are_not_trivial() -> None:
    """Guard against a generator that quietly makes only empty worlds or default routes."""
    seen = dict.fromkeys(
        ["services", "subset clusters", "DNS clusters", "rule routes", "policy clusters"], 0
    )

    @settings(max_examples=30, deadline=None, database=None, derandomize=True)
    @given(mesh=INITIAL)
    def count(mesh: Mesh) -> None:
        world = mesh.world(1)
        shared = translate_shared(world)
        seen["services"] += len(world.services)
        services = _service_clusters(shared.clusters)
        seen["subset clusters"] += sum(1 for n in services if n.split("|")[2])
        seen["DNS clusters"] += sum(1 for n in services if n not in shared.endpoints)
        # A rule applies in its own namespace (Istio's lookup), so count every namespace's.
        views = [translate_outbound(world, ns, shared=shared).clusters for ns in NAMESPACES]
        for c in {r.name: r for view in views for r in view.values()}.values():
            cluster = Cluster()
            c.body.Unpack(cluster)
            default = cluster.lb_policy == Cluster.LEAST_REQUEST or cluster.type != Cluster.EDS
            seen["policy clusters"] += not default or cluster.HasField("outlier_detection")
        for ns in NAMESPACES:
            config = RouteConfiguration()
            translate_outbound(world, ns, shared=shared).routes["outbound"].body.Unpack(config)
            routes = [r for vh in config.virtual_hosts for r in vh.routes]
            seen["rule routes"] += sum(1 for r in routes if r.name not in _DEFAULT_ROUTES)

    count()
    assert all(n >= 3 for n in seen.values()), seen
