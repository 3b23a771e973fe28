"""Locality load balancing: Istio's priority and weight rules, table-tested against the
examples in Istio's documentation, its validation, apply's warnings, and how translation
shares what does not depend on the client's locality.

The Envoy output of each behaviour is in the golden cases ``tests/golden/cases/locality-*``.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from typing import Any

import pytest

from tsunagi.api import LoadBalancerSettings, OutlierDetection, ValidationFailed, load_documents
from tsunagi.mesh import ClientScope, Endpoint, Node, World
from tsunagi.mesh.analysis import not_yet_enforced
from tsunagi.registry import Instance
from tsunagi.xds.translate import Memo, translate_outbound, translate_shared
from tsunagi.xds.translate.locality import (
    Client,
    label_priority,
    lb_priority,
    locality_match,
    localize,
    topology_labels,
)
from tsunagi.xds.translate.policy import ClusterPolicy

OUTLIER = OutlierDetection(consecutive_5xx_errors=1)


def policy(setting: dict[str, Any] | None, outlier: bool = True) -> ClusterPolicy:
    lb = LoadBalancerSettings.model_validate({"localityLbSetting": setting}) if setting else None
    return ClusterPolicy(load_balancer=lb, outlier_detection=OUTLIER if outlier else None)


def endpoints(*spec: tuple[str, dict[str, str]]) -> list[Endpoint]:
    return [
        Endpoint("127.0.0.1", 20000 + i, labels, locality)
        for i, (locality, labels) in enumerate(spec)
    ]


def priorities(doc: dict[str, Any]) -> dict[int, int]:
    """endpoint port → priority, from an assignment."""
    return {
        lb["endpoint"]["address"]["socket_address"]["port_value"]: g.get("priority", 0)
        for g in doc["endpoints"]
        for lb in g["lb_endpoints"]
    }


def weights(doc: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """locality → (weight, endpoint count), from an assignment."""
    return {
        "/".join(g["locality"].values()): (g.get("load_balancing_weight"), len(g["lb_endpoints"]))
        for g in doc["endpoints"]
    }


# --------------------------------------------------------------------------- rules


@pytest.mark.parametrize(
    ("client", "endpoint", "expected"),
    [
        ("r1/z1/s1", "r1/z1/s1", 0),
        ("r1/z1/s1", "r1/z1/s2", 1),
        ("r1/z1", "r1/z1", 0),
        ("r1/z1", "r1/z2", 2),
        ("r1/z1", "r2/z1", 3),
        ("", "", 0),  # a client without a locality is closest to endpoints without one
        ("", "r1/z1", 3),
        ("r1/z1", "", 3),
    ],
)
def test_lb_priority(client: str, endpoint: str, expected: int) -> None:
    assert lb_priority(client, endpoint) == expected


@pytest.mark.parametrize(
    ("locality", "rule", "expected"),
    [
        ("us-west/zone1/a", "us-west/zone1/*", True),
        ("us-west/zone1/a", "us-west/zone1", True),
        ("us-west/zone1/a", "us-west", True),
        ("us-west/zone1/a", "us-west/*", True),
        ("us-west/zone1/a", "*", True),
        ("us-west/zone2/a", "us-west/zone1/*", False),
        ("us-east/zone1/a", "us-west/*", False),
        ("", "*", True),
        ("", "us-west", False),
    ],
)
def test_locality_match(locality: str, rule: str, expected: bool) -> None:
    assert locality_match(locality, rule) is expected


def test_locality_failover_task_priorities() -> None:
    """Istio's locality failover task: a client in region1/zone1 with failover
    region1 -> region2 gets 0 for its zone, 2 for region1/zone2, 3 for region2, 4 for
    region3 — renumbered without the unused 1."""
    eps = endpoints(
        ("region1/zone1", {}), ("region1/zone2", {}), ("region2/zone3", {}), ("region3/zone4", {})
    )
    setting = {"failover": [{"from": "region1", "to": "region2"}]}
    doc = localize("c", eps, policy(setting), Client("region1/zone1"))
    assert priorities(doc) == {20000: 0, 20001: 1, 20002: 2, 20003: 3}
    # Without the rule region2 and region3 are equally far.
    doc = localize("c", eps, policy(None), Client("region1/zone1"))
    assert priorities(doc) == {20000: 0, 20001: 1, 20002: 2, 20003: 2}
    # No outlier detection: nothing could fail over, so no priorities (as Istio).
    doc = localize("c", eps, policy(setting, outlier=False), Client("region1/zone1"))
    assert set(priorities(doc).values()) == {0}


TOPOLOGY = [
    "topology.istio.io/network",
    "topology.kubernetes.io/region",
    "topology.kubernetes.io/zone",
    "topology.istio.io/subzone",
]


@pytest.mark.parametrize(
    ("endpoint_labels", "locality", "expected"),
    [
        # The DestinationRule reference's topology example, for a client on network n1 in
        # r1/z1/s1: each label counts only when all before it match.
        ({"topology.istio.io/network": "n1"}, "r1/z1/s1", 0),
        ({"topology.istio.io/network": "n1"}, "r1/z1/s2", 1),
        ({"topology.istio.io/network": "n1"}, "r1/z2/s1", 2),
        ({"topology.istio.io/network": "n1"}, "r2/z1/s1", 3),
        ({"topology.istio.io/network": "n2"}, "r1/z1/s1", 4),
    ],
)
def test_failover_priority_topology_example(
    endpoint_labels: dict[str, str], locality: str, expected: int
) -> None:
    client = topology_labels({"topology.istio.io/network": "n1"}, "r1/z1/s1")
    endpoint = topology_labels(endpoint_labels, locality)
    assert label_priority(client, endpoint, TOPOLOGY) == expected


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        # The reference's key=value example: compared with the value, not the client's.
        ({"version": "v1", "topology.istio.io/cluster": "clusterA"}, 0),
        ({"version": "v1", "topology.istio.io/cluster": "clusterB"}, 1),
        ({"version": "v2", "topology.istio.io/cluster": "clusterA"}, 2),
        ({}, 2),
    ],
)
def test_failover_priority_values_example(labels: dict[str, str], expected: int) -> None:
    client = {"version": "v2", "topology.istio.io/cluster": "clusterB"}  # not consulted
    assert label_priority(client, labels, ["version=v1", "topology.istio.io/cluster=clusterA"]) == (
        expected
    )


def test_failover_priority_splits_a_locality_and_ignores_the_region_order() -> None:
    """With only failoverPriority, region/zone priorities are not added (Istio applies them
    only when failover is also set)."""
    eps = endpoints(
        ("r1/z1", {"tier": "gold"}), ("r1/z1", {"tier": "silver"}), ("r2/z9", {"tier": "gold"})
    )
    client = Client("r1/z1", (("tier", "gold"),))
    doc = localize("c", eps, policy({"failoverPriority": ["tier"]}), client)
    assert priorities(doc) == {20000: 0, 20001: 1, 20002: 0}
    assert len(doc["endpoints"]) == 3  # r1/z1 split in two groups
    both = {"failoverPriority": ["tier"], "failover": [{"from": "r1", "to": "r2"}]}
    doc = localize("c", eps, policy(both), client)
    # tier first (times 5), then locality: gold r1 0, gold r2 3, silver r1 5 -> 0, 1, 2.
    assert priorities(doc) == {20000: 0, 20002: 1, 20001: 2}


def test_distribute_weights_follow_the_reference_example() -> None:
    """us-west/zone1 clients send 80% to their zone and 20% to zone2; the weight of a "to"
    is split between the locality groups it matches by endpoint count (rounded up)."""
    eps = endpoints(
        ("us-west/zone1/a", {}),
        ("us-west/zone1/b", {}),
        ("us-west/zone1/b", {}),
        ("us-west/zone2/a", {}),
        ("us-east/zone1/a", {}),
    )
    setting = {
        "distribute": [
            {"from": "us-west/zone1/*", "to": {"us-west/zone1/*": 80, "us-west/zone2/*": 20}},
            {"from": "us-west/zone2/*", "to": {"us-west/zone1/*": 20, "us-west/zone2/*": 80}},
        ]
    }
    doc = localize("c", eps, policy(setting, outlier=False), Client("us-west/zone1/b"))
    assert weights(doc) == {
        "us-west/zone1/a": (27, 1),  # ceil(80 * 1/3)
        "us-west/zone1/b": (54, 2),  # ceil(80 * 2/3)
        "us-west/zone2/a": (20, 1),
        "us-east/zone1/a": (1, 0),  # matched by no "to": emptied for this client
    }
    # A client no "from" matches keeps every endpoint, each locality weighted by its size.
    doc = localize("c", eps, policy(setting, outlier=False), Client("us-east/zone1/a"))
    assert weights(doc) == {
        "us-west/zone1/a": (1, 1),
        "us-west/zone1/b": (2, 2),
        "us-west/zone2/a": (1, 1),
        "us-east/zone1/a": (1, 1),
    }


def test_disabled_setting_leaves_the_assignment_alone() -> None:
    eps = endpoints(("r1/z1", {}), ("r2/z1", {}))
    doc = localize("c", eps, policy({"enabled": False}), Client("r1/z1"))
    assert priorities(doc) == {20000: 0, 20001: 0}
    assert "load_balancing_weight" not in str(doc)


# --------------------------------------------------------------------------- validation


def _dr(trafficPolicy: str) -> str:
    body = textwrap.indent(textwrap.dedent(trafficPolicy).strip(), "    ")
    return (
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n"
        f"metadata: {{name: r}}\nspec:\n  host: r\n  trafficPolicy:\n{body}\n"
    )


LB = "spec.trafficPolicy.loadBalancer.localityLbSetting"


@pytest.mark.parametrize(
    ("setting", "path", "reason"),
    [
        (
            "{failover: [{from: r1, to: r2}], distribute: [{from: r1, to: {r1: 100}}]}",
            LB,
            "distribute and failover cannot both be set; keep one",
        ),
        (
            "{failover: [{from: r1, to: r1}]}",
            f"{LB}.failover[0]",
            "from and to must be different regions, both are 'r1'",
        ),
        (
            "{failover: [{from: r1/z1, to: r2}]}",
            f"{LB}.failover[0].from",
            "'r1/z1': failover names a region only, no '/'",
        ),
        (
            "{failover: [{from: r1, to: 'r*'}]}",
            f"{LB}.failover[0].to",
            "'r*': failover regions take no '*' wildcard",
        ),
        (
            "{failover: [{from: r1, to: r2}], failoverPriority: [topology.kubernetes.io/region]}",
            f"{LB}.failoverPriority[0]",
            "'topology.kubernetes.io/region' cannot be combined with failover (which already "
            "orders endpoints by region, zone and subzone); remove one of them",
        ),
        (
            "{distribute: [{from: r1, to: {r1: 60, r2: 30}}]}",
            f"{LB}.distribute[0].to",
            "weights must add up to 100, got 90",
        ),
        (
            "{distribute: [{from: r1, to: {r1: 0, r2: 100}}]}",
            f"{LB}.distribute[0].to.r1",
            "weight must be 1 to 100, got 0",
        ),
        (
            "{distribute: [{from: r1, to: {'r1/*': 50, 'r1/z1': 50}}]}",
            f'{LB}.distribute[0].to["r1/z1"]',
            "'r1/z1' overlaps a locality given before it",
        ),
        (
            "{distribute: [{from: '*', to: {r1: 100}}, {from: r1, to: {r2: 100}}]}",
            f"{LB}.distribute[1].from",
            "'r1' overlaps a locality given before it",
        ),
        (
            "{distribute: [{from: '*/z1', to: {r1: 100}}]}",
            f"{LB}.distribute[0].from",
            "'*/z1': at most one '*' wildcard, and only at the end",
        ),
        (
            "{distribute: [{from: 'r1//s1', to: {r1: 100}}]}",
            f"{LB}.distribute[0].from",
            "'r1//s1': region, zone and subzone must not be empty",
        ),
    ],
)
def test_validation_refuses_what_istio_refuses(setting: str, path: str, reason: str) -> None:
    with pytest.raises(ValidationFailed) as info:
        load_documents(_dr(f"loadBalancer: {{localityLbSetting: {setting}}}"))
    assert {e.path: e.reason for e in info.value.errors}[path] == reason


@pytest.mark.parametrize(
    "setting",
    [
        "{failover: [{from: r1, to: r2}], failoverPriority: [topology.istio.io/network]}",
        "{distribute: [{from: r1/z1, to: {r1: 100}}, {from: '*', to: {r2: 100}}]}",
        "{distribute: [{from: 'r1/*', to: {'r1/z1/*': 50, 'r1/z2': 50}}]}",
        "{enabled: false}",
    ],
)
def test_validation_accepts_what_istio_accepts(setting: str) -> None:
    load_documents(_dr(f"loadBalancer: {{localityLbSetting: {setting}}}"))


def test_apply_warns_when_failover_cannot_work_without_outlier_detection() -> None:
    text = """
