"""Istio's standard metrics and access logs from real sidecars.

Requests go client → server through both sidecars (some answered 200 by the app, some 503
by the app, some aborted by a fault in the client's sidecar, one sent from outside the mesh
straight to the server's inbound port); then each sidecar's ``/stats/prometheus`` must count
exactly those, by code, with Istio's labels for its reporter, and the access log lines must
be on ``tsunagi run``'s output. A TCP port's connection and byte counts, a gRPC call's
protocol and status, and the JSON access log get the same treatment.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from .mesh import Mesh, Workload, free_port, outside_echo, started_mesh, stop, wait_until
from .test_protocols import call

pytestmark = pytest.mark.e2e

ECHO = "echo.default.svc.cluster.local"
Series = list[tuple[dict[str, str], float]]
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


@pytest.fixture
def text_mesh(tmp_path: Path) -> Iterator[Mesh]:
    yield from started_mesh(tmp_path, "--access-log", "text")


@pytest.fixture
def json_mesh(tmp_path: Path) -> Iterator[Mesh]:
    yield from started_mesh(tmp_path, "--access-log", "json")


def log_of(mesh: Mesh, w: Workload) -> str:
    return (mesh.state_dir / f"{w.name}.log").read_text(errors="replace")


def metrics_port(mesh: Mesh, w: Workload) -> int:
    """The port the agent said it serves metrics on."""
    found = re.search(r"metrics on http://127\.0\.0\.1:(\d+)/stats/prometheus", log_of(mesh, w))
    assert found, log_of(mesh, w)
    return int(found.group(1))


def scrape(port: int) -> str:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request("GET", "/stats/prometheus")
        resp = c.getresponse()
        body = resp.read().decode()
        assert resp.status == 200, body
        assert resp.getheader("content-type", "").startswith("text/plain")
        return body
    finally:
        c.close()


def samples(text: str, name: str) -> Series:
    """Every sample of metric ``name`` in Prometheus text ``text``."""
    out = []
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m and m.group(1) == name:
            out.append((dict(_LABEL.findall(m.group(2) or "")), float(m.group(3))))
    return out


def total(series: Series, **labels: str) -> float:
    return sum(v for lb, v in series if all(lb.get(k) == x for k, x in labels.items()))


def discovered(mesh: Mesh) -> dict[str, str]:
    """Prometheus discovery's sidecar targets: pod → address (from the registration's
    ``metrics_port``)."""
    groups = mesh.api("GET", "/v1/prometheus/targets")
    return {g["labels"]["pod"]: g["targets"][0] for g in groups if g["labels"].get("pod")}


def inbound_port(mesh: Mesh, w: Workload) -> int:
    """The server sidecar's inbound listener, as its agent logged it."""
    found = re.search(r"proxy ready \(outbound [\d.:]+, inbound [\d.]+:(\d+)", log_of(mesh, w))
    assert found, log_of(mesh, w)
    return int(found.group(1))


FAULT = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo}
spec:
  hosts: [echo]
  http:
  - match: [{headers: {x-fail: {exact: "1"}}}]
    fault: {abort: {httpStatus: 503, percentage: {value: 100}}}
    route: [{destination: {host: echo}}]
  - route: [{destination: {host: echo}}]
