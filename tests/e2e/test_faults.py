"""Faults, tried for real: ``kill -9`` of the control plane mid-apply, of Envoy under a running
agent, of the app itself; and a second ``tsunagi up`` on a state directory in use.

Each test asserts what a user would check afterwards: what the store holds, what a client
received, what the registry said meanwhile, how ``tsunagi run`` exited.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import subprocess
import time
from functools import partial
from pathlib import Path

import pytest

from .mesh import Background, Mesh, Traffic, Workload, alive, stop, wait_until

pytestmark = pytest.mark.e2e


# --- kill -9 of `tsunagi up` in the middle of a stream of applies ---------------------------


def batch(i: int) -> str:
    """Apply number ``i``: two documents that must land together or not at all."""
    return f"""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: fault-{i}}}
spec:
  hosts: [f{i}.example.com]
  http:
  - route:
    - destination: {{host: reviews}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: fault-{i}}}
spec:
  host: f{i}.example.com
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
"""


class ApplyStream(Background):
    """Applies batch after batch through the HTTP API in a thread, sorting each by what the
    client can know of it: ``acked`` (200), ``unsent`` (no connection, so never received),
    ``unknown`` (the connection broke mid-request: it may or may not be committed) or
    ``failed`` (any other answer)."""

    def __init__(self, mesh: Mesh, limit: float = 60.0) -> None:
        super().__init__(limit)
        self.port, self.token = mesh.api_port, mesh.token()
        self.acked: list[int] = []
        self.unsent: list[int] = []
        self.unknown: list[int] = []
        self.failed: list[tuple[int, int, str]] = []
        self._next = 0

    def step(self) -> None:
        if self._apply(self._next) == "unsent":
            time.sleep(0.02)  # the control plane is away; don't spin
        self._next += 1

    def _apply(self, i: int) -> str:
        body = json.dumps({"text": batch(i), "filename": f"batch-{i}.yaml"})
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            try:
                c.connect()
            except OSError:
                self.unsent.append(i)
                return "unsent"
            try:
                c.request(
                    "POST",
                    "/v1/apply",
                    body=body,
                    headers={
                        "Authorization": f"Bearer {self.token}",
                        "Content-Type": "application/json",
                    },
                )
                resp = c.getresponse()
                text = resp.read().decode(errors="replace")
            except (OSError, http.client.HTTPException):
                self.unknown.append(i)
                return "unknown"
            if resp.status != 200:
                self.failed.append((i, resp.status, text))
                return "failed"
            self.acked.append(i)
            return "acked"
        finally:
            c.close()


def routed(client: Workload, host: str) -> bool:
    """Whether ``host`` reaches reviews through ``client``'s sidecar."""
    status, body = client.get(host)
    return status == 200 and isinstance(body, dict) and body.get("service") == "reviews"


def stored_batches(mesh: Mesh) -> dict[int, set[str]]:
    """Batch number → which of its kinds the store holds."""
    found: dict[int, set[str]] = {}
    for kind in ("virtualservices", "destinationrules"):
        for item in mesh.api("GET", f"/v1/resources?kind={kind}")["items"]:
            if item["name"].startswith("fault-"):
                found.setdefault(int(item["name"].removeprefix("fault-")), set()).add(item["kind"])
    return found


