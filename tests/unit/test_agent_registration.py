"""The agent's registration loop against a scripted control plane on loopback: a heartbeat
the store could not renew (503) is retried as a heartbeat, and one answered 404 (the
instance is gone: its lease lapsed, or etcd revoked it) makes the agent register again at
once, without waiting out another heartbeat interval first."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator

import pytest

from tsunagi.agent.lifecycle import Registration
from tsunagi.client import Client

REGISTER = "/v1/instances"
HEARTBEAT = "/v1/instances/default/reviews-v1/heartbeat"
SCRIPT = [
    (REGISTER, 200, {"revision": 1, "ttl": 0.6}),
    (HEARTBEAT, 503, {"error": "etcd at 127.0.0.1:2379: UNAVAILABLE: no leader"}),
    (HEARTBEAT, 404, {"error": "instance default/reviews-v1 is not registered"}),
    (REGISTER, 200, {"revision": 2, "ttl": 0.6}),
]
"""What the control plane answers, in order: (the path it expects, status, body)."""


class Stop(threading.Event):
    """The agent's stop event, logging each wait between requests."""

    def __init__(self, log: list[str]) -> None:
        super().__init__()
        self.log = log

    def wait(self, timeout: float | None = None) -> bool:
        self.log.append("wait")
        return super().wait(timeout)


@pytest.fixture
def log() -> list[str]:
    return []


@pytest.fixture
def server(log: list[str]) -> Iterator[tuple[http.server.HTTPServer, Stop]]:
    stop = Stop(log)
    script = iter(SCRIPT)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            step = next(script, None)
            assert step is not None, f"{self.path} after the script ended: {log}"
            path, status, body = step
            log.append(f"{self.path} -> {status}")
            assert self.path == path, log
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            if step is SCRIPT[-1]:
                stop.set()  # the script is done: the agent stops

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd, stop
    finally:
        stop.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)


def test_a_404_heartbeat_registers_again_at_once_and_a_503_is_retried(
    server: tuple[http.server.HTTPServer, Stop], log: list[str]
) -> None:
    httpd, stop = server
    client = Client(f"http://127.0.0.1:{httpd.server_address[1]}", token="t")
    doc = {"name": "reviews-v1", "namespace": "default", "service": "reviews"}
    registration = Registration(client, stop, lambda: doc)
    agent = threading.Thread(target=registration.keep)
    agent.start()
    agent.join(20)
    assert not agent.is_alive(), log
    requests = [entry for entry in log if entry != "wait"]
    assert requests == [f"{path} -> {status}" for path, status, _ in SCRIPT], log
    # The 503 is followed by waits and another heartbeat; the 404 by the registration, with
    # no wait in between.
    after_404 = log.index(f"{HEARTBEAT} -> 404")
    assert log[after_404 + 1] == f"{REGISTER} -> 200", log
    assert "wait" in log[log.index(f"{HEARTBEAT} -> 503") : after_404], log
