"""A gateway is observable like a sidecar: a real ``tsunagi up`` (tracing every request,
access logs on), a real ``tsunagi gateway`` and a real sidecar'd backend, asked with real
``curl`` through the gateway.

What is asserted is what each part shows: the gateway's own ``/stats/prometheus`` counts
exactly the requests sent, as Istio's gateways report them (``reporter="source"``, the
gateway as the source workload, the backend as the destination); its ``[gateway ID]``
access log lines are on its output; the collector has a trace whose root span is the
gateway's and whose backend span hangs under the gateway's; Prometheus discovery lists the
gateway's metrics port, and the service graph has the edge gateway → backend.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .mesh import Mesh, Workload, free_port, started_mesh, wait_until
from .test_gateway import accepts, curl
from .test_metrics import samples, scrape, total
from .test_tcp import answers, exchange
from .test_tracing import trace

pytestmark = pytest.mark.e2e

HOST = "shop.example.com"
REVIEWS = "reviews.default.svc.cluster.local"
SENT = 5


@pytest.fixture
def traced(tmp_path: Path) -> Iterator[Mesh]:
    yield from started_mesh(tmp_path, "--trace-sampling", "100", "--access-log")


def gateway_log(mesh: Mesh) -> str:
    """The output of the (only) ``tsunagi gateway`` of this test (see ``Mesh.gateway``)."""
    (path,) = mesh.state_dir.glob("gateway-*.log")
    return path.read_text(errors="replace")


def gateway_metrics_port(mesh: Mesh) -> int:
    found = re.search(r"metrics on http://127\.0\.0\.1:(\d+)/stats/prometheus", gateway_log(mesh))
    assert found, gateway_log(mesh)
    return int(found.group(1))


def routes(port: int) -> str:
    return f"""
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: shop}}
spec:
  selector: {{edge: tel}}
  servers:
  - port: {{number: {port}, name: http, protocol: HTTP}}
    hosts: [{HOST}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: shop}}
spec:
  hosts: [{HOST}]
  gateways: [shop]
  http:
  - route: [{{destination: {{host: reviews, port: {{number: 9080}}}}}}]
"""


def test_the_gateway_reports_metrics_logs_traces_and_graph_edges(traced: Mesh) -> None:
    traced.run("reviews", "v1")
    gw: Workload = traced.gateway("edge", {"edge": "tel"})
    port = free_port()
    applied = traced.apply(routes(port), "--wait")
    assert applied.returncode == 0, applied.stderr
    wait_until(lambda: accepts(port), what=f"the gateway listening on {port}")

    bodies = []
    for i in range(SENT):
        status, _, body = curl(port, HOST, f"/item/{i}")
        assert status == 200, body
        bodies.append(json.loads(body))
    status, _, _ = curl(port, "nobody.example.com", "/")
    assert status == 404  # no virtual host: Envoy's own answer, reported too

    # Metrics: the gateway is the source, the backend the destination, every request once.
    metrics = gateway_metrics_port(traced)
    labels = {
        "reporter": "source",
        "source_workload": "edge",
        "source_canonical_service": "edge",
        "source_workload_namespace": "default",
        "destination_service": REVIEWS,
        "destination_service_name": "reviews",
        "destination_workload": "reviews-v1",
        # over mesh mTLS: the identity in the certificate reviews' sidecar presented
        "destination_principal": "spiffe://cluster.local/ns/default/sa/reviews",
        "destination_app": "reviews",
        "destination_version": "v1",
        "request_protocol": "http",
    }

    def counted() -> float:
        return total(samples(scrape(metrics), "istio_requests_total"), **labels)

    wait_until(lambda: counted() >= SENT, what="the gateway's metrics")
    text = scrape(metrics)
    requests = samples(text, "istio_requests_total")
    assert total(requests, response_code="200", **labels) == SENT
    assert total(requests, reporter="source", source_workload="edge", response_code="404") == 1
    assert total(requests, reporter="destination") == 0  # a gateway reports as a client
    assert "envoy_server_live" in text  # merged with Envoy's own stats

    # Prometheus discovery lists the gateway's metrics endpoint under its instance name.
    targets = traced.api("GET", "/v1/prometheus/targets")
    pods = {g["labels"].get("pod"): g["targets"][0] for g in targets}
    assert pods.get(gw.name) == f"127.0.0.1:{metrics}", pods

    # Access log: one [gateway ID] line per request, on the gateway's output.
    marker = f"[gateway {gw.name}.default] "

    def logged() -> list[str]:
        return [ln for ln in gateway_log(traced).splitlines() if ln.startswith(marker)]

    wait_until(lambda: len(logged()) >= SENT + 1, what="the gateway's access log lines")
    lines = logged()
    assert sum(f'"{HOST}:{port}"' in ln and " 200 " in ln for ln in lines) == SENT, lines
    assert sum(f'"nobody.example.com:{port}"' in ln and " 404 NR " in ln for ln in lines) == 1

    # Tracing: the gateway starts the trace; the backend's span is under the gateway's.
    trace_id = bodies[0]["headers"]["x-b3-traceid"]
    assert bodies[0]["headers"].get("traceparent", "").split("-")[1] == trace_id.rjust(32, "0")
    spans: list[dict[str, Any]] = []

    def complete() -> bool:
        spans[:] = trace(traced, trace_id)
        names = {s["localEndpoint"]["serviceName"] for s in spans}
        return {"edge", "reviews"} <= names

    wait_until(complete, what="the gateway's and the backend's spans in one trace")
    by_id = {s["id"]: s for s in spans}
    (root,) = [s for s in spans if "parentId" not in s]
    assert root["localEndpoint"]["serviceName"] == "edge"
    assert root["kind"] == "SERVER"
    assert root["tags"]["istio.canonical_service"] == "edge"
    (backend,) = [s for s in spans if s["localEndpoint"]["serviceName"] == "reviews"]
    parent = by_id[backend["parentId"]]
    assert parent["localEndpoint"]["serviceName"] == "edge"  # the gateway's upstream span
    assert parent["kind"] == "CLIENT" and parent.get("parentId") == root["id"]

    # The service graph: the gateway calls reviews. An edge is drawn from the increase of
    # the counters between scrapes, so requests keep coming while we wait.
    def drawn() -> bool:
        assert curl(port, HOST, "/again")[0] == 200
        graph = traced.api("GET", "/v1/graph?window=60")
        edges = {(e["source"], e["target"]) for e in graph.get("edges", [])}
        return ("workload:default:edge", "service:default:reviews") in edges

    wait_until(drawn, 60, "the edge gateway → reviews in the graph")


TCP_ROUTES = """
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: echo}}
spec:
  selector: {{edge: tel}}
  servers:
  - port: {{number: {port}, name: tcp, protocol: TCP}}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: echo}}
