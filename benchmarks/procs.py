"""Processes for benchmarks: start, find, measure (CPU, private memory) and stop by pid."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from tsunagi.agent.ports import free_ports

CLK_TCK = os.sysconf("SC_CLK_TCK")
REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A loopback port to listen on, outside the range the kernel draws client ports from."""
    return free_ports(1)[0]


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


class Procs:
    """Every process a benchmark starts; :meth:`stop_all` ends them by pid, newest first."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.started: list[subprocess.Popen[bytes]] = []

    def start(
        self,
        name: str,
        argv: Sequence[str],
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        log = (self.logdir / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            list(argv), stdout=log, stderr=log, env=env, stdin=subprocess.DEVNULL, cwd=cwd
        )
        self.started.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(self.started):
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.started.clear()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def thread_cpu_seconds(pid: int) -> dict[int, float]:
    """CPU time of each live thread of ``pid``, by thread id.

    From the scheduler's nanosecond count (``/proc/PID/task/TID/sched``) where the kernel
    exposes it: a 4 s measurement of a proxy is only ~40 clock ticks, too coarse to compare
    two proxies within a few per cent. Falls back to ticks (``stat``) elsewhere.
    """
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out[int(task.name)] = _task_cpu_seconds(task)
        except (OSError, ValueError):
            continue  # the thread ended meanwhile
    return out


def _task_cpu_seconds(task: Path) -> float:
    try:
        for line in (task / "sched").read_text().splitlines():
            if line.startswith("se.sum_exec_runtime"):
                return float(line.split(":", 1)[1]) / 1000  # milliseconds
    except FileNotFoundError:
        pass
    fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def cpu_used(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds between two :func:`thread_cpu_seconds` readings (threads started
    meanwhile count from zero)."""
    return sum(t - before.get(tid, 0.0) for tid, t in after.items())


def cmdline(pid: int) -> list[str]:
    """The argument vector of a running process."""
    return Path(f"/proc/{pid}/cmdline").read_text().rstrip("\0").split("\0")


def private_bytes(pid: int) -> int:
    """Memory only this process holds (Private_Clean + Private_Dirty): what it really costs."""
    total = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith(("Private_Clean:", "Private_Dirty:")):
            total += int(line.split()[1]) * 1024
    return total


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def children(pid: int, comm: str | None = None) -> list[int]:
    """Live (not zombie) children of ``pid``, optionally only those whose command name is
    ``comm``; the e2e tests use it too."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        # Fields after the command name, which is in parentheses and may hold anything.
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == pid and state != "Z" and (comm is None or name == comm):
            out.append(int(entry.name))
    return out


def tsunagi(*args: str) -> list[str]:
    return [sys.executable, "-m", "tsunagi.cli.main", *args]


def envoy_command(config: Path) -> list[str]:
    """How every benchmark Envoy runs: one worker thread, its own base id, quiet."""
    return [
        envoy_binary(),
        "-c",
        str(config),
        "--concurrency",
        "1",
        "--use-dynamic-base-id",
        "--log-level",
        "error",
    ]


def envoy_binary() -> str:
    from tsunagi.agent.envoy import envoy_binary as find

    return find()


def tsunagi_env(api_port: int, state: Path) -> dict[str, str]:
    """The environment for `tsunagi` processes: this control plane, no HTTP proxies."""
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env.update(
        TSUNAGI_SERVER=f"http://127.0.0.1:{api_port}",
        TSUNAGI_STATE_DIR=str(state),
        PYTHONPATH=str(REPO),
    )
    return env
