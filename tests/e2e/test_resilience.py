"""What must survive: control-plane restarts, dying Envoys, lapsed heartbeats, workloads
leaving under load, and config Envoy refuses."""

from __future__ import annotations

import http.client
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from .mesh import Mesh, Traffic, Workload, free_port, wait_until
from .rules import SUBSETS, all_to, virtual_service

pytestmark = pytest.mark.e2e

VS = SUBSETS + "---" + all_to("v1")


def test_control_plane_restart_under_traffic_loses_nothing(mesh: Mesh) -> None:
    mesh.run("reviews", "v1")
    client = mesh.client()
    assert mesh.apply(VS, "--wait").returncode == 0
    with Traffic(client.outbound_port, "reviews:9080") as traffic:
        time.sleep(0.3)
        mesh.down()
        during = len(traffic.results)
        time.sleep(1.5)  # Envoy keeps serving its last good config meanwhile
        assert len(traffic.results) > during
        mesh.up()
        wait_until(lambda: mesh.all_synced(2), what="proxies to resync")
        time.sleep(0.3)
    assert traffic.failures() == []
    assert {v for _, v in traffic.results} == {"reviews/v1"}
    got = mesh.cli("get", "vs", "reviews", "-o", "yaml")
    assert got.returncode == 0 and "subset: v1" in got.stdout
    status = mesh.cli("proxy-status")
    assert status.stdout.count("SYNCED") == 8, status.stdout


def test_agent_restarts_a_dead_envoy(mesh: Mesh) -> None:
    mesh.run("reviews", "v1")
    client = mesh.client()
    before = client.envoy_pid()
    assert before, f"no Envoy for {client.name}"
    os.kill(before, signal.SIGKILL)
    wait_until(lambda: _answers(client), what="Envoy to come back")
    after = client.envoy_pid()
    assert after and after != before
    assert client.proc.poll() is None


def _answers(client: Workload) -> bool:
    try:
        return client.get("reviews:9080", timeout=2)[0] == 200
    except (OSError, http.client.HTTPException):
        return False


def test_run_exits_with_the_apps_exit_code(mesh: Mesh) -> None:
    result = mesh.cli(
        "run",
        "--service",
        "job",
        "--",
        sys.executable,
        "-c",
        "import os, sys; assert os.environ['HTTP_PROXY']; sys.exit(7)",
    )
    assert result.returncode == 7, result.stderr
    assert mesh.api("GET", "/v1/proxies")["proxies"] == []


def test_leaving_workload_drains_without_failed_requests(mesh: Mesh) -> None:
    mesh.run("reviews", "v1")
    leaving = mesh.run("reviews", "v1")
    client = mesh.client()
    with Traffic(client.outbound_port, "reviews:9080") as traffic:
        time.sleep(0.5)
        leaving.proc.send_signal(signal.SIGTERM)
        assert leaving.proc.wait(20) == 0  # the echo app exits 0 on SIGTERM; run passes it on
        time.sleep(0.5)
    assert traffic.failures() == []
    names = [i["name"] for i in mesh.api("GET", "/v1/resources?kind=workloads")["items"]]
    assert leaving.name not in names and len(names) == 1


def test_lapsed_heartbeat_removes_instance_and_agent_registers_again(tmp_path: Path) -> None:
    mesh = Mesh(tmp_path / "state", instance_ttl=1.5)
    mesh.state_dir.mkdir(parents=True)
    mesh.up()
    try:
        w = mesh.run("reviews", "v1")

        def names() -> list[str]:
            items = mesh.api("GET", "/v1/resources?kind=workloads")["items"]
            return [i["name"] for i in items]

        os.kill(w.proc.pid, signal.SIGSTOP)  # the agent freezes: no heartbeats
        try:
            wait_until(lambda: w.name not in names(), timeout=10, what="the lease to lapse")
        finally:
            os.kill(w.proc.pid, signal.SIGCONT)
        wait_until(lambda: w.name in names(), timeout=10, what="re-registration")
    finally:
        mesh.close()


def test_envoy_rejection_fails_apply_wait_and_shows_in_proxy_status(mesh: Mesh) -> None:
    mesh.run("reviews", "v1")
    client = mesh.client()
    # Valid for apply (bodies up to 1 MiB), but over the route configuration's default
    # direct-response body limit (4096 bytes), so Envoy NACKs it. (Regexes no longer serve:
    # the sidecar allows the RE2 program size that validation allows.)
    body = "x" * 5000
    bad = virtual_service(f"""
  - match:
    - uri: {{prefix: /big}}
    directResponse: {{status: 200, body: {{string: "{body}"}}}}
  - route:
    - destination: {{host: reviews}}
""")
    result = mesh.apply(bad, "--wait", "--timeout", "15")
    assert result.returncode == 1, result
    assert client.name in result.stderr and "rejected" in result.stderr
    assert "response body size" in result.stderr.lower()
    status = mesh.cli("proxy-status")
    assert "NACKED" in status.stdout
    # Envoy keeps serving its last good config.
    assert client.get("reviews:9080")[0] == 200
    # Fixing the rule clears the NACK.
    fixed = mesh.apply(bad.replace(body, "small"), "--wait")
    assert fixed.returncode == 0, fixed.stderr
    assert "NACKED" not in mesh.cli("proxy-status").stdout


def test_unreachable_control_plane_makes_run_exit_3(tmp_path: Path) -> None:
    mesh = Mesh(tmp_path / "none")
    mesh.state_dir.mkdir(parents=True)
    result = mesh.cli(
        "run",
        "--service",
        "x",
        "--server",
        f"http://127.0.0.1:{free_port()}",
        "--",
        sys.executable,
        "-c",
        "pass",
    )
    assert result.returncode == 3


def test_run_refuses_an_outbound_port_that_is_taken(mesh: Mesh) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = mesh.cli(
            "run",
            "--service",
            "job",
            "--outbound-port",
            str(port),
            "--",
            sys.executable,
            "-c",
            "pass",
        )
    assert result.returncode == 1
    assert f"port {port} is already in use" in result.stderr
    assert mesh.api("GET", "/v1/resources?kind=workloads")["items"] == []
