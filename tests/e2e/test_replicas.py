"""Several control planes on one etcd (`tsunagi up --store etcd://... --token-file F
--workload-token-key F --ca-cert F --ca-key F` twice, separate state directories): a replica
with another CA or key refuses to start and says which flags to pass; `apply --wait` through
one replica waits for proxies connected to the other; proxy-status, proxy-config secret and
the dashboard's proxy list through either cover every proxy and name its replica; and a
replica killed with -9 under load costs no request, its proxies reconnect to the survivor,
and config applied there reaches them."""

from __future__ import annotations

import http.client
import json
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.certs import make_ca
from tests.etcd_fixtures import Cluster, etcd_cluster

from .mesh import Mesh, Traffic, Workload, started_replicas, wait_until
from .rules import SUBSETS, all_to

pytestmark = pytest.mark.e2e


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[Cluster]:
    yield from etcd_cluster(tmp_path / "etcd")


@pytest.fixture
def shared(tmp_path: Path) -> dict[str, Path]:
    """What every replica is given: the admin token, the workload-token key, the CA."""
    d = tmp_path / "shared"
    d.mkdir(mode=0o700)
    ca = make_ca("replicas test CA")
    files = {
        "token": secrets.token_urlsafe(24).encode() + b"\n",
        "key": secrets.token_bytes(32),
        "cert": ca.cert,
        "ca-key": ca.key,
    }
    out = {}
    for name, data in files.items():
        out[name] = d / name
        out[name].write_bytes(data)
        out[name].chmod(0o600)
    return out


def flags(etcd: Cluster, shared: dict[str, Path]) -> tuple[str, ...]:
    return (
        "--store", etcd.url + "/replicas",
        "--token-file", str(shared["token"]),
        "--workload-token-key", str(shared["key"]),
        "--ca-cert", str(shared["cert"]), "--ca-key", str(shared["ca-key"]),
    )  # fmt: skip


@pytest.fixture
def replicas(tmp_path: Path, etcd: Cluster, shared: dict[str, Path]) -> Iterator[list[Mesh]]:
    yield from started_replicas(tmp_path, 2, *flags(etcd, shared))


def get(mesh: Mesh, path: str, token: str | None = None) -> tuple[int, Any]:
    """``GET path`` on this replica's API: (status, JSON body)."""
    c = http.client.HTTPConnection("127.0.0.1", mesh.api_port, timeout=60)
    try:
        c.request("GET", path, headers={"Authorization": f"Bearer {token or mesh.token()}"})
        resp = c.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        c.close()


def replica_of(via: Mesh, workload: Workload) -> str:
    """The replica (its API address) ``workload``'s proxy is connected to, as ``via``'s
    proxy-status says."""
    status, reply = get(via, "/v1/proxies")
    assert status == 200, reply
    for p in reply["proxies"]:
        if p["id"] == f"{workload.name}.default":
            return str(p["replica"])
    raise AssertionError(f"{workload.name} is not in {reply}")


def shown_replica(via: Mesh, workload: Workload, every_replica_answers: bool = True) -> str:
    """The REPLICA column of ``workload``'s line in ``tsunagi proxy-status`` through ``via``
    (without a warning that a replica did not answer, unless one may not)."""
    shown = via.cli("proxy-status", "--server", via.url)
    assert shown.returncode == 0, shown
    assert shown.stderr == "" or not every_replica_answers, shown
    lines = shown.stdout.splitlines()
    assert lines[0].split()[-1] == "REPLICA", shown.stdout
    return next(x for x in lines if x.startswith(workload.name)).split()[-1]


def named(replicas: list[Mesh], replica: str) -> Mesh:
    return next(m for m in replicas if replica == f"127.0.0.1:{m.api_port}")


def routed_client(replicas: list[Mesh]) -> tuple[Workload, Mesh, Mesh]:
    """reviews v1 and v2 and a client, all sent to v1 (waited for): ``(the client, the
    replica its proxy is connected to, the other replica)``."""
    a, b = replicas
    a.run("reviews", "v1")
    a.run("reviews", "v2")
    client = a.client()
    assert a.apply(SUBSETS + "---" + all_to("v1"), "--wait").returncode == 0
    home = named(replicas, replica_of(a, client))
    return client, home, b if home is a else a