def test_kill_9_of_control_plane_mid_apply_stream_keeps_exactly_the_acknowledged(
    mesh: Mesh,
) -> None:
    mesh.run("reviews", "v1")
    client = mesh.client()
    both = {"VirtualService", "DestinationRule"}
    with Traffic(client.outbound_port, "reviews:9080") as traffic, ApplyStream(mesh) as stream:
        wait_until(lambda: len(stream.acked) >= 15, what="applies to be acknowledged")
        mesh.kill()
        acked_before_kill = len(stream.acked)
        # While the control plane is away, sidecars keep serving and applies find nobody.
        during = len(traffic.results)
        wait_until(lambda: len(traffic.results) > during + 20, what="traffic while down")
        wait_until(lambda: len(stream.unsent) >= 3, what="applies to find nobody")
        mesh.up()
        wait_until(lambda: len(stream.acked) >= acked_before_kill + 5, what="applies after restart")
        stream.stop()
        assert stream.failed == []

        stored = stored_batches(mesh)
        # Every acknowledged apply survived the kill, whole.
        assert {i: stored.get(i) for i in stream.acked} == dict.fromkeys(stream.acked, both)
        # Only requests caught by the kill (one in flight, perhaps one more the kernel
        # accepted as the process died) can have an unknown fate, and each is all or nothing.
        # Nothing that was never sent is there, and nothing invented.
        last_acked_before_kill = stream.acked[acked_before_kill - 1]
        assert all(last_acked_before_kill < i < min(stream.unsent) for i in stream.unknown), (
            stream.unknown
        )
        for i in stream.unknown:
            assert stored.get(i, set()) in (set(), both), (i, stored.get(i))
        assert not set(stored) & set(stream.unsent)
        assert set(stored) <= set(stream.acked) | set(stream.unknown)

        # The resynced sidecars route a host applied before the kill and one applied after.
        for host in (f"f{stream.acked[0]}.example.com", f"f{stream.acked[-1]}.example.com"):
            wait_until(partial(routed, client, host), what=f"{host} to be routed")
        wait_until(lambda: mesh.all_synced(2), what="proxies to resync")
    # The client sending through its sidecar the whole time never noticed.
    assert traffic.failures() == []
    assert {v for _, v in traffic.results} == {"reviews/v1"}


# --- Envoy killed under a running agent -----------------------------------------------------


class RegistryWatch(Background):
    """Polls the registry in a thread; records whether ``name`` was listed each time."""

    def __init__(self, mesh: Mesh, name: str) -> None:
        super().__init__(60.0)
        self.mesh, self.name = mesh, name
        self.samples: list[bool] = []

    def step(self) -> None:
        with contextlib.suppress(OSError):  # a slow answer says nothing of the registry
            self.samples.append(self.name in self.mesh.workload_names())
        time.sleep(0.02)


def test_killed_envoy_is_restarted_while_app_and_registration_stay(mesh: Mesh) -> None:
    reviews = mesh.run("reviews", "v1")
    client = mesh.client()
    app, envoy = reviews.app_pid(), reviews.envoy_pid()
    assert app and envoy
    with (
        RegistryWatch(mesh, reviews.name) as watch,
        Traffic(client.outbound_port, "reviews:9080") as traffic,
    ):
        wait_until(lambda: len(traffic.results) >= 10, what="traffic")
        os.kill(envoy, signal.SIGKILL)
        killed_at = len(traffic.results)
        wait_until(
            lambda: reviews.envoy_pid() not in (None, envoy), what="the agent to restart Envoy"
        )

        def resumed() -> bool:
            recent = traffic.results[killed_at:][-20:]
            return len(recent) == 20 and all(status == 200 for status, _ in recent)

        wait_until(resumed, what="traffic through the restarted sidecar")
    assert watch.samples and all(watch.samples), "the instance left the registry meanwhile"
    assert reviews.app_pid() == app and alive(app)
    assert reviews.proc.poll() is None
    assert {v for s, v in traffic.results if s == 200} == {"reviews/v1"}
    assert reviews.name in mesh.workload_names()


# --- the app crashing -----------------------------------------------------------------------

# Answers one request, then exits 3 without any cleanup: a crash, as far as the agent knows.
CRASH_AFTER_ONE = """
import json, os, sys
from http.server import BaseHTTPRequestHandler, HTTPServer

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = json.dumps({"service": os.environ["SERVICE_NAME"],
                           "version": os.environ["SERVICE_VERSION"]}).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()
        os._exit(3)

    def log_message(self, *args):
        pass

HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"""


def reviews_endpoints(client: Workload) -> set[int]:
    """Ports of the reviews endpoints the client's Envoy sends to."""
    ports = set()
    for line in client.envoy_admin("/clusters").splitlines():
        cluster, _, rest = line.partition("::")
        if "reviews" in cluster and rest.count("::") >= 2 and rest.startswith("127.0.0.1:"):
            ports.add(int(rest.split("::")[0].rsplit(":", 1)[1]))
    return ports


