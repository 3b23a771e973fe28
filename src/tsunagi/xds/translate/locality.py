"""Locality load balancing: endpoint priorities and weights relative to the client, as Istio
computes them (``pilot/pkg/networking/core/loadbalancer``).

Which setting applies to a cluster: the DestinationRule's ``loadBalancer.localityLbSetting``
after the usual trafficPolicy merge (see :mod:`.policy`); ``enabled: false`` turns locality
load balancing off for it; with no setting, Istio's mesh default applies, which is *enabled*
with neither failover rules nor weights. Then, for one client:

- ``distribute``: the first entry whose ``from`` matches the client's locality gives each
  locality group a weight (its share of the ``to`` weight it matches, split by endpoint
  count); groups no ``to`` matches are emptied. Clients matching no ``from`` are unchanged.
- otherwise, only when the cluster has outlier detection (without it Envoy never notices a
  failing locality, so failing over could never happen): priorities. With
  ``failoverPriority``, each group is split by how many of the listed labels the endpoint
  shares with the client (``key=value`` compares with ``value`` instead); with ``failover``
  too (or with neither), by locality: same region/zone/subzone 0, same region/zone 1, same
  region 2, other regions 3 — or 4 when the client's region has a ``failover`` rule and the
  endpoint is not in its ``to`` region. Priorities are then renumbered 0..N without gaps.

Labels compared by ``failoverPriority`` include each side's locality as Istio's topology
labels (``topology.kubernetes.io/region``, ``topology.kubernetes.io/zone``,
``topology.istio.io/subzone``). This mesh is one cluster on one network, so the
``topology.istio.io/network`` and ``topology.istio.io/cluster`` labels are equal on both
sides unless a workload sets them itself. (Istio skips ``failoverPriority`` for a proxy with
no labels at all, which its sidecars never are: they always carry their cluster's label.
Here a client may have none, and the priorities apply all the same.)

A client without a locality is compared as Istio compares it: its region is empty, so
endpoints without a locality are its closest ones and every other endpoint is "another
region".

Clusters whose endpoints come from DNS (ServiceEntry ``resolution: DNS``) are left as they
are: their endpoints are part of the cluster, which every client shares.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tsunagi.api import DestinationRuleSpec, LocalityLoadBalancerSetting
from tsunagi.mesh import Endpoint
from tsunagi.xds.translate.endpoints import Subsets, by_locality, load_assignment, select
from tsunagi.xds.translate.names import outbound_cluster
from tsunagi.xds.translate.policy import ClusterPolicy, cluster_policy

REGION_LABEL = "topology.kubernetes.io/region"
ZONE_LABEL = "topology.kubernetes.io/zone"
SUBZONE_LABEL = "topology.istio.io/subzone"
TOPOLOGY_LABELS = (REGION_LABEL, ZONE_LABEL, SUBZONE_LABEL)

MESH_DEFAULT = LocalityLoadBalancerSetting(enabled=True)
"""Istio's mesh-wide ``localityLbSetting`` default: enabled, no failover rules, no weights."""


@dataclass(frozen=True)
class Client:
    """What of the client proxy a cluster's endpoints depend on."""

    locality: str = ""
    labels: tuple[tuple[str, str], ...] = ()


NEUTRAL = Client()


def split(locality: str) -> tuple[str, str, str]:
    """``region/zone/subzone`` as three strings, missing parts empty."""
    parts = [*locality.split("/"), "", ""]
    return parts[0], parts[1], parts[2]


def topology_labels(labels: Mapping[str, str], locality: str) -> dict[str, str]:
    """``labels`` plus the locality as Istio's topology labels (the locality wins)."""
    out = dict(labels)
    for key, value in zip(TOPOLOGY_LABELS, split(locality), strict=True):
        if value:
            out[key] = value
    return out


def setting(policy: ClusterPolicy) -> LocalityLoadBalancerSetting | None:
    """The locality setting in force for a cluster with ``policy``; None when disabled."""
    lb = policy.load_balancer
    own = lb.locality_lb_setting if lb is not None else None
    if own is None:
        return MESH_DEFAULT
    return None if own.enabled is False else own


