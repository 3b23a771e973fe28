"""Transparent interception across hosts: ``tsunagi run --intercept``.

The control plane on host A; the echo service on host B and a client workload on host C, both
with ``--intercept``; each host a network namespace (:mod:`.hosts`). A plain HTTP client on
C, with no proxy settings at all, asks for ``http://echo:9080/``: C's sidecar answers the
name with a virtual IP, captures the connection, routes it as the mesh says and sends it
over mutual TLS to B, whose iptables hand it to B's inbound listener and B's app. A
VirtualService applied later is obeyed; an address the mesh does not know passes through;
when the agents exit, their iptables rules go with them.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tsunagi.agent import intercept

from .hosts import Host, Hosts, Reply, unavailable_reason
from .mesh import APPS, stop, wait_until
from .test_hosts import TRUST, Cluster, env, tsunagi_command

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(bool(unavailable_reason()), reason=unavailable_reason() or "-"),
]

VIPS = ipaddress.ip_network("240.240.0.0/16")
# The app on C: records the environment it was given (so the test can see it has no proxy
# settings), then idles; it never listens, like a pure client.
CLIENT_APP = (
    "import json, os, sys, time\n"
    "open(sys.argv[1], 'w').write(json.dumps(dict(os.environ)))\n"
    "time.sleep(3600)\n"
)
# A plain TCP client: one line to HOST:PORT, the line that comes back (or the error).
TCP_CLIENT = (
    "import socket, sys\n"
    "try:\n"
    "    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10) as s:\n"
    "        s.sendall(b'hello\\n')\n"
    "        print(s.makefile().readline().strip())\n"
    "except OSError as e:\n"
    "    print(f'error: {e}')\n"
)
# An app that fails: it records the nat table it runs under (argv[2], from iptables-save
# argv[1]), then exits 3.
FAILING_APP = (
    "import subprocess, sys\n"
    "saved = subprocess.run([sys.argv[1], '-t', 'nat'], capture_output=True, text=True)\n"
    "open(sys.argv[2], 'w').write(saved.stdout)\n"
    "sys.exit(3)\n"
)


@dataclass
class Mesh(Cluster):
    """:class:`~.test_hosts.Cluster`'s hosts, with intercepting agents on B and C."""

    agents: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def by_name(self, timeout: float = 10) -> Reply:
        """``GET http://echo:9080/`` from a plain client on C (``http.client``: no proxy)."""
        return self.hosts.http(self.client, "echo", 9080, "/", timeout=timeout)

    def nat(self, host: Host) -> str:
        done = self.hosts.run(host, ["iptables-save", "-t", "nat"])
        assert done.returncode == 0, done.stderr
        return done.stdout


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    state = Path(tmp_path_factory.mktemp("intercept")) / "state"
    state.mkdir()
    with Hosts(3) as hosts:
        m = Mesh(hosts, state, hosts[0], hosts[1], hosts[2])
        m.up()
        # A TCP service on A, behind a sidecar that does not intercept.
        with (state / "tcp-echo-a.log").open("ab") as log:
            run = tsunagi_command(
                "run", "--service", "tcp-echo", "--version", "v1", "--port", "9000/tcp",
                "--name", "tcp-echo-a", "--address", m.control.address, "--concurrency", "1",
                "--", sys.executable, str(APPS / "tcp_echo.py"),
            )  # fmt: skip
            hosts.popen(m.control, run, env=env(m), stdout=log, stderr=log)
        for host in (m.server, m.client):
            # A route for the virtual IPs (240.240.0.0/16), as a default route gives a pod:
            # without one the app's connect fails before iptables could redirect it.
            route = hosts.run(host, ["ip", "route", "add", "default", "dev", "eth0"])
            assert route.returncode == 0, route.stderr
        # A leftover of a crashed agent on B: replaced by B's agent, not doubled.
        leftover = "*nat\n:TSUNAGI_OUTPUT - [0:0]\n-A OUTPUT -p tcp -j TSUNAGI_OUTPUT\nCOMMIT\n"
        done = hosts.run(m.server, ["iptables-restore", "--noflush"], input=leftover)
        assert done.returncode == 0, done.stderr
        apps = {
            "echo-b": ("echo", "9080", [sys.executable, str(APPS / "echo.py")]),
            "client-c": (
                "client", "80",
                [sys.executable, "-c", CLIENT_APP, str(state / "client-env.json")],
            ),
        }  # fmt: skip
        for host, name in ((m.server, "echo-b"), (m.client, "client-c")):
            service, port, app = apps[name]
            with (state / f"{name}.log").open("ab") as log:
                run = tsunagi_command(
                    "run", "--intercept", "--service", service, "--port", port,
                    "--name", name, "--address", host.address, "--concurrency", "1", "--", *app,
                )  # fmt: skip
                m.agents[name] = hosts.popen(host, run, env=env(m), stdout=log, stderr=log)
        try:
            wait_until(lambda: m.outbound_port("client-c") > 0, 60, "client-c's proxy")
            wait_until(lambda: m.registered("echo-b"), 60, "echo-b registered")
            wait_until(lambda: m.registered("tcp-echo-a"), 60, "tcp-echo-a registered")
            wait_until(lambda: (state / "client-env.json").exists(), 30, "client-c's app")
        except AssertionError:
            raise AssertionError(m.logs()) from None
        yield m