@pytest.mark.parametrize("crash", ["kill -9", "exit 3"])
def test_crashed_app_is_deregistered_and_run_exits_with_its_code(
    mesh: Mesh, tmp_path: Path, crash: str
) -> None:
    survivor = mesh.run("reviews", "v1")
    if crash == "exit 3":
        app = tmp_path / "crash_after_one.py"
        app.write_text(CRASH_AFTER_ONE)
        doomed = mesh.run("reviews", "v2", 9080, str(app))
        expected = 3
    else:
        doomed = mesh.run("reviews", "v2")
        expected = 128 + signal.SIGKILL  # the shell's convention for a signal death
    client = mesh.client()
    instances = mesh.api("GET", "/v1/resources?kind=workloads")["items"]
    doomed_port = next(i["document"]["target_port"] for i in instances if i["name"] == doomed.name)
    wait_until(lambda: doomed_port in reviews_endpoints(client), what="both endpoints")

    with Traffic(client.outbound_port, "reviews:9080") as traffic:
        wait_until(lambda: "reviews/v2" in traffic.seen_after(0), what="the doomed app to answer")
        if crash == "kill -9":
            pid = doomed.app_pid()
            assert pid
            os.kill(pid, signal.SIGKILL)
        assert doomed.proc.wait(30) == expected
        # The agent deregistered before exiting (a lingering instance would stay listed for
        # its whole TTL), and the client's proxy drops the endpoint: from then on nothing
        # is sent to the dead instance.
        assert doomed.name not in mesh.workload_names()
        wait_until(lambda: doomed_port not in reviews_endpoints(client), what="the endpoint to go")
        assert reviews_endpoints(client), "the survivor's endpoint went too"
        after = len(traffic.results)
        wait_until(lambda: len(traffic.results) >= after + 30, what="traffic after the crash")
    # Until the client's proxy drops the dead endpoint, requests sent there fail with the
    # server sidecar's 503 (its app refuses connections): since Istio 1.24 the default retry
    # policy no longer retries 503, because it cannot tell that the app never saw them.
    # Once the endpoint is gone, nothing fails and only the survivor answers.
    failures = traffic.failures()
    assert all(code == 503 for code, _ in failures), failures
    assert [r for r in traffic.results[after:] if r[0] != 200] == []
    assert traffic.seen_after(after) == {"reviews/v1"}
    assert doomed_port not in reviews_endpoints(client)
    assert mesh.workload_names() == [survivor.name]


# --- one `tsunagi up` per state directory ---------------------------------------------------


def refused_second_up(mesh: Mesh) -> subprocess.CompletedProcess[str]:
    """Start a second ``tsunagi up`` on ``mesh``'s state directory (other ports) and return
    how it ended; fail if it starts serving instead."""
    other = Mesh(mesh.state_dir)
    proc = subprocess.Popen(
        other.up_command(),
        env=other.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def serving() -> bool:
            try:
                other.api("GET", "/healthz")
                return True
            except OSError:
                return False

        wait_until(lambda: proc.poll() is not None or serving(), what="the second up")
        assert proc.poll() is not None, "a second tsunagi up started on the same state dir"
        out, err = proc.communicate()
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    finally:
        stop(proc)


def test_second_up_on_a_state_dir_is_refused_until_the_first_dies(mesh: Mesh) -> None:
    assert mesh.apply(batch(1)).returncode == 0
    assert mesh.control_plane is not None
    first = mesh.control_plane.pid
    refused = refused_second_up(mesh)
    assert refused.returncode == 1
    assert (
        f"another tsunagi up (pid {first}) is using {mesh.state_dir}; stop it or use --state-dir"
    ) in refused.stderr
    assert mesh.api("GET", "/healthz")["ok"] and stored_batches(mesh) == {
        1: {"VirtualService", "DestinationRule"}
    }

    # kill -9 runs no cleanup, yet the kernel drops the lock: a restart is not blocked.
    mesh.kill()
    mesh.up()
    assert mesh.control_plane.pid != first
    assert stored_batches(mesh) == {1: {"VirtualService", "DestinationRule"}}
    again = refused_second_up(mesh)
    assert again.returncode == 1 and f"(pid {mesh.control_plane.pid})" in again.stderr
