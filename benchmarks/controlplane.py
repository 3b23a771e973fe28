"""The control plane under benchmark: started like a user would, driven through its API."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.procs import Procs, free_port, tsunagi, tsunagi_env, wait_port


def up_command(state: Path, api_port: int, xds_port: int, store: str = "memory:") -> list[str]:
    """`tsunagi up` on ``store`` (a memory store by default) with leases that never lapse
    (nothing heartbeats the instances a benchmark registers)."""
    return tsunagi(
        "up",
        "--state-dir",
        str(state),
        "--store",
        store,
        "--api-port",
        str(api_port),
        "--xds-port",
        str(xds_port),
        "--instance-ttl",
        "100000",
        # The trace collector's ports: any free ones, so benchmarks never collide on 9411.
        "--zipkin-port",
        "0",
        "--otlp-port",
        "0",
        "--dashboard-port",  # likewise for the dashboard's 20001
        "0",
    )


def shared_secrets(first: Path) -> list[str]:
    """The ``tsunagi up`` flags that give another replica what replicas must share, from the
    files the first replica made in its state directory ``first``: its CA, workload-token
    key and admin token (as an operator copies them from the first replica)."""
    from tsunagi.ca.keystore import CA_DIR, CERT_FILE, KEY_FILE
    from tsunagi.controlplane.auth import TOKEN_FILE
    from tsunagi.controlplane.workload_tokens import KEY_FILE as TOKEN_KEY_FILE

    return [
        "--ca-cert", str(first / CA_DIR / CERT_FILE),
        "--ca-key", str(first / CA_DIR / KEY_FILE),
        "--workload-token-key", str(first / TOKEN_KEY_FILE),
        "--token-file", str(first / TOKEN_FILE),
    ]  # fmt: skip


class ControlPlane:
    """A `tsunagi up` for one benchmark (a memory store unless ``store`` says otherwise;
    leases that never lapse, since the benchmark registers instances nobody heartbeats) and
    a small client for its API. ``name`` names its state directory and log; ``extra_args``
    (a replica's shared secrets) go at the end of its command line."""

    def __init__(
        self,
        procs: Procs,
        workdir: Path,
        store: str = "memory:",
        name: str = "state",
        extra_args: Sequence[str] = (),
    ) -> None:
        self.api_port, self.xds_port = free_port(), free_port()
        self.state = workdir / name
        self.state.mkdir(exist_ok=True)
        log = "tsunagi-up" if name == "state" else f"tsunagi-up-{name}"
        proc = procs.start(
            log,
            [*up_command(self.state, self.api_port, self.xds_port, store), *extra_args],
            self.env,
        )
        wait_port(self.api_port, timeout=60)
        # Its token is written before its API listens: none means that another process
        # took the port first (it was free a moment ago) and this one failed to start.
        token = self.state / "token"
        if proc.poll() is not None or not token.exists():
            tail = (workdir / f"{log}.log").read_text()[-2000:]
            raise RuntimeError(f"tsunagi up did not start:\n{tail}")
        self.token = token.read_text().strip()

    @property
    def env(self) -> dict[str, str]:
        """The environment for `tsunagi` commands that should use this control plane."""
        return tsunagi_env(self.api_port, self.state)

    def call(self, method: str, path: str, body: Any = None) -> Any:
        conn = http.client.HTTPConnection("127.0.0.1", self.api_port, timeout=60)
        try:
            conn.request(
                method,
                path,
                json.dumps(body) if body is not None else None,
                {"Authorization": f"Bearer {self.token}"},
            )
            return json.loads(conn.getresponse().read())
        finally:
            conn.close()

    def apply_and_wait(self, text: str) -> float:
        """Seconds from sending the apply to the last proxy's ACK, as the client sees it."""
        started = time.perf_counter()
        reply = self.call("POST", "/v1/apply", {"text": text, "filename": "bench.yaml"})
        waited = self.call("GET", f"/v1/wait?revision={reply['revision']}&timeout=30")
        if not waited.get("complete"):
            raise RuntimeError(f"proxies did not sync: {waited}")
        return time.perf_counter() - started

    def synced(self, count: int) -> bool:
        proxies = self.call("GET", "/v1/proxies")["proxies"]
        return len(proxies) == count and all(p["synced"] for p in proxies)

    def unsynced(self) -> str:
        """Which proxies are not in sync and why, for an error message."""
        proxies = self.call("GET", "/v1/proxies")["proxies"]
        lines = [
            f"{p['id']}: "
            + ", ".join(
                f"{t} {s['state']}" + (f" ({s['message']})" if s.get("message") else "")
                for t, s in p["types"].items()
            )
            for p in proxies
            if not p["synced"]
        ]
        return f"{len(proxies)} connected; not synced: " + ("; ".join(lines) or "none")
