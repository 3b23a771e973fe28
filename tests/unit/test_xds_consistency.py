"""Snapshot consistency: every endpoint set a cluster loads and every route configuration a
listener loads is in the snapshot (or Envoy would wait for it while warming)."""

from __future__ import annotations

from pathlib import Path

import pytest

import tsunagi
from tsunagi.api.loader import load_documents
from tsunagi.mesh import Node, World
from tsunagi.xds.dependencies import inconsistencies
from tsunagi.xds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, Snapshot
from tsunagi.xds.translate import translate

from .examples import instance
from .test_xds_protocol import cla, cluster, listener, route, world


def test_a_complete_snapshot_is_consistent() -> None:
    assert inconsistencies(world(("a", "b"), listeners=("l1", "l2"))) == []


def test_missing_endpoints_and_routes_are_named() -> None:
    snap = Snapshot.build(
        {
            CLUSTER: [cluster("a"), cluster("b")],
            ENDPOINT: [cla("a")],
            LISTENER: [listener("l", "rt-l")],
            ROUTE: [],
        },
        1,
    )
    assert inconsistencies(snap) == [
        "CDS 'b' needs EDS 'b', which the snapshot lacks",
        "LDS 'l' needs RDS 'rt-l', which the snapshot lacks",
    ]


def test_clusters_without_ads_endpoints_need_none() -> None:
    snap = Snapshot.build(
        {
            CLUSTER: [cluster("dns", eds=False), cluster("file", ads=False)],
            ROUTE: [route("r", "x")],
        },
        1,
    )
    assert inconsistencies(snap) == []


@pytest.mark.parametrize("service", ["productpage", "reviews", "ratings", "details"])
def test_translated_demo_snapshots_are_consistent(service: str) -> None:
    rules = Path(tsunagi.__file__).parent / "demo" / "rules"
    docs = [d for f in sorted(rules.glob("*.yaml")) for d in load_documents(f.read_text(), f.name)]
    instances = [
        instance("productpage-1", "productpage", "v1"),
        instance("details-1", "details", "v1"),
        instance("ratings-1", "ratings", "v1"),
        *(instance(f"reviews-{v}", "reviews", v) for v in ("v1", "v2", "v3")),
    ]
    node = Node.from_metadata(
        f"{service}-1.default",
        {
            "namespace": "default",
            "service": service,
            "outbound_port": 15001,
            "inbound": {"9080": {"listen": 15006, "app": 8080}},
        },
    )
    snap = translate(World.build(1, docs, instances), node)
    assert snap.of(CLUSTER) and snap.of(LISTENER)
    assert inconsistencies(snap) == []
