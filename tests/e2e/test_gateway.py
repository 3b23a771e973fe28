"""``tsunagi gateway``: a real Envoy with no app serving Istio Gateways, asked with real
``curl`` (``--resolve`` sends the host name to the gateway's loopback address, as DNS would
in front of a real ingress). What is asserted is what curl receives."""

from __future__ import annotations

import signal
import socket
import subprocess
import threading

import pytest

from .mesh import Mesh, Workload, alive, free_port, wait_until
from .test_metrics import metrics_port, samples, scrape, total

pytestmark = pytest.mark.e2e


def curl(port: int, host: str, path: str = "/") -> tuple[int, dict[str, str], str]:
    """``curl --resolve HOST:PORT:127.0.0.1 http://HOST:PORT/PATH``: status, response
    headers (lower-case names), body."""
    done = subprocess.run(
        [
            "curl",
            "-sS",
            "--max-time",
            "10",
            "--noproxy",
            "*",
            "--resolve",
            f"{host}:{port}:127.0.0.1",
            "-D",
            "-",
            f"http://{host}:{port}{path}",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if done.returncode != 0:
        return 0, {}, done.stderr
    head, _, body = done.stdout.replace("\r\n", "\n").partition("\n\n")
    lines = head.splitlines()
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


def answered_by(port: int, host: str, path: str = "/") -> str:
    """Which service answered through the gateway (the echo app says), or the status."""
    status, _, body = curl(port, host, path)
    if status != 200:
        return str(status)
    import json

    return str(json.loads(body)["service"])


def accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def gateway_yaml(name: str, selector: str, ports: list[int], hosts: str = '"*"') -> str:
    servers = "".join(
        f"""
  - port: {{number: {p}, name: http-{p}, protocol: HTTP}}
    hosts: [{hosts}]"""
        for p in ports
    )
    return f"""
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: {name}}}
spec:
  selector: {{edge: {selector}}}
  servers:{servers}
"""


def applied(mesh: Mesh, text: str) -> None:
    result = mesh.apply(text, "--wait")
    assert result.returncode == 0, result.stderr
    assert "in sync after" in result.stdout, result.stdout


def backends(mesh: Mesh) -> Workload:
    """Start reviews and ratings; reviews' workload."""
    reviews = mesh.run("reviews", "v1")
    mesh.run("ratings", "v1")
    return reviews


def test_routes_by_host_and_path_and_answers_404_for_unknown_hosts(mesh: Mesh) -> None:
    reviews = backends(mesh)
    gw = mesh.gateway("edge", {"edge": "one"})
    port = free_port()
    applied(
        mesh,
        gateway_yaml("edge-gw", "one", [port], '"shop.example.com", "*.ratings.example"')
        + """---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: shop}
spec:
  hosts: [shop.example.com]
  gateways: [edge-gw]
  http:
  - match: [{uri: {prefix: /ratings}}]
    route: [{destination: {host: ratings, port: {number: 9080}}}]
  - route: [{destination: {host: reviews, port: {number: 9080}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: api}
spec:
  hosts: [api.ratings.example]
  gateways: [default/edge-gw]
  http:
  - route: [{destination: {host: ratings}}]
""",
    )
    wait_until(lambda: accepts(port), what=f"the gateway listening on {port}")
    assert answered_by(port, "shop.example.com", "/ratings/1") == "ratings"
    assert answered_by(port, "shop.example.com", "/products") == "reviews"
    assert answered_by(port, "api.ratings.example", "/") == "ratings"
    # A host no server and no VirtualService of this gateway serves: a clear 404.
    assert answered_by(port, "unknown.example.com", "/") == "404"
    assert answered_by(port, "ratings.example", "/") == "404"  # '*.' needs a label more

    # The backend's sidecar counts the gateway as its caller: the gateway sends its identity
    # as sidecars do (Istio's graph has the ingress gateway as a node).
    def from_gateway() -> float:
        series = samples(scrape(metrics_port(mesh, reviews)), "istio_requests_total")
        return total(series, reporter="destination", source_workload="edge")

    wait_until(lambda: from_gateway() == 1, what="reviews counting one request from the gateway")

    # It is a workload of kind gateway, and no service's endpoint: a sidecar in the mesh
    # has no cluster for it.
    listed = mesh.cli("get", "workloads")
    assert listed.returncode == 0, listed.stderr
    line = next(ln for ln in listed.stdout.splitlines() if gw.name in ln)
    assert "gateway edge at 127.0.0.1 (edge=one)" in line
    client = mesh.client()
    clusters = client.envoy_admin("/clusters?format=json")
    assert "reviews.default.svc.cluster.local" in clusters
    assert "edge.default" not in clusters


def test_shows_in_proxy_status_synced_and_stops_cleanly(mesh: Mesh) -> None:
    gw = mesh.gateway("ingress", {"edge": "two"})
    port = free_port()
    applied(
        mesh,
        gateway_yaml("status-gw", "two", [port])
        + """---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: status}
spec:
  hosts: ["*"]
  gateways: [status-gw]
  http:
  - route: [{destination: {host: reviews}}]
""",
    )
    status = mesh.cli("proxy-status")
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    row = next(ln for ln in lines if ln.startswith(gw.name + "."))
    assert "ingress (gateway)" in row
    states = dict(zip(lines[0].split()[2:-1], row.split()[3:-1], strict=True))
    assert states["CDS"] == states["LDS"] == states["RDS"] == "SYNCED", status.stdout
    assert set(states.values()) <= {"SYNCED", "-"}, status.stdout
    envoy = gw.envoy_pid()
    assert envoy is not None
    gw.proc.send_signal(signal.SIGTERM)
    assert gw.proc.wait(30) == 0
    wait_until(lambda: not alive(envoy), what="the gateway's Envoy to stop")
    wait_until(lambda: gw.name not in mesh.workload_names(), what="the gateway to deregister")
    wait_until(lambda: mesh.all_synced(0), what="the gateway's xDS stream to close")


def test_https_redirect_answers_301_with_the_https_location(mesh: Mesh) -> None:
    mesh.run("reviews", "v1")
    mesh.gateway("edge", {"edge": "three"})
    port = free_port()
    applied(
        mesh,
        f"""
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: redirecting}}
spec:
  selector: {{edge: three}}
  servers:
  - port: {{number: {port}, name: http, protocol: HTTP}}
    hosts: [secure.example.com]
    tls: {{httpsRedirect: true}}
  - port: {{number: {port}, name: http-plain, protocol: HTTP}}
    hosts: [plain.example.com]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: both}}
spec:
  hosts: [secure.example.com, plain.example.com]
  gateways: [redirecting]
  http:
  - route: [{{destination: {{host: reviews, port: {{number: 9080}}}}}}]
""",
    )
    wait_until(lambda: accepts(port), what=f"the gateway listening on {port}")
    status, headers, _ = curl(port, "secure.example.com", "/a/b?c=d")
    assert status == 301
    assert headers["location"].startswith("https://secure.example.com")
    assert headers["location"].endswith("/a/b?c=d")
    assert answered_by(port, "plain.example.com", "/a") == "reviews"


def test_a_server_port_added_opens_and_a_removed_one_closes_without_a_restart(
    mesh: Mesh,
) -> None:
    mesh.run("reviews", "v1")
    gw: Workload = mesh.gateway("edge", {"edge": "four"})
    agent, envoy = gw.proc.pid, gw.envoy_pid()
    first, second = free_port(), free_port()
    route = """---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: all}
spec:
  hosts: ["*"]
  gateways: [moving]
  http:
  - route: [{destination: {host: reviews, port: {number: 9080}}}]
"""
    applied(mesh, gateway_yaml("moving", "four", [first]) + route)
    wait_until(lambda: accepts(first), what=f"port {first} to open")
    assert answered_by(first, "any.example.com") == "reviews"
    assert not accepts(second)

    applied(mesh, gateway_yaml("moving", "four", [first, second]))
    wait_until(lambda: accepts(second), what=f"port {second} to open")
    assert answered_by(second, "other.example.com") == "reviews"
    assert answered_by(first, "any.example.com") == "reviews"

    applied(mesh, gateway_yaml("moving", "four", [second]))
    wait_until(lambda: not accepts(first), timeout=30, what=f"port {first} to close")
    assert answered_by(second, "other.example.com") == "reviews"
    # The same agent and the same Envoy all along: config followed, nothing restarted.
    assert gw.proc.poll() is None and gw.envoy_pid() == envoy
    assert alive(agent) and envoy is not None and alive(envoy)


def test_stopping_lets_a_request_in_flight_finish(mesh: Mesh) -> None:
    mesh.run("reviews", "v1")
    client = mesh.client()
    gw = mesh.gateway("edge", {"edge": "five"})
    port = free_port()
    applied(
        mesh,
        gateway_yaml("stopping", "five", [port])
        + """---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: slow}
spec:
  hosts: ["*"]
  gateways: [stopping]
  http:
  - route: [{destination: {host: reviews, port: {number: 9080}}}]
""",
    )
    wait_until(lambda: accepts(port), what=f"the gateway listening on {port}")
    answers: list[str] = []
    slow = threading.Thread(
        target=lambda: answers.append(answered_by(port, "slow.example.com", "/?sleep=2"))
    )
    slow.start()

    def arrived() -> bool:
        _, seen = client.get("reviews:9080", "/_seen")
        return isinstance(seen, dict) and any(r["path"] == "/?sleep=2" for r in seen["requests"])

    wait_until(arrived, what="the slow request to reach reviews")
    gw.proc.send_signal(signal.SIGTERM)
    slow.join(30)
    assert answers == ["reviews"]
    assert gw.proc.wait(30) == 0
    assert not accepts(port)


def test_bad_labels_are_refused_with_what_to_do(mesh: Mesh) -> None:
    bad = mesh.cli("gateway", "--name", "edge", "--label", "istio")
    assert bad.returncode == 2
    assert "labels look like KEY=VALUE, got 'istio'" in bad.stderr
    bad = mesh.cli("gateway", "--name", "edge", "--label", "is tio=x")
    assert bad.returncode == 2
    assert "label key 'is tio' is invalid" in bad.stderr
    bad = mesh.cli("gateway", "--name", "edge", "--label", "a=1", "--label", "a=2")
    assert bad.returncode == 2
    assert "--label a is given more than once" in bad.stderr
    bad = mesh.cli("gateway", "--name", "Edge", "--label", "a=1")
    assert bad.returncode == 2
    assert "--name 'Edge' is not a valid DNS-1123 label" in bad.stderr
    bad = mesh.cli("gateway", "--name", "edge", "--address", "localhost")
    assert bad.returncode == 2
    assert "'localhost' is not an IP address" in bad.stderr
    assert not [w for w in mesh.workload_names() if w.startswith("edge")]
