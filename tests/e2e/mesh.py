"""A real local mesh for end-to-end tests: `tsunagi up`, `tsunagi run` sidecars, the CLI.

Every process is started here and stopped here, by its own pid.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import yaml
from benchmarks.procs import children

from tsunagi.agent.ports import free_ports

APPS = Path(__file__).parent / "apps"


def free_port() -> int:
    """A loopback port to listen on, outside the range the kernel draws client ports from."""
    return free_ports(1)[0]


def stop(proc: subprocess.Popen[Any], timeout: float = 15) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def apply_recorded(mesh: Mesh, applied: list[str], text: str) -> str:
    """``tsunagi apply --wait`` of ``text`` until every proxy has it (its output returned),
    remembered in ``applied`` for :func:`delete_recorded` (once: applying a changed version
    of the same resource replaces it)."""
    result = mesh.apply(text, "--wait")
    assert result.returncode == 0, result.stderr
    assert "in sync after" in result.stdout, result.stdout
    if not any(_keys(old) == _keys(text) for old in applied):
        applied.append(text)
    return result.stdout + result.stderr


def _keys(text: str) -> list[tuple[str, str, str]]:
    """``(kind, namespace, name)`` of each resource in a YAML text."""
    docs = [d for d in yaml.safe_load_all(text) if d]
    return [
        (d["kind"], d["metadata"].get("namespace", "default"), d["metadata"]["name"]) for d in docs
    ]


def delete_recorded(mesh: Mesh, applied: list[str]) -> None:
    """Delete what :func:`apply_recorded` applied, waiting for every proxy."""
    for text in applied:
        done = mesh.cli("delete", "-f", "-", "--wait", stdin=text)
        assert done.returncode == 0, done.stderr


def wait_until(check: Callable[[], object], timeout: float = 20.0, what: str = "condition") -> None:
    """Poll ``check`` until it is true; fail after ``timeout`` seconds (a bound, not a
    measurement: tests assert behaviour, not speed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def alive(pid: int) -> bool:
    """Whether ``pid`` is a running (not zombie) process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@dataclass
class Workload:
    proc: subprocess.Popen[bytes]
    name: str
    outbound_port: int

    def envoy_pid(self) -> int | None:
        """The pid of the Envoy this workload's agent runs now (None between two Envoys)."""
        for pid in children(self.proc.pid):
            if any(arg.endswith("envoy.json") for arg in cmdline(pid)):
                return pid
        return None

    def app_pid(self) -> int | None:
        """The pid of this workload's app (the agent's child that is not Envoy)."""
        app = str(APPS)
        for pid in children(self.proc.pid):
            args = cmdline(pid)
            if not any(a.endswith("envoy.json") for a in args) and any(
                a.startswith(app) or a.endswith(".py") for a in args
            ):
                return pid
        return None

    def envoy_admin(self, path: str) -> str:
        """GET ``path`` from this workload's Envoy admin API ("" when it does not answer)."""
        pid = self.envoy_pid()
        args = cmdline(pid) if pid else []
        if "-c" not in args:
            return ""
        try:
            boot = json.loads(Path(args[args.index("-c") + 1]).read_text())
            port = boot["admin"]["address"]["socket_address"]["port_value"]
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            try:
                c.request("GET", path)
                resp = c.getresponse()
                body = resp.read().decode(errors="replace")
                return body if resp.status == 200 else ""
            finally:
                c.close()
        except (OSError, ValueError, KeyError, IndexError, http.client.HTTPException):
            return ""

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


def concurrent_gets(
    client: Workload, host: str, path: str, threads: int, each: int
) -> list[tuple[int, str]]:
    """``threads`` callers at once (they start together), each sending ``each`` requests one
    after another on its own keep-alive connection to ``client``'s sidecar: (status,
    x-envoy-overloaded) of every answer."""
    results: list[tuple[int, str]] = []
    lock = threading.Lock()
    go = threading.Barrier(threads)

    def caller() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", client.outbound_port, timeout=30)
        go.wait()
        try:
            for _ in range(each):
                conn.request("GET", path, headers={"Host": host})
                resp = conn.getresponse()
                resp.read()
                with lock:
                    results.append((resp.status, resp.headers.get("x-envoy-overloaded", "")))
        finally:
            conn.close()

    workers = [threading.Thread(target=caller) for _ in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    return results


@dataclass
class Mesh:
    """A control plane in ``state_dir`` and the workloads started against it."""

    state_dir: Path
    api_port: int = field(default_factory=free_port)
    xds_port: int = field(default_factory=free_port)
    zipkin_port: int = field(default_factory=free_port)
    otlp_port: int = field(default_factory=free_port)
    dashboard_port: int = field(default_factory=free_port)
    up_args: tuple[str, ...] = ()
    """More ``tsunagi up`` flags (``--trace-export URL``, ...)."""
    control_plane: subprocess.Popen[bytes] | None = None
    workloads: list[Workload] = field(default_factory=list)
    instance_ttl: float = 15.0
    xds_protocol: str = "delta"
    servers: str = ""
    """``TSUNAGI_SERVER`` for the CLI and sidecars (replicas' URLs, comma-separated);
    empty: this control plane's API."""

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
        env.update(
            TSUNAGI_SERVER=self.servers or self.url,
            TSUNAGI_STATE_DIR=str(self.state_dir),
        )
        env.pop("TSUNAGI_TOKEN", None)
        return env

    @property
    def url(self) -> str:
        """This control plane's API."""
        return f"http://127.0.0.1:{self.api_port}"

    def up_command(self) -> list[str]:
        """The ``tsunagi up`` command line for this mesh."""
        return [
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
            "--zipkin-port",
            str(self.zipkin_port),
            "--otlp-port",
            str(self.otlp_port),
            "--dashboard-port",
            str(self.dashboard_port),
            *self.up_args,
        ]

    def up(self) -> None:
        log = (self.state_dir / "control-plane.log").open("ab")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.control_plane = subprocess.Popen(
            self.up_command(), env=self.env, stdout=log, stderr=log
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

    def kill(self) -> None:
        """``kill -9`` the control plane: no shutdown code runs."""
        if self.control_plane is not None and self.control_plane.poll() is None:
            self.control_plane.kill()
            self.control_plane.wait()

    def workload_names(self) -> list[str]:
        """Registered instances, as ``tsunagi get workloads`` lists them."""
        return [i["name"] for i in self.api("GET", "/v1/resources?kind=workloads")["items"]]

    def all_synced(self, count: int) -> bool:
        """Whether ``count`` proxies are connected and all have ACKed their config."""
        try:
            proxies = self.api("GET", "/v1/proxies")["proxies"]
        except OSError:
            return False
        return len(proxies) == count and all(p["synced"] for p in proxies)

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
            # The app starts once the agent is done starting its proxy: before that, the
            # agent is still in start-up (where an Envoy that dies is an error, not a restart).
            if (not wait_registered or name in names) and port and w.app_pid():
                w.outbound_port = port  # the agent picks it: no race for a free port
                return w
            time.sleep(0.1)
        raise AssertionError(
            f"{name} did not start:\n" + (self.state_dir / f"{name}.log").read_text()
        )

    def _proxy_ready(self, name: str) -> int:
        """The proxy's outbound port once it has ACKed its config, else 0."""
        for p in self.api("GET", "/v1/proxies")["proxies"]:
            if p["id"].rsplit(".", 1)[0] == name and p["synced"]:  # id: name.namespace
                return int(p["outbound_port"])
        return 0

    def client(self) -> Workload:
        return self.run("client", "v1", 80, "idle.py", False)

    def gateway(
        self,
        name: str,
        labels: dict[str, str],
        *extra: str,
        namespace: str = "default",
        launcher: tuple[str, ...] = (),
    ) -> Workload:
        """Start ``tsunagi gateway --name NAME --label K=V...`` (under ``launcher``, e.g. a
        ``setpriv`` that drops a capability); return once its proxy has ACKed its config and
        it is registered. It listens on the ports its Gateways' servers name (tests take them
        from :func:`free_port`); ``outbound_port`` is unused (0)."""
        log_name = f"gateway-{name}-{len(self.workloads)}"
        log = (self.state_dir / f"{log_name}.log").open("ab")
        labels_args = [a for k, v in labels.items() for a in ("--label", f"{k}={v}")]
        proc = subprocess.Popen(
            [
                *launcher,
                sys.executable,
                "-m",
                "tsunagi.cli.main",
                "gateway",
                "--name",
                name,
                "--namespace",
                namespace,
                *labels_args,
                "--concurrency",
                "1",
                "--xds-protocol",
                self.xds_protocol,
                *extra,
            ],
            env=self.env,
            stdout=log,
            stderr=log,
        )
        gw = Workload(proc, "", 0)
        self.workloads.append(gw)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert proc.poll() is None, (self.state_dir / f"{log_name}.log").read_text()
            mine = [
                i["name"]
                for i in self.api("GET", f"/v1/resources?kind=workloads&namespace={namespace}")[
                    "items"
                ]
                if i["document"].get("kind") == "gateway" and i["document"]["service"] == name
            ]
            synced = {
                p["id"].rsplit(".", 1)[0]
                for p in self.api("GET", "/v1/proxies")["proxies"]
                if p["kind"] == "gateway" and p["synced"]
            }
            taken = {w.name for w in self.workloads}
            ready = [n for n in mine if n in synced and n not in taken]
            if ready and gw.envoy_pid():
                gw.name = ready[0]
                return gw
            time.sleep(0.1)
        raise AssertionError(
            f"gateway {name} did not start:\n" + (self.state_dir / f"{log_name}.log").read_text()
        )

    def close(self) -> None:
        for w in reversed(self.workloads):
            stop(w.proc)
        self.down()


def outside_echo(name: str, port: int) -> subprocess.Popen[bytes]:
    """A plain echo app outside the mesh (no sidecar), answering as ``name`` on
    127.0.0.1:``port``; the caller stops it by its pid (:func:`stop`)."""
    env = {**os.environ, "PORT": str(port), "POD_NAME": name}
    return subprocess.Popen([sys.executable, str(APPS / "echo.py")], env=env)


def outside_https_echo(
    name: str, port: int, cert: Path, key: Path, log: Path, client_ca: Path | None = None
) -> subprocess.Popen[bytes]:
    """``apps/https_echo.py`` outside the mesh: HTTPS on 127.0.0.1:``port`` with ``cert`` and
    ``key``, answering with ``name`` and the SNI it saw; its output goes to ``log``. With
    ``client_ca`` it requires a client certificate that CA signed (and names its subject).
    The caller stops it by its pid (:func:`stop`)."""
    env = {**os.environ, "PORT": str(port), "NAME": name}
    env |= {"TLS_CERT": str(cert), "TLS_KEY": str(key)}
    if client_ca is not None:
        env["TLS_CLIENT_CA"] = str(client_ca)
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, str(APPS / "https_echo.py")], env=env, stdout=out, stderr=out
        )


def started_mesh(tmp_path: Path, *up_args: str, **settings: Any) -> Iterator[Mesh]:
    """A mesh in ``tmp_path/state`` started with ``tsunagi up UP_ARGS`` (``settings``: more
    :class:`Mesh` fields), closed (every process by its pid) when the caller is done: a
    fixture's body, as ``yield from``."""
    m = Mesh(tmp_path / "state", up_args=up_args, **settings)
    m.state_dir.mkdir(parents=True)
    m.up()
    try:
        yield m
    finally:
        m.close()


def started_replicas(tmp_path: Path, count: int, *up_args: str) -> Iterator[list[Mesh]]:
    """``count`` control planes started with the same ``tsunagi up UP_ARGS`` (a shared etcd
    --store, --token-file, CA files), each with its own state directory and ports; the CLI
    and sidecars of each get every replica's URL (TSUNAGI_SERVER=A,B,...). Closed (every
    process by its pid) when the caller is done: a fixture's body, as ``yield from``."""
    replicas = [Mesh(tmp_path / f"replica-{i}", up_args=up_args) for i in range(count)]
    servers = ",".join(m.url for m in replicas)
    try:
        for m in replicas:
            m.servers = servers
            m.state_dir.mkdir(parents=True)
            m.up()
        yield replicas
    finally:
        for m in replicas:
            m.close()


class Background:
    """Work a test keeps going in a thread: ``step`` again and again until ``stop`` (or the
    end of the ``with`` block), then ``finish``.

    Bounded: it stops by itself after ``limit`` seconds even if nobody stops it.
    """

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _loop(self) -> None:
        deadline = time.monotonic() + self.limit
        while not self._stop.is_set() and time.monotonic() < deadline:
            self.step()
        self.finish()

    def step(self) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        """Called in the thread once the steps are over."""


class Traffic(Background):
    """A client sending continuously through a sidecar in a thread, recording every answer."""

    def __init__(self, port: int, host: str, limit: float = 120.0) -> None:
        super().__init__(limit)
        self.port, self.host = port, host
        self.results: list[tuple[int, str]] = []
        self._conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)

    def step(self) -> None:
        try:
            status, body = request(self.port, self.host, conn=self._conn)
            version = (
                body.get("service", "") + "/" + body.get("version", "")
                if isinstance(body, dict)
                else str(body)[:80]
            )
            self.results.append((status, version))
        except (OSError, http.client.HTTPException) as e:
            self.results.append((0, repr(e)))
            self._conn.close()
            self._conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        time.sleep(0.002)

    def finish(self) -> None:
        self._conn.close()

    def failures(self) -> list[tuple[int, str]]:
        return [r for r in self.results if r[0] != 200]

    def seen_after(self, index: int) -> set[str]:
        return {v for _, v in self.results[index:]}
