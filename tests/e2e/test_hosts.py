"""A mesh across hosts: the control plane on host A (``tsunagi up --address``), an echo
service on host B (``tsunagi run --address``), a client sidecar on host C, each host a
network namespace (:mod:`.hosts`) on a private bridge.

What a client on C sees: the answer of B's app, over mesh mutual TLS; with C cut off from
the control plane it keeps being answered on its last config; healed, it gets the change
it missed. The hosts themselves go away with all they held, even when a test fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .hosts import Host, Hosts, Reply, sweep_orphans, unavailable_reason
from .mesh import APPS, wait_until

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(bool(unavailable_reason()), reason=unavailable_reason() or "-"),
]

API, XDS = 15014, 15012
TRUST = "spiffe://cluster.local/ns/default/sa"
ECHO = "echo:9080"


@dataclass
class Cluster:
    hosts: Hosts
    state_dir: Path
    control: Host
    server: Host
    client: Host

    def api(self, method: str, path: str, body: str | None = None) -> Any:
        """The control plane's API, called from its own host."""
        token = (self.state_dir / "token").read_text().strip()
        reply = self.hosts.http(
            self.control,
            self.control.address,
            API,
            path,
            {"Authorization": f"Bearer {token}"},
            method,
            body,
        )
        assert reply.status == 200, reply
        return reply.json()

    def tsunagi(self, host: Host, *args: str, stdin: str = "") -> Any:
        """``tsunagi ARGS`` run in ``host`` against the control plane on A."""
        return self.hosts.run(host, tsunagi_command(*args), input=stdin, env=env(self))

    def up(self) -> None:
        """Start ``tsunagi up`` on A (stopped with the hosts) and wait until it answers."""
        state = self.state_dir
        with (state / "control-plane.log").open("ab") as log:
            up = tsunagi_command(
                "up", "--state-dir", str(state), "--address", self.control.address,
                "--api-port", str(API), "--xds-port", str(XDS),
            )  # fmt: skip
            self.hosts.popen(self.control, up, env=env(self), stdout=log, stderr=log)
        wait_until(lambda: (state / "token").exists() and self.healthy(), 30, "the control plane")

    def healthy(self) -> bool:
        token = (self.state_dir / "token").read_text().strip()
        auth = {"Authorization": f"Bearer {token}"}
        reply = self.hosts.http(
            self.control, self.control.address, API, "/healthz", auth, timeout=2
        )
        return reply.status == 200

    def registered(self, name: str) -> dict[str, Any] | None:
        """The registration of instance ``name`` (None before it is registered)."""
        items = self.api("GET", "/v1/resources?kind=workloads")["items"]
        return next((i["document"] for i in items if i["name"] == name), None)

    def logs(self) -> str:
        """The tails of every log in the state directory (for a failed start)."""
        logs = {p.name: p.read_text()[-3000:] for p in self.state_dir.glob("*.log")}
        return json.dumps(logs, indent=1)

    def outbound_port(self, name: str) -> int:
        """The outbound port of proxy ``name`` once it has ACKed its config, else 0."""
        for p in self.api("GET", "/v1/proxies")["proxies"]:
            if p["id"] == f"{name}.default" and p["synced"]:
                return int(p["outbound_port"])
        return 0

    def call(self, port: int, timeout: float = 10) -> Reply:
        """``GET http://echo:9080/`` as the app on C sends it: through its sidecar."""
        return self.hosts.http(self.client, "127.0.0.1", port, "/", {"Host": ECHO}, timeout=timeout)


def env(cluster: Cluster) -> dict[str, str]:
    """The environment of every tsunagi process in the hosts."""
    out = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    out.pop("TSUNAGI_TOKEN", None)
    out["TSUNAGI_SERVER"] = f"http://{cluster.control.address}:{API}"
    out["TSUNAGI_STATE_DIR"] = str(cluster.state_dir)  # the token file: one file system
    return out