loadBalancer:
  localityLbSetting:
    failover: [{from: r1, to: r2}]
    failoverPriority: [version]
"""
    warnings = not_yet_enforced(load_documents(_dr(text), "r.yaml"))
    assert warnings == [
        f"DestinationRule default/r: {LB}.{name} has no effect without outlierDetection: "
        "nothing ejects the failing endpoints, so traffic never fails over; add "
        "outlierDetection (e.g. consecutive5xxErrors) to the same policy"
        for name in ("failover", "failoverPriority")
    ]
    with_outlier = text + "outlierDetection: {consecutive5xxErrors: 1}\n"
    assert not_yet_enforced(load_documents(_dr(with_outlier), "r.yaml")) == []


# --------------------------------------------------------------------------- sharing

FAILOVER_RULE = _dr(
    """
outlierDetection: {consecutive5xxErrors: 1}
loadBalancer: {localityLbSetting: {failover: [{from: r1, to: r2}]}}
"""
)
PLAIN_RULE = (
    _dr("outlierDetection: {consecutive5xxErrors: 1}")
    .replace("host: r", "host: s")
    .replace("name: r", "name: s")
)


def world(rules: str, localities: Sequence[str]) -> World:
    instances = [
        Instance.from_document(
            {
                "name": f"{svc}-{i}",
                "service": svc,
                "namespace": "default",
                "port": 80,
                "address": "127.0.0.1",
                "target_port": 21000 + 10 * n + i,
                "locality": loc,
            }
        )
        for n, svc in enumerate(("r", "s"))
        for i, loc in enumerate(localities)
    ]
    return World.build(1, load_documents(rules), instances)


def test_a_mesh_that_does_not_use_locality_shares_one_config_per_namespace() -> None:
    # Outlier detection, but no endpoint has a locality: nothing depends on the client's.
    w = world(FAILOVER_RULE, ["", ""])
    assert not w.locality_aware
    a = w.scope_of(Node("a", locality="r1/z1"))
    b = w.scope_of(Node("b", locality="r2/z1"))
    assert a == b == ClientScope("default")
    # Localities but no rule that reads them.
    assert not world("", ["r1/z1", "r2/z1"]).locality_aware


def test_only_clusters_that_depend_on_the_locality_are_made_per_locality() -> None:
    w = world(FAILOVER_RULE + "---\n" + PLAIN_RULE, ["r1/z1", "r2/z1"])
    assert w.locality_aware
    memo = Memo()
    shared = translate_shared(w, memo)
    here = translate_outbound(w, w.scope_of(Node("a", locality="r1/z1")), memo, shared)
    there = translate_outbound(w, w.scope_of(Node("b", locality="r2/z1")), memo, shared)
    again = translate_outbound(w, w.scope_of(Node("c", locality="r1/z1")), memo, shared)
    r = "outbound|80||r.default.svc.cluster.local"
    s = "outbound|80||s.default.svc.cluster.local"
    # Both services depend on it here (s by Istio's default priorities).
    assert here.endpoints[r].body != there.endpoints[r].body
    assert here.endpoints[s].body != there.endpoints[s].body
    # The same locality reuses what was made (the memo), and routes and clusters are shared.
    assert again.endpoints[r] is here.endpoints[r]
    assert here.routes["outbound"] is there.routes["outbound"]
    assert here.clusters is there.clusters is shared.clusters
    # A client without a locality gets the shared assignments, made for it.
    nowhere = translate_outbound(w, "default", memo, shared)
    assert nowhere.endpoints is shared.endpoints


def test_a_cluster_in_one_locality_is_shared_by_every_client() -> None:
    w = world(FAILOVER_RULE + "---\n" + PLAIN_RULE, ["r1/z1", "r1/z1"])
    assert not w.locality_aware  # one locality: every client ranks it the same
    memo = Memo()
    shared = translate_shared(w, memo)
    here = translate_outbound(w, ClientScope("default", locality="r1/z1"), memo, shared)
    assert here.endpoints is shared.endpoints


def test_a_warm_memo_translates_like_a_fresh_one_for_every_locality() -> None:
    memo = Memo()
    rules = FAILOVER_RULE + "---\n" + PLAIN_RULE
    for localities in (["r1/z1", "r2/z1"], ["r1/z1", "r2/z1", "r2/z2"], ["r1/z1"], ["", "r3"]):
        w = world(rules, localities)
        shared = translate_shared(w, memo)
        for locality in ("", "r1/z1", "r2/z2", "r3"):
            scope = w.scope_of(Node("n", locality=locality))
            warm = translate_outbound(w, scope, memo, shared).endpoints
            cold = translate_outbound(w, scope).endpoints
            assert {n: (r.body.SerializeToString(), r.version) for n, r in warm.items()} == {
                n: (r.body.SerializeToString(), r.version) for n, r in cold.items()
            }
        memo.rotate()


def test_only_services_a_locality_rule_reaches_are_looked_at_per_client(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # One failover rule in a mesh of two services: a client scope's endpoints look at the
    # one service the rule names, not every service in the mesh.
    w = world(FAILOVER_RULE, ["r1/z1", "r2/z1"])
    r = "r.default.svc.cluster.local"
    assert w.locality_hosts == {r}  # s has no rule
    memo = Memo()
    shared = translate_shared(w, memo)
    translate_outbound(w, "default", memo, shared)  # the routes, which every locality shares
    looked_at: list[str] = []
    lookup = World.destination_rule

    def counting(self: World, host: str, namespace: str, labels: Any = ()) -> Any:
        looked_at.append(host)
        return lookup(self, host, namespace, labels)

    monkeypatch.setattr(World, "destination_rule", counting)
    here = translate_outbound(w, w.scope_of(Node("a", locality="r2/z1")), memo, shared)
    assert looked_at == [r]
    name = f"outbound|80||{r}"
    assert here.endpoints[name].body != shared.endpoints[name].body


def test_failover_priority_labels_split_scopes_only_when_some_endpoints_depend_on_them() -> None:
    rule = _dr(
        """
outlierDetection: {consecutive5xxErrors: 1}
loadBalancer: {localityLbSetting: {failoverPriority: [team]}}
"""
    )
    a, b = (Node(n, labels={"team": n}) for n in ("a", "b"))
    lone = world(rule, ["r1/z1"])  # one endpoint per service: no order to choose
    assert lone.scope_of(a) == lone.scope_of(b) == ClientScope("default")
    pair = world(rule, ["r1/z1", "r1/z1"])
    assert pair.scope_of(a) != pair.scope_of(b)