"""


def test_both_reporters_count_every_request_with_istio_labels(text_mesh: Mesh) -> None:
    mesh = text_mesh
    server = mesh.run("echo", "v1", 9080, "echo.py", True, "--app-metrics", "/metrics")
    client = mesh.client()
    assert mesh.apply(FAULT, "--wait").returncode == 0

    for _ in range(7):
        status, body = client.get("echo:9080", "/")
        assert status == 200
        # The caller's identity reaches the app as its sidecar sent it (hiding it would cost
        # every request a filter), shaped as Istio's istio.workload metadata.
        assert isinstance(body, dict), body
        assert body["headers"]["x-tsunagi-peer"].split(";")[:3] == [
            "client-v1",
            "default",
            "client",
        ]
    for _ in range(2):
        assert client.get("echo:9080", "/status/503")[0] == 503
    for _ in range(3):
        assert client.get("echo:9080", "/", headers={"x-fail": "1"})[0] == 503
    # From outside the mesh, straight to the server's inbound listener: no peer header.
    conn = http.client.HTTPConnection("127.0.0.1", inbound_port(mesh, server), timeout=10)
    conn.request("GET", "/", headers={"Host": "echo:9080"})
    assert conn.getresponse().status == 200
    conn.close()

    client_port, server_port = metrics_port(mesh, client), metrics_port(mesh, server)
    # Registered with the instance: what Prometheus discovery hands out.
    assert discovered(mesh)[server.name] == f"127.0.0.1:{server_port}"

    def requests(port: int) -> Series:
        return samples(scrape(port), "istio_requests_total")

    wait_until(lambda: total(requests(client_port)) >= 12, 20, "the client's 12 requests")
    wait_until(lambda: total(requests(server_port)) >= 10, 20, "the server's 10 requests")

    # Source reporter: every request its app sent, the aborted ones too.
    out = scrape(client_port)
    src = samples(out, "istio_requests_total")
    assert total(src) == 12, src
    assert total(src, response_code="200", response_flags="-") == 7
    assert total(src, response_code="503", response_flags="-") == 2
    assert total(src, response_code="503", response_flags="FI") == 3
    for labels, _ in src:
        assert labels["reporter"] == "source"
        assert labels["source_workload"] == "client-v1" and labels["source_app"] == "client"
        assert labels["source_version"] == "v1" and labels["source_workload_namespace"] == "default"
        assert labels["destination_service"] == ECHO
        assert labels["destination_service_name"] == "echo"
        assert labels["destination_service_namespace"] == "default"
        assert labels["request_protocol"] == "http" and labels["grpc_response_status"] == ""
        assert labels["connection_security_policy"] == "unknown"
        if labels["response_flags"] == "-":  # an endpoint answered: its workload is known
            assert labels["destination_workload"] == "echo-v1"
            assert labels["destination_app"] == "echo" and labels["destination_version"] == "v1"
            assert labels["destination_cluster"] == "Kubernetes"
            # ... and over mesh mTLS, its certificate's identity (Istio's client side).
            assert labels["destination_principal"] == "spiffe://cluster.local/ns/default/sa/echo"
            # The certificate the client's sidecar presented: its own.
            assert labels["source_principal"] == "spiffe://cluster.local/ns/default/sa/client"
        else:  # aborted in the client's sidecar: no connection, nobody to name
            assert labels["destination_principal"] == "unknown", labels
            assert labels["source_principal"] == "unknown", labels
    for histogram in ("istio_request_duration_milliseconds", "istio_request_bytes"):
        assert total(samples(out, f"{histogram}_count")) == 12, histogram
        inf = samples(out, f"{histogram}_bucket")
        assert total(inf, le="+Inf") == 12
    assert total(samples(out, "istio_response_bytes_count")) == 12
    assert total(samples(out, "istio_request_bytes_sum")) > 0

    # Destination reporter: what reached it; the mesh caller named, the outsider unknown.
    out = scrape(server_port)
    dst = samples(out, "istio_requests_total")
    assert total(dst) == 10, dst
    assert total(dst, source_workload="client-v1", response_code="200") == 7
    assert total(dst, source_workload="client-v1", response_code="503") == 2
    assert total(dst, source_workload="unknown", source_app="unknown", response_code="200") == 1
    for labels, _ in dst:
        assert labels["reporter"] == "destination"
        assert labels["destination_workload"] == "echo-v1" and labels["destination_app"] == "echo"
        assert labels["destination_service"] == ECHO
        # The mesh caller came over mutual TLS with its certificate; the outsider did not.
        mesh_caller = labels["source_workload"] == "client-v1"
        policy = "mutual_tls" if mesh_caller else "none"
        assert labels["connection_security_policy"] == policy, labels
        principal = "spiffe://cluster.local/ns/default/sa/client" if mesh_caller else "unknown"
        assert labels["source_principal"] == principal, labels
        # ... and the one this sidecar presented to it, its own.
        own = "spiffe://cluster.local/ns/default/sa/echo" if mesh_caller else "unknown"
        assert labels["destination_principal"] == own, labels
    assert total(samples(out, "istio_request_duration_milliseconds_count")) == 10
    # Merged as Istio's agent merges: Envoy's own stats and the app's metrics too.
    assert samples(out, "envoy_server_live"), out[-2000:]
    assert total(samples(out, "echo_requests_total")) == 10  # 7 + 2 + the outsider
    assert total(samples(out, "istio_agent_scrape_failures_total")) == 0

    # Istio's text access log on each `tsunagi run`'s output, marked as the sidecar's.
    def access_lines(w: Workload) -> list[str]:
        marker = f"[sidecar {w.name}.default] "
        return [ln for ln in log_of(mesh, w).splitlines() if ln.startswith(marker)]

    wait_until(lambda: len(access_lines(client)) >= 12, 20, "the client's access log lines")
    wait_until(lambda: len(access_lines(server)) >= 10, 20, "the server's access log lines")
    aborted = [ln for ln in access_lines(client) if '"GET / HTTP/1.1" 503 FI ' in ln]
    assert len(aborted) == 3, access_lines(client)
    assert len(access_lines(client)) == 12 and len(access_lines(server)) == 10


def test_app_metrics_failure_still_serves_the_rest(text_mesh: Mesh) -> None:
    # idle.py serves nothing: the app's part fails, is counted, and the rest is served.
    mesh = text_mesh
    w = mesh.run("idler", "v1", 80, "idle.py", False, "--app-metrics", "/metrics")
    out = scrape(metrics_port(mesh, w))
    assert total(samples(out, "istio_agent_scrape_failures_total"), type="application") == 1
    assert samples(out, "envoy_server_live")


def test_tcp_and_grpc_metrics_and_the_json_access_log(json_mesh: Mesh) -> None:
    mesh = json_mesh
    db = mesh.run("db", "v1", "5432/tcp", "echo.py")  # type: ignore[arg-type]
    greeter = mesh.run("greeter", "v1", "9090/grpc", "grpc_echo.py")  # type: ignore[arg-type]
    client = mesh.client()

    # TCP: one connection through the db sidecar's inbound TCP proxy.
    sent = b"GET /x HTTP/1.1\r\nHost: db\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", inbound_port(mesh, db))) as s:
        s.sendall(sent)
        received = b""
        while chunk := s.recv(65536):
            received += chunk
    assert received.startswith(b"HTTP/1.1 200")
    port = metrics_port(mesh, db)

    def closed() -> float:
        return total(samples(scrape(port), "istio_tcp_connections_closed_total"))

    wait_until(lambda: closed() >= 1, 20, "the TCP connection to be reported")
    out = scrape(port)
    assert total(samples(out, "istio_tcp_connections_opened_total")) == 1
    assert closed() == 1
    assert total(samples(out, "istio_tcp_received_bytes_total")) == len(sent)
    assert total(samples(out, "istio_tcp_sent_bytes_total")) == len(received)
    (labels, _), *_ = samples(out, "istio_tcp_sent_bytes_total")
    assert labels["request_protocol"] == "tcp" and labels["destination_workload"] == "db-v1"
    assert labels["source_workload"] == "unknown" and "response_code" not in labels

    # gRPC: the protocol label and the status, on both sides.
    for _ in range(3):
        assert call(client, {"key": "hi"})["service"] == "greeter"
    for w, reporter in ((client, "source"), (greeter, "destination")):
        p = metrics_port(mesh, w)
        wait_until(
            lambda p=p: total(samples(scrape(p), "istio_requests_total")) >= 3, 20, "gRPC calls"
        )
        grpc_series = samples(scrape(p), "istio_requests_total")
        assert total(grpc_series, reporter=reporter, request_protocol="grpc") == 3, grpc_series
        assert total(grpc_series, grpc_response_status="0", response_code="200") == 3

    # Istio's JSON access log, one object per line, carrying the sidecar's name.
    def json_lines(w: Workload) -> list[dict[str, str]]:
        out = []
        for line in log_of(mesh, w).splitlines():
            if line.startswith("{") and '"sidecar"' in line:
                doc = json.loads(line)
                if doc["sidecar"] == f"{w.name}.default":
                    out.append(doc)
        return out

    wait_until(lambda: len(json_lines(greeter)) >= 3, 20, "the greeter's JSON access log")
    doc = json_lines(greeter)[0]
    assert doc["response_code"] == 200 and doc["method"] == "POST"
    assert doc["path"] == "/tsunagi.test.Echo/Call" and doc["authority"] == "greeter:9090"
    for key in ("upstream_cluster", "upstream_host", "request_id", "duration", "start_time"):
        assert key in doc
    wait_until(lambda: json_lines(db), 20, "the TCP connection's JSON access log line")
    assert json_lines(db)[0]["bytes_received"] == len(sent)


TELEMETRY = """
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: echo, namespace: default}
spec:
  selector: {matchLabels: {app: echo}}
  accessLogging:
  - providers: [{name: envoy}]
    match: {mode: SERVER}
    filter: {expression: "response.code >= 400"}
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: client, namespace: default}
spec:
  selector: {matchLabels: {app: client}}
  metrics:
  - providers: [{name: prometheus}]
    overrides:
    - match: {metric: REQUEST_COUNT, mode: CLIENT}
      disabled: true
    - match: {metric: REQUEST_DURATION, mode: CLIENT}
      tagOverrides: {response_code: {operation: REMOVE}}
