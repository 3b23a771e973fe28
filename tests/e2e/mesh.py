"""A real local mesh for end-to-end tests: `tsunagi up`, `tsunagi run` sidecars, the CLI.

Every process is started here and stopped here, by its own pid.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

APPS = Path(__file__).parent / "apps"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop(proc: subprocess.Popen[bytes], timeout: float = 15) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Workload:
    proc: subprocess.Popen[bytes]
    name: str
    outbound_port: int

    def get(
        self, host: str, path: str = "/", headers: dict[str, str] | None = None, timeout: float = 10
    ) -> tuple[int, dict[str, Any] | str]:
        """One request through this workload's sidecar, as its app would send it."""
        return request(self.outbound_port, host, path, headers, timeout)


def request(
    port: int,
    host: str,
    path: str = "/",
    headers: dict[str, str] | None = None,
    timeout: float = 10,
    conn: http.client.HTTPConnection | None = None,
) -> tuple[int, dict[str, Any] | str]:
    own = conn is None
    c = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", path, headers={"Host": host, **(headers or {})})
        resp = c.getresponse()
        raw = resp.read().decode(errors="replace")
        try:
            return resp.status, json.loads(raw)
        except ValueError:
            return resp.status, raw
    finally:
        if own:
            c.close()


@dataclass
class Mesh:
    """A control plane in ``state_dir`` and the workloads started against it."""

    state_dir: Path
    api_port: int = field(default_factory=free_port)
    xds_port: int = field(default_factory=free_port)
    control_plane: subprocess.Popen[bytes] | None = None
    workloads: list[Workload] = field(default_factory=list)
    instance_ttl: float = 15.0
    xds_protocol: str = "delta"

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
        env.update(
            TSUNAGI_SERVER=f"http://127.0.0.1:{self.api_port}",
            TSUNAGI_STATE_DIR=str(self.state_dir),
        )
        env.pop("TSUNAGI_TOKEN", None)
        return env

    def up(self) -> None:
        log = (self.state_dir / "control-plane.log").open("ab")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.control_plane = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tsunagi.cli.main",
                "up",
                "--state-dir",
                str(self.state_dir),
                "--api-port",
                str(self.api_port),
                "--xds-port",
                str(self.xds_port),
                "--instance-ttl",
                str(self.instance_ttl),
            ],
            env=self.env,
            stdout=log,
            stderr=log,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert self.control_plane.poll() is None, self.log()
            try:
                self.api("GET", "/healthz")
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("control plane did not start:\n" + self.log())

    def down(self) -> None:
        if self.control_plane is not None:
            stop(self.control_plane)

    def log(self) -> str:
        path = self.state_dir / "control-plane.log"
        return path.read_text()[-5000:] if path.exists() else ""

    def token(self) -> str:
        return (self.state_dir / "token").read_text().strip()

    def api(self, method: str, path: str) -> Any:
        c = http.client.HTTPConnection("127.0.0.1", self.api_port, timeout=5)
        try:
            headers = {}
            if (self.state_dir / "token").exists():
                headers["Authorization"] = f"Bearer {self.token()}"
            c.request(method, path, headers=headers)
            return json.loads(c.getresponse().read())
        finally:
            c.close()

    def cli(
        self, *args: str, stdin: str | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "tsunagi.cli.main", *args],
            env=self.env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def apply(self, yaml_text: str, *extra: str) -> subprocess.CompletedProcess[str]:
        return self.cli("apply", "-f", "-", *extra, stdin=yaml_text)

    def run(
        self,
        service: str,
        version: str = "v1",
        port: int = 9080,
        app: str = "echo.py",
        wait_registered: bool = True,
        *extra: str,
    ) -> Workload:
        """Start ``tsunagi run`` for a test app; return once its proxy is ready (and, for
        servers, once the instance is registered)."""
        name = f"{service}-{version}-{len(self.workloads)}"
        log = (self.state_dir / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tsunagi.cli.main",
                "run",
                "--service",
                service,
                "--port",
                str(port),
                "--version",
                version,
                "--name",
                name,
                "--concurrency",
                "1",
                "--xds-protocol",
                self.xds_protocol,
                *extra,
                "--",
                sys.executable,
                str(APPS / app),
            ],
            env=self.env,
            stdout=log,
            stderr=log,
        )
        w = Workload(proc, name, 0)
        self.workloads.append(w)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert proc.poll() is None, (self.state_dir / f"{name}.log").read_text()
            names = [i["name"] for i in self.api("GET", "/v1/resources?kind=workloads")["items"]]
            port = self._proxy_ready(name)
            if (not wait_registered or name in names) and port:
                w.outbound_port = port  # the agent picks it: no race for a free port
                return w
            time.sleep(0.1)
        raise AssertionError(
            f"{name} did not start:\n" + (self.state_dir / f"{name}.log").read_text()
        )

    def _proxy_ready(self, name: str) -> int:
        """The proxy's outbound port once it has ACKed its config, else 0."""
        for p in self.api("GET", "/v1/proxies")["proxies"]:
            if p["id"] == f"{name}.default" and p["synced"]:
                return int(p["outbound_port"])
        return 0

    def client(self) -> Workload:
        return self.run("client", "v1", 80, "idle.py", False)

    def close(self) -> None:
        for w in reversed(self.workloads):
            stop(w.proc)
        self.down()


class Traffic:
    """A client sending continuously through a sidecar in a thread, recording every answer.

    Bounded: it stops by itself after ``limit`` seconds even if nobody stops it.
    """

    def __init__(self, port: int, host: str, limit: float = 120.0) -> None:
        import threading

        self.port, self.host, self.limit = port, host, limit
        self.results: list[tuple[int, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _loop(self) -> None:
        deadline = time.monotonic() + self.limit
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                status, body = request(self.port, self.host, conn=conn)
                version = (
                    body.get("service", "") + "/" + body.get("version", "")
                    if isinstance(body, dict)
                    else str(body)[:80]
                )
                self.results.append((status, version))
            except (OSError, http.client.HTTPException) as e:
                self.results.append((0, repr(e)))
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            time.sleep(0.002)
        conn.close()

    def failures(self) -> list[tuple[int, str]]:
        return [r for r in self.results if r[0] != 200]

    def seen_after(self, index: int) -> set[str]:
        return {v for _, v in self.results[index:]}
