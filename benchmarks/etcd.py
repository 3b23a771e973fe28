"""Real etcd on loopback: one member or a cluster, in data dirs of our own, started here and
stopped here by their pids. The scale benchmark's replicated run and the tests
(``tests/etcd_fixtures.py``) both start their members with :func:`start_cluster`.

Debian's ``etcd`` (package etcd-server; ``make tools`` installs it). Callers choose the
timing: the benchmark keeps etcd's defaults (heartbeat, election, fsync of every write), as a
production member runs, so it measures what replicas on a real etcd cost; the tests shorten
heartbeats and elections for fast failover.
"""

from __future__ import annotations

import json
import shutil
import signal
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tsunagi.agent.ports import free_ports

HOST = "127.0.0.1"
ETCD = shutil.which("etcd")
"""The ``etcd`` program, or None when it is not installed."""


def unavailable() -> str | None:
    """Why a real etcd cannot run here (None: it can)."""
    if ETCD is None:
        return "etcd is not installed (`make tools` installs Debian's etcd-server)"
    return None


@dataclass(frozen=True)
class ServerTls:
    """PEM files for an etcd that serves its clients over TLS and admits only those with a
    certificate ``ca`` signed (``--client-cert-auth``); ``client_cert``/``client_key`` are
    one such client's."""

    ca: Path
    cert: Path
    key: Path
    client_cert: Path
    client_key: Path

    def flags(self) -> list[str]:
        return [
            "--cert-file", str(self.cert),
            "--key-file", str(self.key),
            "--trusted-ca-file", str(self.ca),
            "--client-cert-auth",
        ]  # fmt: skip

    def context(self) -> ssl.SSLContext:
        """A client's: trusts ``ca``, presents the client certificate."""
        ctx = ssl.create_default_context(cafile=str(self.ca))
        ctx.load_cert_chain(str(self.client_cert), str(self.client_key))
        return ctx


@dataclass
class Member:
    """One etcd process (its clients on TLS with ``tls``)."""

    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    proc: subprocess.Popen[bytes] | None = None
    tls: ServerTls | None = None

    @property
    def endpoint(self) -> str:
        return f"{HOST}:{self.client_port}"

    @property
    def client_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.endpoint}"

    @property
    def peer_url(self) -> str:
        return f"http://{HOST}:{self.peer_port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / f"etcd-{self.name}.log"

    def healthy(self) -> bool:
        """etcd's own ``/health``: true once the member has a leader and serves reads."""
        context = self.tls.context() if self.tls else None
        if context is not None:
            # Whether etcd's certificate names the address dialled is the client's to check;
            # being up is all this asks (the chain is still checked).
            context.check_hostname = False
        try:
            with urllib.request.urlopen(
                f"{self.client_url}/health", timeout=1, context=context
            ) as r:
                return bool(json.loads(r.read()).get("health") == "true")
        except (OSError, ValueError):
            return False

    def kill(self) -> None:
        """``kill -9``: no shutdown code runs."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        """SIGTERM by pid; killed if it has not gone within 10 s."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text()[-chars:] if self.log_path.exists() else ""


@dataclass
class Cluster:
    """Members started together; :attr:`url` is the ``--store`` value for all of them."""

    members: list[Member] = field(default_factory=list)

    @property
    def endpoints(self) -> list[tuple[str, int]]:
        return [(HOST, m.client_port) for m in self.members]

    @property
    def url(self) -> str:
        return "etcd://" + ",".join(m.endpoint for m in self.members)

    def stop(self) -> None:
        """Stop every member by its pid and remove its data."""
        for m in self.members:
            m.stop()
            shutil.rmtree(m.data_dir, ignore_errors=True)


def start_cluster(
    base: Path,
    size: int = 1,
    flags: Sequence[str] = (),
    timeout: float = 30,
    tls: ServerTls | None = None,
) -> Cluster:
    """Start ``size`` members under ``base`` (each with ``flags`` added; serving clients
    over TLS with ``tls``) and wait until each reports healthy; on any failure every member
    is stopped before the error is raised."""
    if ETCD is None:
        raise RuntimeError(unavailable())
    ports = free_ports(2 * size)
    cluster = Cluster(
        [
            Member(f"m{i}", ports[2 * i], ports[2 * i + 1], base / f"etcd-m{i}", tls=tls)
            for i in range(size)
        ]
    )
    initial = ",".join(f"{m.name}={m.peer_url}" for m in cluster.members)
    try:
        for m in cluster.members:
            m.data_dir.mkdir(parents=True, mode=0o700)
            with m.log_path.open("ab") as log:
                m.proc = subprocess.Popen(
                    [
                        ETCD,
                        "--name", m.name,
                        "--data-dir", str(m.data_dir),
                        "--listen-client-urls", m.client_url,
                        "--advertise-client-urls", m.client_url,
                        "--listen-peer-urls", m.peer_url,
                        "--initial-advertise-peer-urls", m.peer_url,
                        "--initial-cluster", initial,
                        "--initial-cluster-state", "new",
                        "--initial-cluster-token", f"tsunagi-{ports[0]}",
                        "--logger", "zap",
                        "--log-level", "warn",
                        *(tls.flags() if tls else ()),
                        *flags,
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                )  # fmt: skip
        deadline = time.monotonic() + timeout
        while not all(m.healthy() for m in cluster.members):
            for m in cluster.members:
                assert m.proc is not None
                if m.proc.poll() is not None:
                    raise RuntimeError(f"etcd {m.name} exited:\n{m.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"etcd did not become healthy in {timeout} s")
            time.sleep(0.05)
    except BaseException:
        cluster.stop()
        raise
    return cluster
