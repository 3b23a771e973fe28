"""Rules that apply to some clients only, through real Envoy sidecars: ``sourceLabels``,
``sourceNamespace``, VirtualService delegation and ``exportTo``. Each test asserts which
instance (or which direct response) a client actually receives."""

from __future__ import annotations

import pytest

from .mesh import Mesh, Workload
from .rules import SUBSETS

pytestmark = pytest.mark.e2e

REVIEWS = "reviews.default.svc.cluster.local:9080"


def applied(mesh: Mesh, text: str) -> str:
    result = mesh.apply(text, "--wait")
    assert result.returncode == 0, result.stderr
    assert "in sync after" in result.stdout
    return result.stderr


def client(mesh: Mesh, version: str = "v1", namespace: str = "default") -> Workload:
    return mesh.run("client", version, 80, "idle.py", False, "--namespace", namespace)


def versions(w: Workload, path: str = "/", count: int = 20) -> set[str]:
    """The reviews versions that answer ``count`` requests of ``w``'s app."""
    seen = set()
    for _ in range(count):
        status, body = w.get(REVIEWS, path)
        assert status == 200 and isinstance(body, dict), (status, body)
        seen.add(body["version"])
    return seen


def test_source_labels_and_source_namespace_pick_which_clients_a_route_applies_to(
    mesh: Mesh,
) -> None:
    mesh.run("reviews", "v1")
    mesh.run("reviews", "v2")
    v1, v2, other = client(mesh, "v1"), client(mesh, "v2"), client(mesh, "v1", "b")
    applied(
        mesh,
        SUBSETS
        + """---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - match: [{sourceLabels: {version: v2}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - match: [{sourceNamespace: b, uri: {prefix: /b}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - route: [{destination: {host: reviews, subset: v1}}]
""",
    )
    assert versions(v2) == {"v2"}
    assert versions(v1) == {"v1"}
    assert versions(v1, "/b") == {"v1"}  # the sourceNamespace route is not for default
    assert versions(other, "/b") == {"v2"}
    assert versions(other) == {"v1"}


DELEGATION = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - match: [{uri: {prefix: /api}}]
    delegate: {name: reviews-api, namespace: team}
  - route: [{destination: {host: reviews, subset: v1}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews-api, namespace: team}
spec:
  http:
  - match: [{uri: {prefix: /api/v2}}]
    route: [{destination: {host: reviews.default.svc.cluster.local, subset: v2}}]
  - match: [{uri: {prefix: /admin}}]
    directResponse: {status: 403, body: {string: admin}}
  - directResponse: {status: 418, body: {string: delegated}}
"""


def test_a_delegate_chain_routes_as_the_merged_rule_says(mesh: Mesh) -> None:
    mesh.run("reviews", "v1")
    mesh.run("reviews", "v2")
    c = client(mesh)
    warnings = applied(mesh, SUBSETS + "---" + DELEGATION)
    # /admin lies outside the root's /api: Istio drops that delegate route, and apply says so.
    assert "route http[1] of VirtualService team/reviews-api" in warnings
    assert versions(c, "/api/v2/items") == {"v2"}
    assert c.get(REVIEWS, "/api/other") == (418, "delegated")
    assert versions(c, "/admin") == {"v1"}  # the root's own route, not the dropped one
    assert versions(c, "/") == {"v1"}


def test_a_missing_delegate_is_a_warning_and_routes_nothing(mesh: Mesh) -> None:
    mesh.run("reviews", "v1")
    mesh.run("reviews", "v2")
    c = client(mesh)
    root = DELEGATION.split("---")[0].replace("reviews-api, namespace: team", "nowhere")
    warnings = applied(mesh, SUBSETS + "---" + root)
    assert "no VirtualService default/nowhere without hosts exists" in warnings
    assert versions(c, "/api/v2/items") == {"v1"}  # the root's other routes still apply


def test_a_virtual_service_exported_to_one_namespace_is_not_used_by_others(mesh: Mesh) -> None:
    mesh.run("reviews", "v1")
    in_a, in_b = client(mesh, "v1", "a"), client(mesh, "v1", "b")
    applied(
        mesh,
        """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  exportTo: [a]
  http:
  - directResponse: {status: 418, body: {string: only-for-a}}
""",
    )
    assert in_a.get(REVIEWS) == (418, "only-for-a")
    status, body = in_b.get(REVIEWS)
    assert status == 200 and isinstance(body, dict) and body["service"] == "reviews"


def test_a_destination_rule_in_the_client_namespace_wins(mesh: Mesh) -> None:
    # One VirtualService routes everyone to subset "pick"; which instances "pick" means is
    # up to the DestinationRule each client finds first: its own namespace's (a), else the
    # service's (default). Same cluster name, different endpoints per namespace.
    mesh.run("reviews", "v1")
    mesh.run("reviews", "v2")
    in_a, in_b = client(mesh, "v1", "a"), client(mesh, "v1", "b")
    applied(
        mesh,
        """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - route: [{destination: {host: reviews, subset: pick}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets: [{name: pick, labels: {version: v1}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews-for-a, namespace: a}
spec:
  host: reviews.default.svc.cluster.local
  subsets: [{name: pick, labels: {version: v2}}]
""",
    )
    assert versions(in_a) == {"v2"}
    assert versions(in_b) == {"v1"}
