"""`tsunagi demo --traffic`, as `make demo` runs it: the page answers (directly and through
the ingress gateway), the dashboard link it prints signs in, its own traffic fills the graph
and the trace store, the sidecars' access log lines reach its terminal, Istio's External
Authorization task works as its walkthrough prints it, and Ctrl-C stops every process it
started.

The demo listens on its documented fixed ports (API 15014, xDS 15012, Zipkin 9411, OTLP
4317, dashboard 20001, the page on 9080, the ingress gateway on 8080 and 8443): the test
fails up front, naming the port, when one is taken."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from benchmarks.procs import children

from .mesh import alive, wait_until

PORTS = {"API": 15014, "xDS": 15012, "Zipkin": 9411, "OTLP": 4317, "dashboard": 20001}
PAGE_PORT = 9080
GATEWAY_PORT = 8080
"""The ingress gateway's port (bookinfo-gateway.yaml's server)."""
HTTPS_PORT = 8443
"""The ingress gateway's HTTPS port (bookinfo-gateway-https.yaml's server)."""
DEMO = [sys.executable, "-m", "tsunagi.cli.main", "demo"]
BOOKINFO_EDGES = {
    ("app:default:productpage:v1", "service:default:details"),
    ("app:default:productpage:v1", "service:default:reviews"),
    ("service:default:reviews", "app:default:reviews:v1"),
    ("service:default:reviews", "app:default:reviews:v3"),
    ("app:default:reviews:v3", "service:default:ratings"),
}
"""The calls the demo's own traffic makes (reviews split 50/50 between v1 and v3)."""
EXT_AUTHZ_DENIED = b"denied by ext_authz for not found header `x-ext-authz: allow` in the request"
"""What the demo's authorizer answers a denied check (Istio's sample's words)."""


def _free(port: int) -> bool:
    with socket.socket() as s:
        # As the demo's listeners bind: a port whose last connections wait in TIME-WAIT
        # (a previous run's) is free for them, so it is free here too.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        reply = conn.getresponse()
        return reply.status, reply.headers, reply.read()
    finally:
        conn.close()


def _descendants(pid: int) -> set[int]:
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children(todo.pop()):
            found.add(child)
            todo.append(child)
    return found