def tsunagi_command(*args: str) -> list[str]:
    """The command line of ``tsunagi ARGS``."""
    return [sys.executable, "-m", "tsunagi.cli.main", *args]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    state = Path(tmp_path_factory.mktemp("hosts")) / "state"
    state.mkdir()
    with Hosts(3) as hosts:
        c = Cluster(hosts, state, hosts[0], hosts[1], hosts[2])
        c.up()
        for host, name, args in (
            (c.server, "echo-b", ("--service", "echo", "--port", "9080")),
            (c.client, "client-c", ("--service", "client", "--port", "80")),
        ):
            app = "echo.py" if name == "echo-b" else "idle.py"
            with (state / f"{name}.log").open("ab") as log:
                run = tsunagi_command(
                    "run", *args, "--name", name, "--address", host.address,
                    "--concurrency", "1", "--", sys.executable, str(APPS / app),
                )  # fmt: skip
                hosts.popen(host, run, env=env(c), stdout=log, stderr=log)
        try:
            wait_until(lambda: c.outbound_port("client-c") > 0, 60, "client-c's proxy")
            wait_until(lambda: c.registered("echo-b"), 60, "echo-b registered")
        except AssertionError:
            raise AssertionError(c.logs()) from None
        yield c


def test_a_client_on_one_host_reaches_a_service_on_another_over_mesh_mtls(
    cluster: Cluster,
) -> None:
    echo = cluster.registered("echo-b")
    assert echo is not None and echo["address"] == cluster.server.address, echo
    reply = cluster.call(cluster.outbound_port("client-c"))
    assert reply.status == 200, reply
    body = reply.json()
    assert body["name"] == "echo-b"  # B's app answered; C has no echo of its own
    # B's inbound listener took C's connection over mutual TLS: Envoy writes the peer's
    # certificate as XFCC only from a TLS connection that presented one.
    xfcc = body["headers"].get("x-forwarded-client-cert", "")
    assert f"By={TRUST}/echo" in xfcc and f"URI={TRUST}/client" in xfcc, xfcc
    # B's metrics endpoint is on B's address too, where the control plane on A scrapes it;
    # its inbound listener counted the request as mutual TLS.
    metrics = cluster.hosts.http(
        cluster.control, cluster.server.address, echo["metrics_port"], "/stats/prometheus"
    )
    assert metrics.status == 200, metrics
    assert any(
        line.startswith("istio_requests_total{")
        and 'reporter="destination"' in line
        and 'connection_security_policy="mutual_tls"' in line
        for line in metrics.body.splitlines()
    ), metrics.body[-3000:]
    # B's inbound listens on B's address (where C's sidecar connected), not on loopback.
    loop = cluster.hosts.http(cluster.server, "127.0.0.1", echo["target_port"], timeout=2)
    assert loop.status == 0 and "refused" in loop.error, loop


def test_cut_off_from_the_control_plane_a_sidecar_keeps_serving_then_catches_up(
    cluster: Cluster,
) -> None:
    port = cluster.outbound_port("client-c")
    control = cluster.control.address
    header = "x-hosts-test"

    def rule(value: str) -> str:
        return (
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\n"
            "metadata: {name: echo-hosts, namespace: default}\n"
            "spec:\n  hosts: [echo]\n  http:\n"
            f"  - headers: {{response: {{add: {{{header}: {value}}}}}}}\n"
            "    route: [{destination: {host: echo}}]\n"
        )

    cluster.hosts.cut(cluster.client, control)
    try:
        lost = cluster.hosts.http(cluster.client, control, API, "/healthz", timeout=2)
        assert lost.status == 0, lost  # the cut holds: C cannot reach the control plane
        done = cluster.tsunagi(cluster.control, "apply", "-f", "-", stdin=rule("during-cut"))
        assert done.returncode == 0, done.stderr
        for _ in range(5):
            reply = cluster.call(port)
            assert reply.status == 200 and reply.json()["name"] == "echo-b", reply
            assert header not in reply.headers, reply  # its last config: the change never came
    finally:
        cluster.hosts.heal(cluster.client, control)
    try:
        # Healed, it gets the change it missed, with nothing applied since.
        wait_until(
            lambda: cluster.call(port).headers.get(header) == "during-cut",
            120,
            "the rule applied during the cut",
        )
        # ... and the control plane counts it in sync again: apply --wait waits for it.
        done = cluster.tsunagi(
            cluster.control, "apply", "-f", "-", "--wait", "--timeout", "90",
            stdin=rule("after-heal"),
        )  # fmt: skip
        assert done.returncode == 0, done.stderr + done.stdout
        wait_until(
            lambda: cluster.call(port).headers.get(header) == "after-heal", 30, "the new rule"
        )
    finally:
        delete = cluster.tsunagi(
            cluster.control, "delete", "virtualservice", "echo-hosts", "-n", "default"
        )
        assert delete.returncode == 0, delete.stderr


