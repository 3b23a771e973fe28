"""The sidecar's metrics: a reader thread on the FIFO Envoy writes metric lines to, and
``GET /stats/prometheus`` on the metrics port (Istio's agent path), which merges Istio's
metrics with Envoy's own and, with ``tsunagi run --app-metrics PATH``, the app's.

Plain threads and a bare socket loop: ``http.server`` would pull ``email`` and friends into
every sidecar's memory for one path that a scraper asks for every few seconds.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from pathlib import Path

from tsunagi import httpwire
from tsunagi.agent.envoy import admin
from tsunagi.agent.metrics import Aggregator

log = logging.getLogger("tsunagi.agent")

PATH = "/stats/prometheus"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
APP_TIMEOUT = 2.0
"""Seconds to wait for the app's metrics at scrape time; a slow app costs only its part."""
SCRAPE_TYPES = ("envoy", "application")
READ_SIZE = 8192


class MetricsPipe:
    """The FIFO Envoy's metric loggers write to, and the thread that reads it.

    Opened read-write before Envoy starts: neither side ever blocks on open, and the pipe
    survives Envoy restarts (the agent is always a writer too, so no reader sees EOF).
    """

    def __init__(self, path: Path, aggregator: Aggregator) -> None:
        self.path = path
        self.aggregator = aggregator
        os.mkfifo(path, 0o600)
        self._fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        self._thread = threading.Thread(target=self._read, name="metrics-pipe", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _read(self) -> None:
        # Never waits on anything but the pipe: a stalled reader would make Envoy buffer
        # lines without bound (docs/design/metrics.md, "A stalled reader").
        # Small reads: a burst (Envoy flushes once a second) is taken in ~60-line batches,
        # so the objects one batch makes at once stay few (measured: 64 KiB reads left the
        # agent's heap ~0.8 MB larger after a load).
        rest = b""
        while True:
            try:
                chunk = os.read(self._fd, READ_SIZE)
            except OSError:
                return  # closed: the sidecar is stopping
            if not chunk:
                return
            data = rest + chunk
            cut = data.rfind(b"\n")
            if cut < 0:
                rest = data
                continue
            rest = data[cut + 1 :]
            self.aggregator.feed(data[:cut].decode("utf-8", "replace").split("\n"))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)


class MetricsServer:
    """``GET /stats/prometheus`` on 127.0.0.1:``port`` (0: the OS chooses; see
    :attr:`port`)."""

    def __init__(
        self,
        port: int,
        aggregator: Aggregator,
        envoy_admin_port: int,
        app_port: int = 0,
        app_path: str = "",
    ) -> None:
        self.aggregator = aggregator
        self.envoy_admin_port = envoy_admin_port
        self.app_port = app_port
        self.app_path = app_path
        self.scrapes = 0
        self.failures = dict.fromkeys(SCRAPE_TYPES, 0)
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", port))
        self._sock.listen(16)
        self.port: int = self._sock.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, name="metrics-http", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._sock.close()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            # One at a time: scrapes are rare, and a thread per connection costs memory.
            with conn:
                try:
                    conn.settimeout(5.0)
                    self._handle(conn)
                except OSError:
                    pass

    def _handle(self, conn: socket.socket) -> None:
        head = b""
        while b"\r\n\r\n" not in head and len(head) < 16384:
            chunk = conn.recv(4096)
            if not chunk:
                return
            head += chunk
        method, _, rest = head.split(b"\r\n", 1)[0].decode("latin-1").partition(" ")
        target = rest.split(" ", 1)[0].split("?", 1)[0]
        if method != "GET" or target != PATH:
            status, body = "404 Not Found", f"only GET {PATH} is served here\n".encode()
        else:
            status, body = "200 OK", self.scrape().encode()
        conn.sendall(
            f"HTTP/1.1 {status}\r\nContent-Type: {CONTENT_TYPE}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )

    def scrape(self) -> str:
        """The merged metrics, in Istio's agent's order: its own (Istio's standard metrics
        and the scrape counters), then Envoy's, then the app's last. A part that fails is
        left out, logged and counted in ``istio_agent_scrape_failures_total``; the others
        are still served. Names are not rewritten: a clash stays the app's to fix, as in
        Istio."""
        self.scrapes += 1
        status, envoy = admin(self.envoy_admin_port, PATH, timeout=APP_TIMEOUT)
        if status != 200:
            self.failures["envoy"] += 1
            log.warning("metrics: Envoy's %s failed: %s", PATH, envoy[:200] or status)
            envoy = ""
        app = ""
        if self.app_path:
            app = self._app_metrics()
        parts = [self.aggregator.render(), self._agent_metrics(), envoy, app]
        return "".join(p if p.endswith("\n") or not p else p + "\n" for p in parts)

    def _app_metrics(self) -> str:
        try:
            status, body = httpwire.request(
                "127.0.0.1", self.app_port, "GET", self.app_path, timeout=APP_TIMEOUT
            )
        except OSError as e:
            status, body = 0, str(e).encode()
        if status != 200:
            self.failures["application"] += 1
            log.warning("metrics: the app's %s failed: %s", self.app_path, status or body[:200])
            return ""
        text = body.decode("utf-8", "replace")
        # OpenMetrics ends with "# EOF"; it is last here, but Envoy's part is text format.
        return "".join(ln for ln in text.splitlines(True) if ln.strip() != "# EOF")

    def _agent_metrics(self) -> str:
        lines = [
            "# TYPE istio_agent_scrapes_total counter",
            f"istio_agent_scrapes_total {self.scrapes}",
            "# TYPE istio_agent_scrape_failures_total counter",
            *(
                f'istio_agent_scrape_failures_total{{type="{t}"}} {self.failures[t]}'
                for t in SCRAPE_TYPES
            ),
            "# TYPE tsunagi_agent_metric_lines_invalid_total counter",
            f"tsunagi_agent_metric_lines_invalid_total {self.aggregator.bad_lines}",
        ]
        return "\n".join(lines) + "\n"
