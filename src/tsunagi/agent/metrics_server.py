"""The sidecar's metrics: a reader thread on the FIFO Envoy writes metric lines to, and
``GET /stats/prometheus`` on the metrics port (Istio's agent path), which merges Istio's
metrics with Envoy's own and, with ``tsunagi run --app-metrics PATH``, the app's.

Plain threads and a bare socket loop: ``http.server`` would pull ``email`` and friends into
every sidecar's memory for one path that a scraper asks for every few seconds.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time

from tsunagi import httpwire
from tsunagi.agent.logs import log
from tsunagi.agent.metrics import Aggregator
from tsunagi.proxy_contract import ISTIO_METRICS_PATH

PATH = "/stats/prometheus"
LEAN_PATH = ISTIO_METRICS_PATH
# Read from every sidecar every few seconds by the control plane: a fraction of the full
# page's bytes, and no load on Envoy's admin or the app.
LEAN_FAMILIES = frozenset({"istio_requests_total", "istio_request_duration_milliseconds"})
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
ENVOY_TIMEOUT = 1.0
"""Seconds Envoy's stats may take at scrape time, from connecting to the last byte."""
APP_TIMEOUT = 1.0
"""The same for the app's metrics: a slow app costs only its part, and a whole scrape stays
within ~2 s, well inside Prometheus' scrape timeout (the default 10 s, and the 5 s interval
of the generated prometheus.yml)."""
HEAD_TIMEOUT = 1.0
"""Seconds a client may take to send its request: connections are served one at a time."""
CLOSE_TIMEOUT = 3.0
"""Seconds :meth:`MetricsPipe.close` / :meth:`MetricsServer.close` wait for their thread."""
SCRAPE_TYPES = ("envoy", "application")
READ_SIZE = 8192


class MetricsPipe:
    """The FIFO Envoy's metric loggers write to, and the thread that reads it.

    Opened read-write before Envoy starts: neither side ever blocks on open, and the pipe
    survives Envoy restarts (the agent is always a writer too, so no reader sees EOF).
    """

    def __init__(self, path: str | os.PathLike[str], aggregator: Aggregator) -> None:
        self.path = os.fspath(path)
        self.aggregator = aggregator
        os.mkfifo(path, 0o600)
        self._fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        self._closing = False
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
            if not chunk or self._closing:
                return
            data = rest + chunk
            cut = data.rfind(b"\n")
            if cut < 0:
                rest = data
                continue
            rest = data[cut + 1 :]
            self.aggregator.feed(data[:cut].decode("utf-8", "replace").split("\n"))

    def close(self) -> None:
        """Stop the reader and close the pipe. Closing a descriptor does not wake a thread
        blocked reading it, so a newline (an empty line, never a metric) wakes it first.
        Non-blocking from here: a full pipe must not block this write, and the reader's next
        read of an empty pipe then fails and ends it too."""
        self._closing = True
        with contextlib.suppress(OSError):
            os.set_blocking(self._fd, False)
            os.write(self._fd, b"\n")
        if self._thread.is_alive():
            self._thread.join(CLOSE_TIMEOUT)
        with contextlib.suppress(OSError):
            os.close(self._fd)


class MetricsServer:
    """``GET /stats/prometheus`` (everything, merged) and ``GET /stats/istio`` (Istio's
    request count and duration only, fetching nothing) on ``address``:``port`` (0: the OS
    chooses; see :attr:`port`). The address is the one the proxy registers, where scrapers
    look: 127.0.0.1 for a sidecar, a gateway's ``--metrics-address`` (127.0.0.1 by default)."""

    def __init__(
        self,
        port: int,
        aggregator: Aggregator,
        envoy_admin_port: int,
        app_port: int = 0,
        app_path: str = "",
        address: str = "127.0.0.1",
    ) -> None:
        self.aggregator = aggregator
        self.envoy_admin_port = envoy_admin_port
        self.app_port = app_port
        self.app_path = app_path
        self.scrapes = 0
        self.failures = dict.fromkeys(SCRAPE_TYPES, 0)
        self._sock = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((address, port))
        self._sock.listen(16)
        self.port: int = self._sock.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, name="metrics-http", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Stop serving: shutting the listening socket down wakes the blocked ``accept()``
        (closing it alone would not); a scrape in progress may finish first."""
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        if self._thread.is_alive():
            self._thread.join(CLOSE_TIMEOUT)
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
                    conn.settimeout(HEAD_TIMEOUT)
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
        if method == "GET" and target == PATH:
            status, body = "200 OK", self.scrape().encode()
        elif method == "GET" and target == LEAN_PATH:
            status, body = "200 OK", self.aggregator.render(LEAN_FAMILIES).encode()
        else:
            status = "404 Not Found"
            body = f"only GET {PATH} and {LEAN_PATH} are served here\n".encode()
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
        envoy = self._fetch("envoy", self.envoy_admin_port, PATH, ENVOY_TIMEOUT)
        app = ""
        if self.app_path:
            app = self._app_metrics()
        parts = [self.aggregator.render(), self._agent_metrics(), envoy, app]
        return "".join(p if p.endswith("\n") or not p else p + "\n" for p in parts)

    def _fetch(self, part: str, port: int, path: str, budget: float) -> str:
        """``GET path`` on ``port`` within ``budget`` seconds in all; "" (logged and counted
        as a failure of ``part``) when it fails or is late."""
        try:
            status, body = httpwire.request(
                "127.0.0.1", port, "GET", path, timeout=budget, deadline=time.monotonic() + budget
            )
        except OSError as e:
            status, body = 0, (str(e) or type(e).__name__).encode()
        if status != 200:
            self.failures[part] += 1
            log.warning("metrics: %s %s failed: %s", part, path, status or body[:200])
            return ""
        return body.decode("utf-8", "replace")

    def _app_metrics(self) -> str:
        text = self._fetch("application", self.app_port, self.app_path, APP_TIMEOUT)
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
            # Requests counted with the peer unknown (series cap reached, or a malformed
            # peer header), and requests not counted at all (even those series were full).
            "# TYPE istio_agent_metric_requests_folded_total counter",
            f"istio_agent_metric_requests_folded_total {self.aggregator.folded}",
            "# TYPE istio_agent_metric_lines_dropped_total counter",
            *(
                f'istio_agent_metric_lines_dropped_total{{protocol="{k}"}} {v}'
                for k, v in self.aggregator.dropped.items()
            ),
        ]
        return "\n".join(lines) + "\n"


def start_metrics(
    workdir: str,
    aggregator: Aggregator,
    name: str,
    port: int,
    envoy_admin_port: int,
    app_port: int = 0,
    app_path: str = "",
    address: str = "127.0.0.1",
) -> tuple[MetricsPipe, MetricsServer]:
    """A proxy's metric pipe (started before Envoy, which opens it; its path goes in the
    bootstrap) and its metrics endpoint, sidecar or gateway alike; a port that cannot be
    bound is a :class:`RuntimeError` naming the flag that chose it."""
    pipe = MetricsPipe(os.path.join(workdir, "metrics.fifo"), aggregator)
    pipe.start()
    try:
        server = MetricsServer(port, aggregator, envoy_admin_port, app_port, app_path, address)
    except OSError as e:
        pipe.close()
        raise RuntimeError(
            f"cannot serve metrics on port {port}: {e}; choose another --metrics-port (or 0 "
            "for a free one)"
        ) from None
    server.start()
    host = f"[{address}]" if ":" in address else address
    log.info("%s: metrics on http://%s:%d%s", name, host, server.port, PATH)
    return pipe, server