def _namespaces(prefix: str) -> list[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in listed.splitlines() if line.startswith(prefix + "-")]


def _alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie, killed and not reaped yet, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def test_hosts_go_away_with_everything_started_in_them_even_when_the_test_fails() -> None:
    with pytest.raises(RuntimeError, match="the test failed"), Hosts(2) as hosts:
        prefix = hosts.prefix
        assert len(_namespaces(prefix)) == 3  # two hosts and the bridge's
        sleeper = hosts.popen(hosts[0], ["sleep", "300"])
        # Left behind by a process that exited: not the test's child, found by namespace.
        shell = "sleep 300 </dev/null >/dev/null 2>&1 & echo $!"
        orphan = int(hosts.run(hosts[1], ["sh", "-c", shell]).stdout)
        assert _alive(orphan)
        # Host 1 reaches host 0 over the bridge: refused (nothing listens), not unreachable.
        knock = hosts.http(hosts[1], hosts[0].address, 9, timeout=5)
        assert "refused" in knock.error, knock
        raise RuntimeError("the test failed")
    assert sleeper.poll() is not None and not _alive(orphan)
    assert _namespaces(prefix) == []  # the bridge's too, with every link in them


def test_hosts_made_in_part_go_away_when_making_the_rest_fails() -> None:
    hosts = Hosts(2)
    taken = f"{hosts.prefix}-h1"  # the second host's name, already in use
    subprocess.run(["ip", "netns", "add", taken], check=True, capture_output=True)
    try:
        with pytest.raises(RuntimeError, match=taken), hosts:
            pass
        assert _namespaces(hosts.prefix) == [taken]  # only the one this test made
    finally:
        subprocess.run(["ip", "netns", "del", taken], check=True, capture_output=True)


def test_namespaces_of_a_test_process_that_died_are_swept() -> None:
    """A test killed with -9 leaves its namespaces (and what ran in them); the next
    :class:`Hosts` deletes them, stopping their processes, and leaves live ones alone."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], text=True,
                          capture_output=True, check=True).stdout.strip()  # fmt: skip
    orphan = f"ts{dead}-0-h0"
    subprocess.run(["ip", "netns", "add", orphan], check=True)
    sleeper = subprocess.Popen(["ip", "netns", "exec", orphan, "sleep", "300"])
    try:
        wait_until(lambda: str(sleeper.pid) in _netns_pids(orphan), what="the orphan's process")
        with Hosts(1) as hosts:  # sweeps on entry
            listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
            assert orphan not in listed.stdout
            assert hosts[0].name in listed.stdout  # a live test's own: kept
            assert sweeper_left_alone(hosts[0].name)
        # Killed by the sweep (which reaps its children too, so no exit status is left).
        sleeper.wait(timeout=10)
        assert not Path(f"/proc/{sleeper.pid}").exists()
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
            sleeper.wait()
        subprocess.run(["ip", "netns", "del", orphan], capture_output=True)


def sweeper_left_alone(name: str) -> bool:
    """A second sweep while ``name``'s test runs does not touch it."""
    sweep_orphans()
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    return name in listed.stdout


def _netns_pids(name: str) -> list[str]:
    done = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True)
    return done.stdout.split()
