"""DestinationRule ``connectionPool.tcp.idleTimeout`` through a real sidecar: a connection
through an ``--upstream`` listener with no bytes either way for longer than the timeout is
closed by the sidecar (the client reads end of stream); one that keeps talking stays open.
"""

from __future__ import annotations

import socket
import time

import pytest

from .mesh import Mesh, free_port, wait_until
from .test_tcp import answers, apply, tcp_client

pytestmark = pytest.mark.e2e

IDLE_RULE = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: tcp-echo-idle}
spec:
  host: tcp-echo
  trafficPolicy:
    connectionPool:
      tcp: {idleTimeout: 1s}
"""


def test_an_idle_tcp_connection_is_closed_and_a_busy_one_is_not(mesh: Mesh) -> None:
    mesh.run("tcp-echo", "v1", "9000/tcp", "tcp_echo.py")  # type: ignore[arg-type]
    local = free_port()
    tcp_client(mesh, f"tcp-echo:9000@{local}")
    wait_until(lambda: answers(local), what="tcp-echo through the upstream listener")
    apply(mesh, IDLE_RULE)

    with (
        socket.create_connection(("127.0.0.1", local), timeout=15) as idle,
        socket.create_connection(("127.0.0.1", local), timeout=15) as busy,
    ):
        idle_reader, busy_reader = idle.makefile("rb"), busy.makefile("rb")
        idle.sendall(b"first\n")
        assert idle_reader.readline() == b"v1 first\n"
        # The busy one talks every 0.2 s for 3 s, three idle timeouts: always answered.
        deadline = time.monotonic() + 3
        n = 0
        while time.monotonic() < deadline:
            busy.sendall(b"tick %d\n" % n)
            assert busy_reader.readline() == b"v1 tick %d\n" % n
            n += 1
            time.sleep(0.2)
        # Meanwhile the idle one was closed by the sidecar: end of stream (the generous
        # socket timeout only bounds the wait; Envoy's default would be 1 h).
        assert idle_reader.readline() == b""