def test_an_app_with_no_proxy_settings_reaches_a_service_by_name_through_both_sidecars(
    mesh: Mesh,
) -> None:
    seen = json.loads((mesh.state_dir / "client-env.json").read_text())
    assert not [k for k in seen if k.lower() in ("http_proxy", "https_proxy")], seen
    # C's sidecar answers the mesh name with a virtual IP.
    looked_up = mesh.hosts.run(mesh.client, ["getent", "ahostsv4", "echo"])
    assert looked_up.returncode == 0, looked_up
    address = looked_up.stdout.split()[0]
    assert ipaddress.ip_address(address) in VIPS, looked_up.stdout
    reply = mesh.by_name()
    assert reply.status == 200, reply
    body = reply.json()
    assert body["name"] == "echo-b"  # B's app answered
    # What the caller dialed reaches the app unchanged: the name and the service port.
    assert body["headers"].get("host") == "echo:9080", body["headers"]
    # Through both sidecars: C's originated mesh mTLS with C's identity, B's inbound
    # listener took it (Envoy writes XFCC only from a TLS peer that presented a certificate).
    xfcc = body["headers"].get("x-forwarded-client-cert", "")
    assert f"By={TRUST}/echo" in xfcc and f"URI={TRUST}/client" in xfcc, xfcc
    # B registered its app's own port: C's sidecar dialed B:9080, and B's iptables handed
    # the connection to B's inbound listener.
    echo = mesh.registered("echo-b")
    assert echo is not None and echo["target_port"] == 9080, echo
    assert echo["address"] == mesh.server.address


def test_a_virtual_service_applied_later_is_obeyed(mesh: Mesh) -> None:
    rule = (
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\n"
        "metadata: {name: echo-intercept, namespace: default}\n"
        "spec:\n  hosts: [echo]\n  http:\n"
        "  - headers: {response: {add: {x-intercepted: 'yes'}}}\n"
        "    route: [{destination: {host: echo}}]\n"
    )
    done = mesh.tsunagi(mesh.control, "apply", "-f", "-", stdin=rule)
    assert done.returncode == 0, done.stderr
    try:
        wait_until(
            lambda: mesh.by_name().headers.get("x-intercepted") == "yes", 60, "the VirtualService"
        )
        reply = mesh.by_name()
        assert reply.status == 200 and reply.json()["name"] == "echo-b", reply
    finally:
        delete = ("delete", "virtualservice", "echo-intercept", "-n", "default")
        deleted = mesh.tsunagi(mesh.control, *delete)
        assert deleted.returncode == 0, deleted.stderr


def test_a_tcp_service_is_reached_by_name_through_its_virtual_ip(mesh: Mesh) -> None:
    # C's capture listener sends the connection to tcp-echo's cluster: over mesh mTLS to
    # A's sidecar (which does not intercept) and its app, which answers with its version.
    done = mesh.hosts.run(mesh.client, [sys.executable, "-c", TCP_CLIENT, "tcp-echo", "9000"])
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "v1 hello", done.stdout


