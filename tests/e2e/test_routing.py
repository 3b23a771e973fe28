"""Routing by Istio rules through real Envoy sidecars: what a client actually receives."""

from __future__ import annotations

import http.client
import time

import pytest

from .mesh import Mesh, Traffic, Workload, request
from .rules import JASON_TO_V2, SPLIT_80_20, SUBSETS, my_app_to

pytestmark = pytest.mark.e2e


def applied(mesh: Mesh, text: str) -> str:
    result = mesh.apply(text, "--wait")
    assert result.returncode == 0, result.stderr
    assert "in sync after" in result.stdout
    return result.stdout


def reviews_v1_v2_with(mesh: Mesh, rule: str) -> tuple[Workload, http.client.HTTPConnection]:
    """reviews v1 and v2, a client, subsets and ``rule`` applied; a keep-alive connection
    to the client's sidecar."""
    mesh.run("reviews", "v1")
    mesh.run("reviews", "v2")
    client = mesh.client()
    applied(mesh, SUBSETS + "---" + rule)
    return client, http.client.HTTPConnection("127.0.0.1", client.outbound_port, timeout=10)


def test_header_match_sends_jason_to_v2_and_everyone_else_to_v1(mesh: Mesh) -> None:
    client, conn = reviews_v1_v2_with(mesh, JASON_TO_V2)
    for _ in range(50):
        status, body = request(
            client.outbound_port, "reviews:9080", headers={"end-user": "jason"}, conn=conn
        )
        assert (status, body["version"]) == (200, "v2")
        status, body = request(client.outbound_port, "reviews:9080", conn=conn)
        assert (status, body["version"]) == (200, "v1")
        status, body = request(
            client.outbound_port, "reviews:9080", headers={"end-user": "json"}, conn=conn
        )
        assert (status, body["version"]) == (200, "v1")
    conn.close()
    # The short name, name.namespace and FQDN all reach the same service.
    for host in ("reviews", "reviews.default", "reviews.default.svc.cluster.local:9080"):
        status, body = client.get(host, headers={"end-user": "jason"})
        assert (status, body["version"]) == (200, "v2"), host


def test_weighted_split_80_20_over_2000_requests(mesh: Mesh) -> None:
    client, conn = reviews_v1_v2_with(mesh, SPLIT_80_20)
    counts = {"v1": 0, "v2": 0}
    for _ in range(2000):
        status, body = request(client.outbound_port, "reviews:9080", conn=conn)
        assert status == 200
        counts[body["version"]] += 1
    conn.close()
    share = counts["v2"] / 2000
    assert abs(share - 0.20) <= 0.03, counts


@pytest.mark.parametrize("protocol", ["delta", "sotw"])
def test_blue_green_switch_with_wait_loses_no_request(mesh: Mesh, protocol: str) -> None:
    mesh.xds_protocol = protocol
    mesh.run("blue", "v1", 8080)
    mesh.run("green", "v1", 8080)
    client = mesh.client()
    applied(mesh, my_app_to("blue"))
    status, body = client.get("my-app.example.com")
    assert (status, body["service"]) == (200, "blue")
    with Traffic(client.outbound_port, "my-app.example.com") as traffic:
        time.sleep(0.5)
        out = applied(mesh, my_app_to("green"))
        switched_at = len(traffic.results)
        time.sleep(0.5)
        for _ in range(20):  # and a client that starts only now
            status, body = client.get("my-app.example.com:80")
            assert (status, body["service"]) == (200, "green")
    assert traffic.failures() == []
    assert traffic.seen_after(switched_at) == {"green/v1"}, out
    assert len(traffic.results) > 100


def test_route_to_undefined_subset_warns_and_gets_503(mesh: Mesh) -> None:
    mesh.run("reviews", "v1")
    client = mesh.client()
    result = mesh.apply(SPLIT_80_20, "--wait")
    assert result.returncode == 0
    assert (
        "no DestinationRule defines subsets for reviews.default.svc.cluster.local" in result.stderr
    )
    assert "503" in result.stderr
    status, _ = client.get("reviews:9080")
    assert status == 503


def test_unknown_host_passes_through_and_service_without_rules_gets_default_route(
    mesh: Mesh,
) -> None:
    mesh.run(
        "ratings",
        "v1",
        9080,
        "echo.py",
        True,
        "--label",
        "team=books",
        "--locality",
        "eu-west/zone-a",
    )
    client = mesh.client()
    workload = mesh.api("GET", "/v1/resources?kind=workloads&name=ratings-v1-0")["items"][0]
    assert workload["document"]["labels"] == {"team": "books", "app": "ratings", "version": "v1"}
    assert workload["document"]["locality"] == "eu-west/zone-a"
    status, body = client.get("ratings:9080")
    assert (status, body["service"]) == (200, "ratings")
    # ALLOW_ANY (the default): an unknown host passes through to where its name resolves;
    # this one resolves nowhere, so the sidecar answers 503 (tests/e2e/test_egress.py).
    status, body = client.get("nowhere.invalid")
    assert status == 503 and "dns" in str(body).lower(), body
