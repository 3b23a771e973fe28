"""Real etcd for tests: one member or a three-member cluster on loopback, in temp data dirs.

Members are started here and stopped here by their own pids; their data dirs are removed.
Tests skip when etcd is not installed (``make tools`` installs Debian's etcd-server).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tsunagi.agent.ports import free_ports
from tsunagi.registry import Registry
from tsunagi.store.etcd import EtcdStore

ETCD = shutil.which("etcd")


@dataclass
class Member:
    """One etcd process."""

    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.endpoint}/health", timeout=1) as r:
                return bool(json.loads(r.read()).get("health") == "true")
        except (OSError, ValueError):
            return False

    def kill(self) -> None:
        """``kill -9``: no shutdown code runs."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class Cluster:
    """Members started together; :attr:`url` is the ``--store`` value for all of them."""

    members: list[Member] = field(default_factory=list)

    @property
    def endpoints(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", m.client_port) for m in self.members]

    @property
    def url(self) -> str:
        return "etcd://" + ",".join(m.endpoint for m in self.members)

    def stop(self) -> None:
        for m in self.members:
            m.stop()
            shutil.rmtree(m.data_dir, ignore_errors=True)


def start_cluster(base: Path, size: int = 1) -> Cluster:
    """Start ``size`` members under ``base`` and wait until each reports healthy."""
    if ETCD is None:
        pytest.skip("etcd is not installed (make tools installs Debian's etcd-server)")
    ports = free_ports(2 * size)
    cluster = Cluster(
        [Member(f"m{i}", ports[2 * i], ports[2 * i + 1], base / f"etcd-m{i}") for i in range(size)]
    )
    initial = ",".join(f"{m.name}={m.peer_url}" for m in cluster.members)
    # Short heartbeats and elections: a single member is ready in a tenth of a second; a
    # cluster elects a new leader within about a second after one is killed.
    timing = ["--heartbeat-interval", "10", "--election-timeout", "100"]
    if size > 1:
        timing = ["--heartbeat-interval", "50", "--election-timeout", "500"]
    try:
        for m in cluster.members:
            m.data_dir.mkdir(parents=True, mode=0o700)
            with (base / f"etcd-{m.name}.log").open("ab") as log:
                m.proc = subprocess.Popen(
                    [
                        ETCD,
                        "--name", m.name,
                        "--data-dir", str(m.data_dir),
                        "--listen-client-urls", f"http://{m.endpoint}",
                        "--advertise-client-urls", f"http://{m.endpoint}",
                        "--listen-peer-urls", m.peer_url,
                        "--initial-advertise-peer-urls", m.peer_url,
                        "--initial-cluster", initial,
                        "--initial-cluster-state", "new",
                        "--initial-cluster-token", f"tsunagi-test-{ports[0]}",
                        "--logger", "zap",
                        "--log-level", "warn",
                        *timing,
                    ],
                    stdout=log,
                    stderr=log,
                )  # fmt: skip
        deadline = time.monotonic() + 30
        while not all(m.healthy() for m in cluster.members):
            for m in cluster.members:
                assert m.proc is not None and m.proc.poll() is None, (
                    base / f"etcd-{m.name}.log"
                ).read_text()[-3000:]
            assert time.monotonic() < deadline, "etcd did not become healthy"
            time.sleep(0.05)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def etcd_cluster(base: Path, size: int = 1) -> Iterator[Cluster]:
    """A fixture's body (``yield from``): a started cluster, stopped and removed afterwards."""
    cluster = start_cluster(base, size)
    try:
        yield cluster
    finally:
        cluster.stop()


@contextlib.asynccontextmanager
async def registry_on(cluster: Cluster, prefix: str, ttl: float) -> AsyncIterator[Registry]:
    """A registry on an etcd store of its own under ``prefix``, started as ``tsunagi up``
    starts one (a replica, as far as the registry goes)."""
    store = EtcdStore(cluster.endpoints, prefix)
    await store.open()
    try:
        registry = Registry(store, ttl=ttl)
        await registry.restore_leases()
        yield registry
    finally:
        await store.close()
