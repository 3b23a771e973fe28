"""Hosts for end-to-end tests: network namespaces on one private subnet.

Each host is a network namespace with its loopback up and one interface, ``eth0``, on
``10.211.X.0/24`` (X from the test's pid). The hosts' veth peers join a bridge that lives in
a namespace of its own, not in the root namespace: the machine's own interfaces, routes and
firewall are never touched, and nothing outside these namespaces can reach the subnet, so
two test runs cannot see each other's hosts even when their subnets collide.

Processes run in a host with ``ip netns exec`` (which execs the command: the pid of the
returned Popen is the command's own). :meth:`Hosts.close` stops every process started in
the hosts, by its pid, then deletes the namespaces, which takes their links and firewall
rules with them. Needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN), ``ip`` and ``iptables``
(``make tools`` installs them).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from .mesh import stop


class HostsUnavailable(Exception):
    """This machine cannot make network namespaces (the reason says why); tests skip."""


def unavailable_reason() -> str:
    """Why hosts cannot be made here ("" when they can)."""
    if sys.platform != "linux":
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "network namespaces need root (CAP_NET_ADMIN, CAP_SYS_ADMIN)"
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (make tools installs it)"
    return ""


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


_SERIAL = itertools.count()


@dataclass
class Host:
    """One namespace: its name and its address on the hosts' subnet."""

    name: str
    address: str


# Runs inside a host: one HTTP request, its result as JSON on stdout (an error as
# {"error": ...}), so a test in the root namespace sees what a client in the host sees.
_HTTP_CLIENT = """
import http.client, json, sys
host, port, method, path, headers, body, timeout = json.loads(sys.argv[1])
try:
    c = http.client.HTTPConnection(host, port, timeout=timeout)
    c.request(method, path, body=body, headers=headers)
    r = c.getresponse()
    data = r.read().decode(errors="replace")
    print(json.dumps({"status": r.status, "headers": {k.lower(): v for k, v in r.getheaders()},
                      "body": data}))
except OSError as e:
    print(json.dumps({"error": f"{type(e).__name__}: {e}"}))
"""