def weighted(policy: ClusterPolicy) -> bool:
    """Whether the cluster uses Envoy's locality-weighted load balancing (Istio sets it for
    ``distribute``, and for failover rules when outlier detection makes them work)."""
    s = setting(policy)
    if s is None:
        return False
    failover = policy.outlier_detection is not None
    return bool(s.distribute) or (failover and bool(s.failover or s.failover_priority))


def compared_labels(s: LocalityLoadBalancerSetting) -> list[str]:
    """The label keys whose client value ``failoverPriority`` compares (``key=value``
    entries name their value, so the client's is not needed)."""
    return [entry for entry in s.failover_priority if "=" not in entry]


def depends_on_client(policy: ClusterPolicy, endpoints: Sequence[Endpoint]) -> bool:
    """Whether this cluster's endpoint assignment differs between clients."""
    s = setting(policy)
    if s is None:
        return False
    if s.distribute:
        return bool(endpoints)
    if policy.outlier_detection is None:
        return False
    if s.failover_priority:
        return len(endpoints) > 1
    return len({e.locality for e in endpoints}) > 1


def client_of(policy: ClusterPolicy, locality: str, labels: Mapping[str, str]) -> Client:
    """The part of a client this cluster's assignment depends on (a memo key)."""
    s = setting(policy)
    keys = compared_labels(s) if s is not None else []
    return Client(locality, tuple(sorted((k, v) for k, v in labels.items() if k in keys)))


# --------------------------------------------------------------------------- priorities


def locality_match(locality: str, rule: str) -> bool:
    """Whether ``locality`` is inside ``rule`` (``region[/zone[/subzone]]``, ``*`` for any)."""
    region, zone, subzone = split(locality)
    r_region, r_zone, r_subzone = split(rule)
    return (
        r_region in ("*", region) and r_zone in ("*", "", zone) and r_subzone in ("*", "", subzone)
    )


def lb_priority(client: str, endpoint: str) -> int:
    """0 same subzone, 1 same zone, 2 same region, 3 elsewhere."""
    c, e = split(client), split(endpoint)
    if c[0] != e[0]:
        return 3
    if c[1] != e[1]:
        return 2
    return 0 if c[2] == e[2] else 1


def label_priority(
    client: Mapping[str, str], endpoint: Mapping[str, str], priorities: Sequence[str]
) -> int:
    """``failoverPriority``: 0 when every listed label matches, else N minus the number of
    leading labels that match (a label counts only if all before it match)."""
    for i, entry in enumerate(priorities):
        key, eq, value = entry.partition("=")
        wanted = value if eq else client.get(key, "")
        if endpoint.get(key, "") != wanted:
            return len(priorities) - i
    return 0


def _compact(priorities: Sequence[int]) -> list[int]:
    """Renumber to 0..N without gaps, keeping the order (Envoy wants no skipped levels)."""
    rank = {p: i for i, p in enumerate(sorted(set(priorities)))}
    return [rank[p] for p in priorities]


@dataclass
class Group:
    """One locality group of an assignment, with the endpoints it was made from."""

    locality: str
    doc: dict[str, Any]
    endpoints: list[Endpoint]
    priority: int = 0
    weight: int = 0


def _failover_priorities(
    groups: list[Group], client: Client, priorities: Sequence[str]
) -> list[Group]:
    proxy = topology_labels(dict(client.labels), client.locality)
    out: list[Group] = []
    for g in groups:
        buckets: dict[int, list[int]] = {}
        for i, ep in enumerate(g.endpoints):
            p = label_priority(proxy, topology_labels(ep.labels, ep.locality), priorities)
            buckets.setdefault(p, []).append(i)
        for p in sorted(buckets):
            doc = {**g.doc, "lb_endpoints": [g.doc["lb_endpoints"][i] for i in buckets[p]]}
            eps = [g.endpoints[i] for i in buckets[p]]
            out.append(Group(g.locality, doc, eps, p, len(eps)))
    for g, p in zip(out, _compact([g.priority for g in out]), strict=True):
        g.priority = p
    return out