"""


def test_telemetry_resources_filter_the_log_and_override_metrics(mesh: Mesh) -> None:
    # No --access-log: the Telemetry resource turns the server's on, for failures only.
    server = mesh.run("echo", "v1")
    client = mesh.client()
    applied = mesh.apply(TELEMETRY, "--wait")
    assert applied.returncode == 0, applied.stderr
    for path in ("/", "/status/404", "/", "/status/503"):
        client.get("echo:9080", path)
    port = metrics_port(mesh, client)

    def durations() -> Series:
        return samples(scrape(port), "istio_request_duration_milliseconds_count")

    wait_until(lambda: total(durations()) >= 4, 20, "the client's 4 requests")
    (labels, count), *rest = durations()
    assert not rest and count == 4 and "response_code" not in labels  # one merged series
    assert samples(scrape(port), "istio_requests_total") == []  # disabled on the client
    # The server side is not overridden: it counts all four.
    server_port = metrics_port(mesh, server)
    wait_until(
        lambda: total(samples(scrape(server_port), "istio_requests_total")) >= 4, 20, "4 requests"
    )
    assert total(samples(scrape(server_port), "istio_requests_total")) == 4
    marker = f"[sidecar {server.name}.default] "

    def logged() -> list[str]:
        return [ln for ln in log_of(mesh, server).splitlines() if ln.startswith(marker)]

    wait_until(lambda: len(logged()) >= 2, 20, "the server's access log lines")
    assert sorted(ln.split('HTTP/1.1" ')[1][:3] for ln in logged()) == ["404", "503"]
    assert not any(
        ln.startswith(f"[sidecar {client.name}") for ln in log_of(mesh, client).splitlines()
    )


def _entries(port: int) -> str:
    """The same app outside the mesh, named once as an external host and once as a host
    inside the mesh (a VM, say)."""
    entry = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}}}
spec:
  hosts: [{host}]
  location: {location}
  resolution: STATIC
  ports: [{{number: {port}, name: http, protocol: HTTP}}]
  endpoints: [{{address: 127.0.0.1}}]
"""
    return "---".join(
        entry.format(name=n, host=h, location=loc, port=port)
        for n, h, loc in (
            ("api", "api.example.com", "MESH_EXTERNAL"),
            ("vm", "vm.example.internal", "MESH_INTERNAL"),
        )
    )


def test_the_peer_header_never_leaves_the_mesh(mesh: Mesh) -> None:
    port = free_port()
    app = outside_echo("outside", port)
    try:
        client = mesh.client()
        applied = mesh.apply(_entries(port), "--wait")
        assert applied.returncode == 0, applied.stderr

        def headers(host: str) -> dict[str, str]:
            status, body = client.get(f"{host}:{port}")
            assert status == 200 and isinstance(body, dict), (status, body)
            return body["headers"]

        wait_until(lambda: client.get(f"api.example.com:{port}")[0] == 200, 20, "the entry")
        # An external host never learns who in the mesh is calling...
        assert "x-tsunagi-peer" not in headers("api.example.com")
        # ...while a host inside the mesh does (no sidecar here removes it): the identity
        # its metrics would name the caller by.
        assert headers("vm.example.internal")["x-tsunagi-peer"] == (
            "client-v1;default;client;v1;Kubernetes"
        )
    finally:
        stop(app)
