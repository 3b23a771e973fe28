"""The API client's failover between replicas (``--server URL,URL``), on real loopback
sockets: a replica that refuses is skipped whatever the request; one that got the request and
gave no answer (never answers, or resets after reading it) is skipped only for a request that
is safe to send twice; a DELETE sent again and answered 404 is done."""

from __future__ import annotations

import contextlib
import http.server
import json
import socket
import struct
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from tsunagi.agent.ports import free_ports
from tsunagi.client import IDEMPOTENT_POSTS, Client, Rejected, Unanswered, Unreachable, idempotent
from tsunagi.controlplane.openapi import ROUTES

TIMEOUT = 1.0
"""Seconds a client waits on the silent replica (a bound, not a measure)."""


class Replica(http.server.BaseHTTPRequestHandler):
    """Answers every request; DELETE /items/NAME deletes NAME from ``items`` (404 if absent)."""

    hits: list[str]
    items: set[str]

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def _record(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.hits.append(f"{self.command} {self.path}")

    def do_GET(self) -> None:
        self._record()
        self._answer(200, {"port": self.server.server_port})  # type: ignore[attr-defined]

    def do_POST(self) -> None:
        self._record()
        self._answer(200, {"port": self.server.server_port})  # type: ignore[attr-defined]

    def do_DELETE(self) -> None:
        self._record()
        name = self.path.rsplit("/", 1)[-1]
        if name not in self.items:
            self._answer(404, {"error": f"{name} is not registered", "revision": 7})
            return
        self.items.discard(name)
        self._answer(200, {"revision": 8})

    def log_message(self, *args: Any) -> None:
        pass


@contextlib.contextmanager
def replica(items: set[str]) -> Iterator[tuple[str, list[str]]]:
    """A replica that answers: ``(its URL, the requests it got)``."""
    hits: list[str] = []
    handler = type("Handler", (Replica,), {"hits": hits, "items": items})
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", hits
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@contextlib.contextmanager
def silent() -> Iterator[str]:
    """A replica that accepts connections (the kernel completes them) and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


@contextlib.contextmanager
def acts_then_resets(items: set[str]) -> Iterator[tuple[str, list[str]]]:
    """A replica that reads each request whole, carries out a DELETE of /items/NAME, and then
    resets the connection instead of answering (a crash after the work was done)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    got: list[str] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return  # closed: the test is over
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                head, _, body = data.partition(b"\r\n\r\n")
                length = next(
                    (
                        int(line.split(b":", 1)[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    ),
                    0,
                )
                while len(body) < length:
                    body += conn.recv(65536)
                method, path = head.split(b" ")[:2]
                got.append(f"{method.decode()} {path.decode()}")
                if method == b"DELETE":
                    items.discard(path.decode().rsplit("/", 1)[-1])
                # SO_LINGER 0: close sends a reset, not a FIN
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", got
    finally:
        sock.shutdown(socket.SHUT_RDWR)
        sock.close()
        thread.join(10)


def refused() -> str:
    """A replica that is not there: its port refuses connections."""
    (port,) = free_ports(1)
    return f"http://127.0.0.1:{port}"


def test_every_request_goes_on_past_a_replica_that_refuses() -> None:
    with replica(set()) as (live, hits):
        client = Client(f"{refused()},{live}", "t", timeout=TIMEOUT)
        client.request("POST", "/v1/apply", {"text": "x"})
        client.request("GET", "/healthz")
        assert hits == ["POST /v1/apply", "GET /healthz"]  # each sent once


def test_a_post_a_replica_got_and_left_unanswered_is_not_sent_again() -> None:
    with silent() as hung, replica(set()) as (live, hits):
        client = Client(f"{hung},{live}", "t", timeout=TIMEOUT)
        with pytest.raises(Unanswered) as e:
            client.request("POST", "/v1/apply", {"text": "x"})
        message = str(e.value)
        assert message.startswith(f"{hung} got POST /v1/apply and gave no answer (timed out)")
        assert "may have been carried out" in message and "tsunagi get" in message
        assert isinstance(e.value, Unreachable)  # the CLI's exit code 3
        assert hits == []  # never sent to the other replica
        # The next request starts with the other replica, not the hung one.
        port = int(live.rsplit(":", 1)[1])
        assert client.request("POST", "/v1/apply", {"text": "y"})["port"] == port
        assert hits == ["POST /v1/apply"]


def test_a_post_a_replica_read_and_then_reset_is_not_sent_again() -> None:
    with acts_then_resets(set()) as (crashing, got), replica(set()) as (live, hits):
        client = Client(f"{crashing},{live}", "t", timeout=TIMEOUT)
        with pytest.raises(Unanswered, match=f"^{crashing} got POST /v1/instances "):
            client.request("POST", "/v1/instances", {"name": "a"})
        assert got == ["POST /v1/instances"] and hits == []


@pytest.mark.parametrize(
    "method,path",
    [
        ("GET", "/v1/proxies"),
        # The API's POSTs that are safe to repeat, known by their endpoint.
        ("POST", "/v1/instances/default/a/heartbeat"),  # renewing a lease twice renews it
        ("POST", "/v1/instances/resolve"),  # a lookup
        ("POST", "/v1/certificates"),  # another certificate for the same key and identity
    ],
)
def test_idempotent_requests_go_on_to_the_next_replica(method: str, path: str) -> None:
    with silent() as hung, replica(set()) as (live, hits):
        port = int(live.rsplit(":", 1)[1])
        client = Client(f"{hung},{live}", "t", timeout=TIMEOUT)
        assert client.request(method, path, {} if method == "POST" else None)["port"] == port
        assert hits == [f"{method} {path}"]


def test_the_idempotent_posts_are_the_apis() -> None:
    """Each endpoint the client repeats names one of the API's POST routes (a renamed route
    would otherwise silently lose its failover)."""
    repeated = {r.path for r in ROUTES if r.method == "POST" and idempotent("POST", r.path)}
    assert repeated == {*IDEMPOTENT_POSTS, "/v1/instances/{namespace}/{name}/heartbeat"}


def test_a_delete_sent_again_and_answered_404_is_done() -> None:
    items = {"a", "b"}
    with acts_then_resets(items) as (crashing, got), replica(items) as (live, hits):
        client = Client(f"{crashing},{live}", "t", timeout=TIMEOUT)
        reply = client.request("DELETE", "/items/a")
        # The first replica deleted it and died before answering; the second finds it gone.
        assert got == ["DELETE /items/a"] and hits == ["DELETE /items/a"]
        assert "a" not in items and reply["revision"] == 7
    # Not sent twice, a 404 is what it says: there was nothing to delete.
    with replica(items) as (live, _):
        with pytest.raises(Rejected) as e:
            Client(live, "t", timeout=TIMEOUT).request("DELETE", "/items/zzz")
        assert e.value.status == 404


def test_no_replica_answering_names_each() -> None:
    with silent() as hung:
        gone = refused()
        with pytest.raises(Unreachable) as e:
            Client(f"{gone},{hung}", "t", timeout=TIMEOUT).request("GET", "/healthz")
        assert not isinstance(e.value, Unanswered)
        assert f"{gone}: " in str(e.value)
        assert f"{hung}: timed out after the request was sent" in str(e.value)