spec:
  hosts: ["*"]
  gateways: [echo]
  tcp:
  - route: [{{destination: {{host: tcp-echo, port: {{number: 9000}}}}}}]
"""


def test_a_tcp_server_reports_connections_and_bytes_and_logs_them(traced: Mesh) -> None:
    traced.run("tcp-echo", "v1", "9000/tcp", "tcp_echo.py")  # type: ignore[arg-type]
    gw = traced.gateway("edge", {"edge": "tel"})
    port = free_port()
    applied = traced.apply(TCP_ROUTES.format(port=port), "--wait")
    assert applied.returncode == 0, applied.stderr
    wait_until(lambda: answers(port), what=f"the gateway's TCP server on {port}")
    for _ in range(2):
        assert exchange(port, b"ping\n") == b"v1 ping\n"
    metrics = gateway_metrics_port(traced)
    labels = {
        "reporter": "source",
        "source_workload": "edge",
        "destination_service": "tcp-echo.default.svc.cluster.local",
        "destination_workload": "tcp-echo-v1",
        "destination_principal": "spiffe://cluster.local/ns/default/sa/tcp-echo",
        "request_protocol": "tcp",
    }

    def closed() -> float:
        text = scrape(metrics)
        return total(samples(text, "istio_tcp_connections_closed_total"), **labels)

    # answers() opened one more connection (and each wait probe may too): at least 3.
    wait_until(lambda: closed() >= 3, what="the gateway's TCP metrics")
    text = scrape(metrics)
    opened = total(samples(text, "istio_tcp_connections_opened_total"), **labels)
    assert opened == closed() >= 3
    # Each exchange sent 5 bytes to the echo server and got 8 back ("v1 ping\n").
    sent = total(samples(text, "istio_tcp_sent_bytes_total"), **labels)
    received = total(samples(text, "istio_tcp_received_bytes_total"), **labels)
    assert received >= 2 * 5 and sent >= 2 * 8
    marker = f"[gateway {gw.name}.default] "
    wait_until(
        lambda: sum(ln.startswith(marker) for ln in gateway_log(traced).splitlines()) >= 3,
        what="one access log line per connection",
    )