def test_a_second_intercepting_agent_in_a_namespace_is_refused(mesh: Mesh) -> None:
    run = tsunagi_command(
        "run", "--intercept", "--service", "other", "--port", "8080", "--name", "other-b",
        "--address", mesh.server.address, "--", sys.executable, str(APPS / "idle.py"),
    )  # fmt: skip
    done = mesh.hosts.run(mesh.server, run, env=env(mesh), timeout=120)
    assert done.returncode == 1, done
    assert "already intercepts this network namespace" in done.stderr, done.stderr
    # B's own rules are untouched, and its workload is still reached.
    assert f"tsunagi-agent-pid={mesh.agents['echo-b'].pid}" in mesh.nat(mesh.server)
    reply = mesh.by_name()
    assert reply.status == 200 and reply.json()["name"] == "echo-b", reply


def test_an_address_the_mesh_does_not_know_passes_through(mesh: Mesh) -> None:
    # B's metrics endpoint on B's address is no service: C's capture listener has no chain
    # for it, and ALLOW_ANY sends it to where the app was going.
    echo = mesh.registered("echo-b")
    assert echo is not None
    reply = mesh.hosts.http(
        mesh.client, mesh.server.address, echo["metrics_port"], "/stats/prometheus"
    )
    assert reply.status == 200, reply
    # Exactly that address answered: B's own metrics, as the server of the echo requests
    # above (C's would report them as their source; A serves no echo).
    series = [s for s in reply.body.splitlines() if s.startswith("istio_requests_total{")]
    assert any(
        'reporter="destination"' in s and 'destination_canonical_service="echo"' in s
        for s in series
    ), reply.body[-3000:]


def test_the_rules_are_in_place_while_the_agents_run_and_gone_after(mesh: Mesh) -> None:
    for host in (mesh.server, mesh.client):
        rules = mesh.nat(host)
        assert "-A TSUNAGI_REDIRECT -p tcp -j REDIRECT" in rules, rules
        # B's leftover was replaced: one jump, not two.
        jumps = [r for r in rules.splitlines() if r.startswith("-A OUTPUT -p tcp")]
        assert len(jumps) == 1 and "-j TSUNAGI_OUTPUT" in jumps[0], rules
    for name in ("client-c", "echo-b"):
        proc = mesh.agents[name]
        stop(proc)
        assert proc.returncode == 0 or proc.returncode == 143, (name, proc.returncode)
    for host in (mesh.server, mesh.client):
        assert "TSUNAGI" not in mesh.nat(host)


def test_the_rules_go_when_the_app_fails_too(mesh: Mesh) -> None:
    stop(mesh.agents["echo-b"])  # B's own agent gone (already, after the test above)
    seen = mesh.state_dir / "nat-under-failing-app.txt"
    save = shutil.which("iptables-save")
    assert save is not None
    run = tsunagi_command(
        "run", "--intercept", "--service", "failing", "--port", "8080", "--name", "failing-b",
        "--address", mesh.server.address, "--concurrency", "1",
        "--", sys.executable, "-c", FAILING_APP, save, str(seen),
    )  # fmt: skip
    done = mesh.hosts.run(mesh.server, run, env=env(mesh), timeout=120)
    assert done.returncode == 3, done  # the app's own exit code
    # The rules were there while the app ran, and went with the agent.
    assert "-A TSUNAGI_REDIRECT -p tcp -j REDIRECT" in seen.read_text()
    assert "TSUNAGI" not in mesh.nat(mesh.server)


def test_intercept_is_refused_in_the_hosts_own_network_namespace() -> None:
    if not intercept.in_host_namespace():
        pytest.skip("this test does not run in the machine's own network namespace")
    plain = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    plain.update(TSUNAGI_SERVER="http://127.0.0.1:9", TSUNAGI_TOKEN="unused")
    done = subprocess.run(
        tsunagi_command("run", "--intercept", "--service", "x", "--", "true"),
        capture_output=True,
        text=True,
        env=plain,
        timeout=60,
    )
    assert done.returncode == 1, done
    assert "network namespace of its own" in done.stderr, done.stderr
