"""A real etcd for the replicated scale run: one member on loopback, its data under the
benchmark's workdir, started and stopped here by its pid.

Debian's ``etcd`` (package etcd-server; ``make tools`` installs it) with its default
heartbeat and election timing and its default fsync of every write, as a production member
runs: the benchmark measures what replicas on a real etcd cost, not a tuned one. Only the
cap on operations per transaction is raised (:data:`MAX_TXN_OPS`).
(tests/etcd_fixtures.py starts members for tests; it is not imported here because it
depends on pytest and tunes timing for fast failover tests.)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import time
from pathlib import Path

import aiohttp

from tsunagi.agent.ports import free_ports

HOST = "127.0.0.1"
MAX_TXN_OPS = 1024
"""etcd's cap on operations per transaction (``--max-txn-ops``, 128 by default). One
``tsunagi apply`` is one transaction, and the full mesh's rules are 200 resources in one
apply (as the single-process runs apply them); the control plane's error tells an operator
the same: raise it, or apply fewer resources at a time."""


def binary() -> str | None:
    """The ``etcd`` program, or None when it is not installed."""
    return shutil.which("etcd")


def unavailable() -> str | None:
    """Why a real etcd cannot run here (None: it can)."""
    if binary() is None:
        return "etcd is not installed (`make tools` installs Debian's etcd-server)"
    return None


class Etcd:
    """One etcd member; :attr:`url` is the ``tsunagi up --store`` value for it."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.data_dir = base / "data"
        self.log_path = base / "etcd.log"
        self.client_port, self.peer_port = free_ports(2)
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def endpoint(self) -> str:
        return f"{HOST}:{self.client_port}"

    def url(self, prefix: str = "") -> str:
        """``etcd://HOST:PORT[/PREFIX]``."""
        return f"etcd://{self.endpoint}" + (f"/{prefix.strip('/')}" if prefix else "")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self, timeout: float = 30) -> None:
        """Start the member and wait until it reports healthy (it has elected itself)."""
        exe = binary()
        if exe is None:
            raise RuntimeError(unavailable())
        self.data_dir.mkdir(parents=True, mode=0o700)
        peer = f"http://{HOST}:{self.peer_port}"
        with self.log_path.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                exe,
                "--name", "bench",
                "--data-dir", str(self.data_dir),
                "--listen-client-urls", f"http://{self.endpoint}",
                "--advertise-client-urls", f"http://{self.endpoint}",
                "--listen-peer-urls", peer,
                "--initial-advertise-peer-urls", peer,
                "--initial-cluster", f"bench={peer}",
                "--initial-cluster-state", "new",
                "--initial-cluster-token", f"tsunagi-bench-{self.client_port}",
                "--logger", "zap",
                "--log-level", "warn",
                "--max-txn-ops", str(MAX_TXN_OPS),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession(trust_env=False) as session:
            while not await self._healthy(session):
                if self.proc.returncode is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"etcd did not become healthy:\n{self.log_tail()}")
                await asyncio.sleep(0.05)

    async def _healthy(self, session: aiohttp.ClientSession) -> bool:
        try:
            url = f"http://{self.endpoint}/health"
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=1)) as r:
                body = await r.json(content_type=None)
                return r.status == 200 and body.get("health") == "true"
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return False

    async def stop(self) -> None:
        """Stop the member by its pid (killed if it does not go in time); remove its data."""
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 15)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.proc.pid, signal.SIGKILL)
                await self.proc.wait()
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text()[-chars:] if self.log_path.exists() else ""