def test_make_demo_serves_the_page_fills_the_dashboard_and_stops_cleanly(tmp_path: Path) -> None:
    taken = [f"{name} {port}" for name, port in PORTS.items() if not _free(port)]
    taken += [f"page {PAGE_PORT}"] if not _free(PAGE_PORT) else []
    taken += [f"gateway {p}" for p in (GATEWAY_PORT, HTTPS_PORT) if not _free(p)]
    assert not taken, f"the demo's fixed ports are in use: {taken}; stop what holds them"
    state = tmp_path / "state"
    out_path = tmp_path / "demo.out"
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env.pop("TSUNAGI_SERVER", None)
    env.pop("TSUNAGI_TOKEN", None)
    with out_path.open("wb") as out:
        demo = subprocess.Popen(
            [*DEMO, "--state-dir", str(state), "--traffic", "5"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    started: set[int] = set()
    try:

        def printed() -> str:
            assert demo.poll() is None, out_path.read_text()
            return out_path.read_text(errors="replace")

        wait_until(lambda: "Press Ctrl-C" in printed(), 120, "the demo's banner")
        started = _descendants(demo.pid)
        banner = printed()

        status, _, body = _get(PAGE_PORT, "/productpage")
        assert status == 200 and b"reviews" in body.lower(), body[:300]
        # Through the ingress gateway, as Istio's bookinfo-gateway.yaml routes it: the page
        # and its API; a path the VirtualService does not match gets the gateway's 404.
        through = f"http://127.0.0.1:{GATEWAY_PORT}/productpage"
        assert through in banner, banner
        status, headers, body = _get(GATEWAY_PORT, "/productpage", {"Host": "bookinfo.local"})
        assert status == 200 and b"reviews" in body.lower(), body[:300]
        assert headers["x-served-by"] == "productpage-v1"
        status, _, body = _get(GATEWAY_PORT, "/api/v1/products/0")
        assert status == 200 and b"Natsume Soseki" in body, body[:300]
        assert _get(GATEWAY_PORT, "/not-routed")[0] == 404
        # HTTPS through the gateway: the curl line it printed works as printed (the demo's
        # own CA verifies the certificate of the Secret it stored).
        https = re.search(r"HTTPS\s+(curl .+)", banner)
        assert https is not None, banner
        fetched = subprocess.run(
            [
                *https.group(1).split(),
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code} %{ssl_verify_result}",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            env=env,
        )
        assert fetched.stdout == "200 0", fetched

        # The dashboard link it printed signs in once and sets the session cookie.
        link = re.search(r"Watch:\s+(\S+)", banner)
        assert link is not None, banner
        url = urlsplit(link.group(1))
        assert url.port == PORTS["dashboard"] and url.query.startswith("code="), link.group(1)
        status, headers, _ = _get(url.port, f"{url.path}?{url.query}")
        assert status in (302, 303), status
        cookie = headers["Set-Cookie"].split(";", 1)[0]
        assert cookie.startswith("tsunagi_dashboard_"), cookie
        assert _get(url.port, "/", {"Cookie": cookie})[0] == 200
        assert _get(url.port, f"{url.path}?{url.query}")[0] not in (302, 303)  # used once

        # Its own traffic fills the graph and the trace store.
        token = (state / "token").read_text().strip()
        auth = {"Authorization": f"Bearer {token}"}

        def graph_edges() -> set[tuple[str, str]]:
            status, _, body = _get(PORTS["API"], "/v1/graph?window=60", auth)
            assert status == 200, body
            return {(e["source"], e["target"]) for e in json.loads(body)["edges"]}

        wait_until(lambda: graph_edges() >= BOOKINFO_EDGES, 120, "Bookinfo's calls in the graph")

        def traced_services() -> list[str]:
            status, _, body = _get(PORTS["Zipkin"], "/api/v2/services")
            assert status == 200, body
            return list(json.loads(body))

        wait_until(
            lambda: any(s.startswith("productpage") for s in traced_services()),
            60,
            "productpage's spans",
        )
        assert "[sidecar productpage" in printed()  # access log lines, marked

        # Istio's External Authorization task, with the apply line the walkthrough printed:
        # the demo runs the authorizer and started the control plane with its provider.
        apply = re.search(r"(tsunagi apply -f \S+/authorization-ext-authz\.yaml --wait)", banner)
        assert apply is not None, banner
        cli = [sys.executable, "-m", "tsunagi.cli.main", *apply.group(1).split()[1:]]
        cli_env = {**env, "TSUNAGI_STATE_DIR": str(state)}
        done = subprocess.run(cli, capture_output=True, text=True, timeout=60, env=cli_env)
        assert done.returncode == 0 and "warning" not in done.stderr.lower(), done
        deny, allow = {"x-ext-authz": "deny"}, {"x-ext-authz": "allow"}

        def denied() -> bool:  # the authorizer's status, body and header reach the client
            status, headers, body = _get(GATEWAY_PORT, "/productpage", deny)
            result = headers["x-ext-authz-check-result"]
            return status == 403 and body == EXT_AUTHZ_DENIED and result == "denied"

        # Every time, not once: the gateway's pooled connections to productpage keep the old
        # (unchecked) rules until productpage's sidecar drains them (2 s).
        wait_until(lambda: all(denied() for _ in range(10)), 30, "the authorizer asked")
        status, _, body = _get(GATEWAY_PORT, "/productpage", allow)
        assert status == 200 and b"reviews" in body.lower(), body[:300]
    finally:
        if demo.poll() is None:
            demo.send_signal(signal.SIGINT)  # Ctrl-C
        try:
            code = demo.wait(60)
        except subprocess.TimeoutExpired:
            demo.kill()
            demo.wait()
            for pid in started:
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)
            raise
    assert code == 0, out_path.read_text()[-3000:]
    deadline = time.monotonic() + 10
    while any(alive(p) for p in started) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = [p for p in started if alive(p)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"processes the demo started outlived it: {left}"