def versions(client: Workload, n: int) -> set[str]:
    seen = set()
    for _ in range(n):
        status, body = client.get("reviews")
        assert status == 200, body
        assert isinstance(body, dict), body
        seen.add(body["version"])
    return seen


def test_a_replica_with_another_ca_or_key_refuses_to_start(
    tmp_path: Path, etcd: Cluster, shared: dict[str, Path], replicas: list[Mesh]
) -> None:
    a = replicas[0]
    store = ("--store", etcd.url + "/replicas", "--token-file", str(shared["token"]))
    # Its own CA and key (the state directory's): both named, with the flags to pass.
    other = Mesh(tmp_path / "other", up_args=store)
    other.state_dir.mkdir()
    result = subprocess.run(
        other.up_command(), env=other.env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1, result.stderr
    assert any(f"cannot join replica 127.0.0.1:{m.api_port}" in result.stderr for m in replicas)
    assert "--ca-cert FILE --ca-key FILE" in result.stderr
    assert "--workload-token-key FILE" in result.stderr
    # The same CA, another key: only the key is named.
    same_ca = ("--ca-cert", str(shared["cert"]), "--ca-key", str(shared["ca-key"]))
    keyless = Mesh(tmp_path / "keyless", up_args=(*store, *same_ca))
    keyless.state_dir.mkdir()
    result = subprocess.run(
        keyless.up_command(), env=keyless.env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1, result.stderr
    assert "--workload-token-key FILE" in result.stderr
    assert "--ca-cert" not in result.stderr
    # Neither joined: the replicas still list each other only.
    status, reply = get(a, "/v1/proxies")
    assert status == 200, reply
    assert sorted(r["name"] for r in reply["replicas"]) == sorted(
        f"127.0.0.1:{m.api_port}" for m in replicas
    )


def test_a_token_file_others_may_read_or_an_empty_one_is_refused(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("secret-token\n")
    token.chmod(0o644)
    m = Mesh(tmp_path / "state", up_args=("--token-file", str(token)))
    m.state_dir.mkdir()
    result = subprocess.run(m.up_command(), env=m.env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stderr
    assert f"--token-file {token}: every user of this host may read" in result.stderr
    assert f"chmod 600 {token}" in result.stderr
    token.write_text("\n")
    token.chmod(0o600)
    result = subprocess.run(m.up_command(), env=m.env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stderr
    assert f"--token-file {token} is empty" in result.stderr
    missing = tmp_path / "absent"
    m.up_args = ("--token-file", str(missing))
    result = subprocess.run(m.up_command(), env=m.env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stderr
    assert f"--token-file {missing}: cannot read it" in result.stderr
    assert not (m.state_dir / "token").exists()  # nothing was started


def test_wait_and_proxy_status_through_one_replica_cover_the_others_proxies(
    replicas: list[Mesh],
) -> None:
    a, b = replicas
    client, home, other = routed_client(replicas)
    # Through the replica the client's proxy is NOT connected to.
    result = other.cli("apply", "-f", "-", "--wait", "--server", other.url, stdin=all_to("v2"))
    assert result.returncode == 0, result.stderr
    assert "all 3 proxies in sync" in result.stdout, result.stdout
    # The wait covered the client's proxy on the other replica: it routes by the new rule
    # at once.
    assert versions(client, 20) == {"v2"}
    # The wait's own answer names the client's proxy, synced, on its replica.
    revision = get(other, "/healthz")[1]["revision"]
    status, reply = get(other, f"/v1/wait?revision={revision}&timeout=10")
    assert status == 200 and reply["complete"], reply
    mine = [p for p in reply["proxies"] if p["id"] == f"{client.name}.default"]
    assert mine and mine[0]["synced"] and mine[0]["replica"] == f"127.0.0.1:{home.api_port}"
    # proxy-status through either replica lists all three, each with its replica.
    for via in (a, b):
        for w in a.workloads:
            assert shown_replica(via, w) == replica_of(via, w)
    # A workload token made through one replica is good at the other (the shared key).
    made = a.cli("token", "create", "--namespace", "default", "--service-account", "web")
    assert made.returncode == 0, made.stderr
    status, reply = get(b, "/v1/bootstrap", token=made.stdout.strip())
    assert status == 200, reply
    assert [r["port"] for r in reply["xdsReplicas"]] == [b.xds_port, a.xds_port]


def test_a_replica_killed_under_load_loses_no_request_and_its_proxies_move(
    replicas: list[Mesh],
) -> None:
    a, _ = replicas
    client, home, survivor = routed_client(replicas)
    moved = f"127.0.0.1:{survivor.api_port}"
    with Traffic(client.outbound_port, "reviews") as traffic:
        wait_until(lambda: len(traffic.results) > 50, what="traffic before the kill")
        home.kill()
        # The client's proxy reconnects to the survivor, which then lists it as its own.
        wait_until(
            lambda: any(
                p["id"] == f"{client.name}.default" and p["synced"]
                for p in get(survivor, "/v1/proxies?local=true")[1]["proxies"]
            ),
            timeout=30,
            what="the client's proxy on the surviving replica",
        )
        # (The dead one may still be listed, and named as not answering, for its lease's
        # last seconds.)
        assert shown_replica(survivor, client, every_replica_answers=False) == moved
        # The servers' proxies too, if they were on the dead replica.
        wait_until(lambda: survivor.all_synced(3), timeout=30, what="every proxy on the survivor")
        # A change applied by a client that lists the dead replica first goes on to the
        # survivor and reaches every proxy (the wait outlasts the dead replica's
        # registration, then counts the proxies that moved).
        servers = f"{home.url},{survivor.url}"
        result = home.cli("apply", "-f", "-", "--wait", "--server", servers, stdin=all_to("v2"))
        assert result.returncode == 0, result.stdout + result.stderr
        assert "all 3 proxies in sync" in result.stdout, result.stdout
        mark = len(traffic.results)
        wait_until(lambda: len(traffic.results) > mark + 50, what="traffic after the apply")
    assert traffic.failures() == [], traffic.failures()[:5]
    assert traffic.seen_after(mark) == {"reviews/v2"}
    assert versions(client, 20) == {"v2"}
    # Every workload is still registered (heartbeats moved to the survivor too).
    names = sorted(w.name for w in a.workloads if w is not client)  # the client serves none
    assert sorted(survivor.workload_names()) == names, survivor.log()


def test_proxy_config_secret_through_a_replica_the_proxy_is_not_connected_to(
    replicas: list[Mesh],
) -> None:
    a, _ = replicas
    workload = a.run("reviews", "v1")
    home = named(replicas, replica_of(a, workload))
    other = next(m for m in replicas if m is not home)
    proxy = f"{workload.name}.default"
    # The other replica asks its peers: the answer is the home replica's, naming it.
    shown = other.cli("proxy-config", "secret", proxy, "-o", "json", "--server", other.url)
    assert shown.returncode == 0, shown.stderr
    reply = json.loads(shown.stdout)
    assert reply["replica"] == f"127.0.0.1:{home.api_port}"
    # The same rows as the home replica gives for its own proxy (its workload certificate's
    # rows when that replica also signed it: the record of what was issued is per replica).
    local = home.cli("proxy-config", "secret", proxy, "-o", "json", "--server", home.url)
    assert local.returncode == 0, local.stderr
    assert json.loads(local.stdout)["secrets"] == reply["secrets"]
    # A proxy no replica has: said so.
    missing = other.cli("proxy-config", "secret", "nobody.default", "--server", other.url)
    assert missing.returncode == 1
    assert "is connected to this replica or any other" in missing.stderr, missing.stderr
    # The other replica's dashboard lists the proxy too, on its replica.
    listed = dashboard_proxies(other)
    assert [p["replica"] for p in listed if p["id"] == proxy] == [f"127.0.0.1:{home.api_port}"]
    # Each dashboard has proxy-status's rows, mTLS modes included, its own proxies' too.
    status, reply = get(home, "/v1/proxies")
    assert status == 200, reply
    (row,) = [p for p in reply["proxies"] if p["id"] == proxy]
    assert row["mtls"]
    for mesh in replicas:
        assert [p["mtls"] for p in dashboard_proxies(mesh) if p["id"] == proxy] == [row["mtls"]]


def dashboard_proxies(mesh: Mesh) -> list[dict[str, Any]]:
    """The proxies ``mesh``'s dashboard lists."""
    c = http.client.HTTPConnection("127.0.0.1", mesh.dashboard_port, timeout=60)
    try:
        c.request("GET", "/api/proxies", headers={"Authorization": f"Bearer {mesh.token()}"})
        return list(json.loads(c.getresponse().read())["proxies"])
    finally:
        c.close()
