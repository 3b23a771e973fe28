"""The World's indexes and the apply-time analysis built on them."""

from __future__ import annotations

from tsunagi.api import load_documents
from tsunagi.mesh import World
from tsunagi.mesh.analysis import not_yet_enforced, undefined_subsets
from tsunagi.registry import Instance

REVIEWS = Instance.from_document(
    {"name": "reviews-a", "service": "reviews", "port": 9080, "target_port": 20001}
)


def test_destination_rule_in_the_services_namespace_wins() -> None:
    docs = load_documents("""
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: elsewhere, namespace: aaa}
spec:
  host: reviews.default.svc.cluster.local
  subsets: [{name: other, labels: {version: x}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  subsets: [{name: v1, labels: {version: v1}}]
""")
    world = World.build(1, docs, [REVIEWS])
    assert world.subsets("reviews.default.svc.cluster.local") == ["v1"]


def test_apply_warnings_name_what_is_not_in_force() -> None:
    docs = load_documents("""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - match: [{sourceLabels: {app: web}}]
    fault: {abort: {httpStatus: 500, percentage: {value: 10}}}
    route: [{destination: {host: reviews, subset: v9}}]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default}
spec: {mtls: {mode: STRICT}}
""")
    world = World.build(1, docs, [REVIEWS])
    subsets = undefined_subsets(world, docs)
    assert len(subsets) == 1 and "spec.http[0].route[0].destination.subset" in subsets[0]
    pending = not_yet_enforced(docs)
    assert any("spec.http[0].fault is not applied yet" in w for w in pending)
    assert any("sourceLabels is not supported yet" in w for w in pending)
    assert any("PeerAuthentication default/default" in w for w in pending)