def _locality_failover(groups: list[Group], client: Client, s: LocalityLoadBalancerSetting) -> None:
    region = split(client.locality)[0]
    for g in groups:
        p = lb_priority(client.locality, g.locality)
        if p == 3:
            rule = next((f for f in s.failover if f.from_ == region), None)
            if rule is not None and split(g.locality)[0] != rule.to:
                p = 4
        # Earlier priorities (from failoverPriority) stay the major key.
        g.priority = g.priority * 5 + p
    for g, p in zip(groups, _compact([g.priority for g in groups]), strict=True):
        g.priority = p


def _distribute(groups: list[Group], client: Client, s: LocalityLoadBalancerSetting) -> None:
    rule = next((d for d in s.distribute if locality_match(client.locality, d.from_)), None)
    if rule is None:
        return
    unmatched = set(range(len(groups)))
    for target, weight in sorted(rule.to.items()):
        chosen = [i for i in sorted(unmatched) if locality_match(groups[i].locality, target)]
        unmatched -= set(chosen)
        total = sum(groups[i].weight for i in chosen)
        for i in chosen:
            share = math.ceil(groups[i].weight * weight / total)
            if share > 0:
                groups[i].weight = share
    for i in unmatched:  # traffic from this client never goes there
        groups[i].doc = {**groups[i].doc, "lb_endpoints": []}
        groups[i].endpoints = []


def localize(
    name: str, endpoints: Sequence[Endpoint], policy: ClusterPolicy, client: Client
) -> dict[str, Any]:
    """The assignment of cluster ``name`` (its ``endpoints`` already chosen) for ``client``."""
    doc = load_assignment(name, list(endpoints))
    s = setting(policy)
    if s is None or not (s.distribute or policy.outlier_detection is not None):
        return doc  # nothing to weigh, and nothing could fail over
    groups = [
        Group(loc, g, eps, 0, len(eps))
        for (loc, eps), g in zip(by_locality(endpoints), doc["endpoints"], strict=True)
    ]
    if s.distribute:
        _distribute(groups, client, s)
    elif policy.outlier_detection is not None:
        if s.failover_priority:
            groups = _failover_priorities(groups, client, s.failover_priority)
            if s.failover:
                _locality_failover(groups, client, s)
        else:
            _locality_failover(groups, client, s)
    with_weights = weighted(policy)
    out = []
    for g in groups:
        group = dict(g.doc)
        if g.priority:
            group["priority"] = g.priority
        if with_weights:
            # Envoy gives a locality without a weight no traffic under weighted balancing.
            group["load_balancing_weight"] = g.weight
        out.append(group)
    return {**doc, "endpoints": out}


# --------------------------------------------------------------------------- clusters


def service_assignments(
    host: str,
    port: int,
    endpoints: Sequence[Endpoint],
    subsets: Subsets,
    dr: DestinationRuleSpec | None,
    client: Client = NEUTRAL,
) -> list[dict[str, Any]]:
    """The assignments of ``host:port`` and of each subset, for ``client``. With the neutral
    client this is what every client gets for clusters that do not depend on the client."""
    out = []
    for subset, labels in (("", ()), *subsets):
        name = outbound_cluster(host, port, subset)
        chosen = select(endpoints, dict(labels))
        out.append(localize(name, chosen, cluster_policy(dr, port, subset), client))
    return out


def client_dependent(
    host: str,
    port: int,
    endpoints: Sequence[Endpoint],
    subsets: Subsets,
    dr: DestinationRuleSpec,
) -> list[tuple[str, ClusterPolicy, tuple[Endpoint, ...]]]:
    """The clusters of ``host:port`` whose assignment differs between clients: name, policy
    and endpoints of each."""
    out = []
    for subset, labels in (("", ()), *subsets):
        policy = cluster_policy(dr, port, subset)
        chosen = tuple(select(endpoints, dict(labels)))
        if depends_on_client(policy, chosen):
            out.append((outbound_cluster(host, port, subset), policy, chosen))
    return out


def cluster_config(cluster: dict[str, Any], policy: ClusterPolicy) -> dict[str, Any]:
    """``cluster`` with locality-weighted balancing turned on when its policy needs it."""
    if weighted(policy):
        common = cluster.setdefault("common_lb_config", {})
        common["locality_weighted_lb_config"] = {}
    return cluster