@dataclass
class Reply:
    """What an HTTP client in a host received: ``status`` 0 and ``error`` when it got no
    answer."""

    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: str = ""
    error: str = ""

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Hosts:
    """``count`` hosts on one bridge; a context manager that always cleans up."""

    count: int
    prefix: str = field(default_factory=lambda: f"ts{os.getpid()}-{next(_SERIAL)}")
    """Of the namespaces' names: unique per test process and per :class:`Hosts`."""
    hosts: list[Host] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _namespaces: list[str] = field(default_factory=list)

    @property
    def subnet(self) -> str:
        # 10.211.1.0/24 .. 10.211.250.0/24: private, and never routed outside the bridge.
        return f"10.211.{os.getpid() % 250 + 1}"

    def __enter__(self) -> Self:
        reason = unavailable_reason()
        if reason:
            raise HostsUnavailable(reason)
        sweep_orphans()
        try:
            self._create()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _netns(self, name: str) -> str:
        _ip("netns", "add", name)
        self._namespaces.append(name)
        _ip("-n", name, "link", "set", "lo", "up")
        return name

    def _create(self) -> None:
        bridge = self._netns(f"{self.prefix}-br")
        _ip("-n", bridge, "link", "add", "br0", "type", "bridge")
        _ip("-n", bridge, "link", "set", "br0", "up")
        for i in range(self.count):
            host = Host(self._netns(f"{self.prefix}-h{i}"), f"{self.subnet}.{i + 10}")
            # Made inside the host, its peer straight in the bridge's namespace: no link
            # ever appears in the root namespace.
            peer = f"h{i}"
            _ip("-n", host.name, "link", "add", "eth0", "type", "veth", "peer", "name", peer)
            _ip("-n", host.name, "link", "set", peer, "netns", bridge)
            _ip("-n", bridge, "link", "set", peer, "master", "br0")
            _ip("-n", bridge, "link", "set", peer, "up")
            _ip("-n", host.name, "addr", "add", f"{host.address}/24", "dev", "eth0")
            _ip("-n", host.name, "link", "set", "eth0", "up")
            self.hosts.append(host)

    def __getitem__(self, index: int) -> Host:
        return self.hosts[index]

    def popen(
        self, host: Host, args: Sequence[str], env: dict[str, str] | None = None, **kw: Any
    ) -> subprocess.Popen[bytes]:
        """Start ``args`` in ``host`` (with ``env``, else the test's environment); the
        process is stopped by :meth:`close` if the test has not stopped it."""
        proc = subprocess.Popen(
            ["ip", "netns", "exec", host.name, *args],
            env=env if env is not None else dict(os.environ),
            **kw,
        )
        self.procs.append(proc)
        return proc

    def run(
        self, host: Host, args: Sequence[str], timeout: float = 60, **kw: Any
    ) -> subprocess.CompletedProcess[str]:
        """Run ``args`` in ``host`` to completion; its output as text."""
        return subprocess.run(
            ["ip", "netns", "exec", host.name, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            **kw,
        )

    def http(
        self,
        host: Host,
        address: str,
        port: int,
        path: str = "/",
        headers: dict[str, str] | None = None,
        method: str = "GET",
        body: str | None = None,
        timeout: float = 10,
    ) -> Reply:
        """One HTTP request from a client in ``host`` to ``address:port``."""
        spec = json.dumps([address, port, method, path, headers or {}, body, timeout])
        done = self.run(host, [sys.executable, "-c", _HTTP_CLIENT, spec], timeout=timeout + 30)
        if done.returncode != 0:
            raise RuntimeError(f"HTTP client in {host.name} failed: {done.stderr}")
        return Reply(**json.loads(done.stdout))

    def cut(self, host: Host, address: str) -> None:
        """Drop every packet between ``host`` and ``address`` (both ways, in ``host``'s
        firewall), as a broken link would: nothing is refused, everything is lost."""
        for rule in self._rules(address):
            self._iptables(host, "-I", *rule)

    def heal(self, host: Host, address: str) -> None:
        """Undo :meth:`cut`."""
        for rule in self._rules(address):
            self._iptables(host, "-D", *rule)

    @staticmethod
    def _rules(address: str) -> list[tuple[str, ...]]:
        return [("OUTPUT", "-d", address, "-j", "DROP"), ("INPUT", "-s", address, "-j", "DROP")]

    def _iptables(self, host: Host, *args: str) -> None:
        done = self.run(host, ["iptables", "-w", *args], timeout=30)
        if done.returncode != 0:
            raise RuntimeError(f"iptables {' '.join(args)} in {host.name}: {done.stderr}")

    def close(self) -> None:
        """Stop every process started in the hosts (by pid), then delete the namespaces
        with their links and rules, each even when something before it failed. Safe to
        call twice. Raises, after trying them all, naming the namespaces left behind."""
        left: list[str] = []
        try:
            for proc in reversed(self.procs):
                stop(proc)
        finally:
            self.procs.clear()
            self.hosts.clear()
            for name in reversed(self._namespaces):
                try:
                    # Anything those processes left running in a host (an Envoy whose
                    # agent was killed): found by namespace, stopped by pid.
                    for pid in _pids_in(name):
                        _kill(pid)
                    _ip("netns", "del", name)
                except (OSError, RuntimeError, subprocess.SubprocessError):
                    left.append(name)
            self._namespaces.clear()
        if left:
            raise RuntimeError(f"namespaces left behind (delete with `ip netns del`): {left}")


_OURS = re.compile(r"ts(\d+)-\d+-(?:br|h\d+)")
"""The names :class:`Hosts` gives its namespaces, with the test process's pid."""


def sweep_orphans() -> list[str]:
    """Delete the namespaces of test processes that died without cleaning up (killed with
    -9), stopping by pid what still runs in them; return their names. A namespace whose
    process is alive (or whose pid was reused) is left alone."""
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=30)
    swept = []
    for line in listed.stdout.splitlines():
        name = line.split(" ", 1)[0]
        ours = _OURS.fullmatch(name)
        if ours is None or Path(f"/proc/{ours.group(1)}").exists():
            continue
        for pid in _pids_in(name):
            _kill(pid)
        with contextlib.suppress(RuntimeError):  # another sweeper got there first
            _ip("netns", "del", name)
            swept.append(name)
    return swept


def _pids_in(namespace: str) -> list[int]:
    done = subprocess.run(
        ["ip", "netns", "pids", namespace], capture_output=True, text=True, timeout=30
    )
    return [int(p) for p in done.stdout.split()] if done.returncode == 0 else []


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
        with contextlib.suppress(ChildProcessError):  # reap it if it is our child
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.02)
