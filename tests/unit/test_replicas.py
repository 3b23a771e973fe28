"""Several control planes on one etcd, piece by piece: the shared admin token and
workload-token key files, replicas registering in real etcd and refusing a peer with another
CA, waits that name a peer that does not answer, clients that fail over between replicas,
and the xds cluster that lists every replica (accepted by real Envoy)."""

from __future__ import annotations

import asyncio
import http.server
import json
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.etcd_fixtures import Cluster, etcd_cluster
from tsunagi.agent.bootstrap import ProxyIdentity, bootstrap
from tsunagi.agent.envoy import envoy_binary
from tsunagi.agent.ports import free_ports
from tsunagi.client import Client, Unreachable
from tsunagi.controlplane.auth import TokenFileError, read_token_file, use_token
from tsunagi.controlplane.fanout import wait_everywhere
from tsunagi.controlplane.replicas import Mismatch, Replica, Replicas, mismatch
from tsunagi.controlplane.workload_tokens import KeyFileError, key_fingerprint, load_key
from tsunagi.store.base import StoreError
from tsunagi.store.etcd import EtcdClient
from tsunagi.store.etcd.client import EtcdError


def private(path: Path, data: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


# -- the files replicas share ------------------------------------------------------------------


def test_a_token_file_is_read_and_becomes_the_state_directorys(tmp_path: Path) -> None:
    token = read_token_file(private(tmp_path / "t", b"  s3cret-token \n"))
    assert token == "s3cret-token"
    state = tmp_path / "state"
    use_token(state, token)
    assert (state / "token").read_text() == "s3cret-token\n"
    assert (state / "token").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    ("data", "mode", "said"),
    [
        (b"s3cret", 0o644, "every user of this host may read or write it (mode 0644)"),
        (b"s3cret", 0o602, "chmod 600"),
        (b"\n", 0o600, "is empty"),
        (b"two words", 0o600, "holds whitespace"),
    ],
)
def test_a_token_file_that_cannot_be_the_token_is_refused(
    tmp_path: Path, data: bytes, mode: int, said: str
) -> None:
    path = private(tmp_path / "t", data, mode)
    with pytest.raises(TokenFileError, match=f"--token-file {path}") as e:
        read_token_file(path)
    assert said in str(e.value)
    with pytest.raises(TokenFileError, match="cannot read it"):
        read_token_file(tmp_path / "absent")


def test_a_workload_token_key_file_must_be_32_private_bytes(tmp_path: Path) -> None:
    key = bytes(range(32))
    assert load_key(private(tmp_path / "k", key)) == key
    with pytest.raises(KeyFileError, match="has 31 bytes, not 32"):
        load_key(private(tmp_path / "short", key[:31]))
    with pytest.raises(KeyFileError, match="every user of this host may read"):
        load_key(private(tmp_path / "open", key, 0o644))
    with pytest.raises(KeyFileError, match="cannot read it"):
        load_key(tmp_path / "absent")
    # Its fingerprint names it without revealing it.
    assert key_fingerprint(key) == key_fingerprint(bytes(key))
    assert key_fingerprint(key) != key_fingerprint(key[::-1])
    assert key.hex() not in key_fingerprint(key)


def test_a_mismatch_names_each_difference_and_its_flag() -> None:
    me = Replica("127.0.0.1:1", "http://127.0.0.1:1", "127.0.0.1", 2, "ca", "key", "admin")
    assert mismatch(me, me) == ""
    other = Replica("10.0.0.2:15014", "http://10.0.0.2:15014", "10.0.0.2", 15012, "ca2", "key")
    said = mismatch(me, other)
    assert said.startswith("this control plane cannot join replica 10.0.0.2:15014")
    assert "--ca-cert FILE --ca-key FILE" in said
    assert "--token-file FILE" in said
    assert "--workload-token-key" not in said


# -- registration in real etcd -----------------------------------------------------------------


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[Cluster]:
    yield from etcd_cluster(tmp_path)


async def test_replicas_register_list_each_other_and_refuse_another_ca(etcd: Cluster) -> None:
    clients = [EtcdClient(etcd.endpoints) for _ in range(3)]
    key = bytes(32)
    a = Replicas(clients[0], "/mesh/", b"root", key, "token")
    b = Replicas(clients[1], "/mesh/", b"root", key, "token")
    c = Replicas(clients[2], "/mesh/", b"another root", key, "token")
    try:
        await a.check()  # nobody yet
        await a.start("127.0.0.1", 1001, 2001)
        await b.check()
        await b.start("127.0.0.1", 1002, 2002)
        assert [r.name for r in await a.peers()] == ["127.0.0.1:1002"]
        peer = (await b.peers())[0]
        assert (peer.api, peer.xds_host, peer.xds_port) == (
            "http://127.0.0.1:1001",
            "127.0.0.1",
            2001,
        )
        assert "root" not in peer.to_json().decode() and "token" not in peer.ca
        with pytest.raises(Mismatch, match="--ca-cert FILE --ca-key FILE"):
            await c.check()
        # Registered before it compares: refused, it leaves nothing behind.
        with pytest.raises(Mismatch):
            await c.start("127.0.0.1", 1003, 2003)
        assert len(await a.everyone()) == 2
        # A clean exit removes the key at once.
        await b.stop()
        assert await a.peers() == []
    finally:
        for r in (a, b, c):
            await r.stop()
        for client in clients:
            await client.close()


async def test_a_lapsed_replica_registers_again_after_a_failed_write(
    etcd: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("tsunagi.controlplane.replicas.REFRESH_EVERY", 0.05)
    clients = [EtcdClient(etcd.endpoints) for _ in range(2)]
    a = Replicas(clients[0], "/mesh/", b"root", bytes(32), "token")
    b = Replicas(clients[1], "/mesh/", b"root", bytes(32), "token")
    await a.start("127.0.0.1", 1001, 2001)
    txn = clients[0].txn
    failures = [EtcdError("etcd at 127.0.0.1:1: injected failure")]

    async def flaky_txn(*args: Any) -> Any:
        if failures:
            raise failures.pop()
        return await txn(*args)

    monkeypatch.setattr(clients[0], "txn", flaky_txn)
    # Its lease lapsed (etcd was away longer than its TTL): the key went with it.
    await clients[0].lease_revoke(a._lease)
    assert await b.everyone() == []
    running = asyncio.create_task(a.run())
    try:
        # The first write of its key again fails; the one after it lands.
        async with asyncio.timeout(20):  # a bound, not a measure
            while [r.name for r in await b.everyone()] != ["127.0.0.1:1001"]:
                await asyncio.sleep(0.05)
        assert failures == []
    finally:
        running.cancel()
        for r in (a, b):
            await r.stop()
        for client in clients:
            await client.close()


# -- waits across replicas ---------------------------------------------------------------------


class FakePeers:
    """Replicas' surface that :func:`wait_everywhere` uses, with scripted peers."""

    def __init__(self, answers: dict[str, list[Any]], leaving: frozenset[str] = frozenset()):
        self.me = Replica("me:1", "http://me:1", "me", 2)
        self.answers = answers
        """Peer name → what each ask gets, in turn (an exception is raised); the last
        repeats, except for peers ``leaving``: they leave the store once it is used."""
        self.leaving = leaving

    async def peers(self) -> list[Replica]:
        return [Replica(n, f"http://{n}", n, 2) for n in sorted(self.answers)]

    async def get(
        self, peer: Replica, path: str, query: dict[str, Any], timeout: float
    ) -> tuple[int, dict[str, Any]]:
        assert path == "/v1/wait" and query["local"] == "true"
        script = self.answers[peer.name]
        answer = script.pop(0) if len(script) > 1 or peer.name in self.leaving else script[0]
        if not script:
            del self.answers[peer.name]
        if isinstance(answer, BaseException):
            raise answer
        status, body = answer
        return status, body


async def synced_here(timeout: float) -> tuple[bool, list[dict[str, Any]]]:
    return True, [{"id": "here.default", "synced": True}]


async def test_a_wait_covers_every_peers_proxies_and_names_a_silent_one() -> None:
    peers: Any = FakePeers(
        {
            "b:1": [(200, {"complete": True, "proxies": [{"id": "x.default", "synced": True}]})],
            "c:1": [OSError("connection refused")],
        }
    )
    complete, proxies, reports = await wait_everywhere(peers, synced_here, 5, 1.2)
    assert not complete
    assert {(p["id"], p["replica"]) for p in proxies} == {
        ("here.default", "me:1"),
        ("x.default", "b:1"),
    }
    silent = [r for r in reports if r["error"]]
    assert silent == [
        {"name": "c:1", "api": "http://c:1", "complete": False, "error": "did not answer: "
         "connection refused"}
    ]  # fmt: skip


async def test_a_peer_that_leaves_the_store_is_no_longer_waited_for() -> None:
    # c:1 refuses three times, then its lease lapses (it leaves the list): the wait completes.
    gone = OSError("connection refused")
    answers = {"b:1": [(200, {"complete": True, "proxies": []})], "c:1": [gone, gone, gone]}
    peers: Any = FakePeers(answers, leaving=frozenset({"c:1"}))
    complete, _, reports = await wait_everywhere(peers, synced_here, 5, 10)
    assert complete, reports
    assert [r["name"] for r in reports] == ["me:1", "b:1"]


async def test_a_peer_that_times_out_makes_the_wait_incomplete_with_its_stale_proxies() -> None:
    behind = {"complete": False, "proxies": [{"id": "y.default", "synced": False}]}
    peers: Any = FakePeers({"b:1": [(504, behind)]})
    complete, proxies, reports = await wait_everywhere(peers, synced_here, 5, 1)
    assert not complete
    assert [p for p in proxies if not p["synced"]] == [
        {"id": "y.default", "synced": False, "replica": "b:1"}
    ]
    assert reports[1] == {"name": "b:1", "api": "http://b:1", "complete": False, "error": ""}


async def test_a_wait_with_no_time_left_names_the_peers_it_could_not_ask() -> None:
    peers: Any = FakePeers({"b:1": [(200, {"complete": True, "proxies": []})]})
    complete, _, reports = await wait_everywhere(peers, synced_here, 5, 0)
    assert not complete
    assert reports[1] == {
        "name": "b:1", "api": "http://b:1", "complete": False, "error": "not asked: time was up"
    }  # fmt: skip


async def test_without_etcd_the_wait_is_incomplete_and_says_so() -> None:
    class NoEtcd(FakePeers):
        async def peers(self) -> list[Replica]:
            raise StoreError("cannot list the replicas: etcd at 127.0.0.1:1: UNAVAILABLE")

    complete, _, reports = await wait_everywhere(NoEtcd({}), synced_here, 5, 0.6)  # type: ignore[arg-type]
    assert not complete
    assert reports[-1]["name"] == "etcd" and "UNAVAILABLE" in reports[-1]["error"]


# -- clients fail over -------------------------------------------------------------------------


class Counting(http.server.BaseHTTPRequestHandler):
    hits: list[str]

    def do_GET(self) -> None:
        self.hits.append(self.path)
        body = json.dumps({"ok": True, "port": self.server.server_address[1]}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def serve(port: int, hits: list[str]) -> http.server.HTTPServer:
    handler = type("Handler", (Counting,), {"hits": hits})
    server = http.server.HTTPServer(("127.0.0.1", port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_a_client_fails_over_to_the_next_replica_and_stays_there() -> None:
    dead, live = free_ports(2)
    live_hits: list[str] = []
    server = serve(live, live_hits)
    try:
        client = Client(f"http://127.0.0.1:{dead}, http://127.0.0.1:{live}", "t", timeout=2)
        assert client.request("GET", "/healthz")["port"] == live
        # The dead one comes back: calls stay with the replica that answered.
        dead_hits: list[str] = []
        revived = serve(dead, dead_hits)
        try:
            assert client.request("GET", "/healthz")["port"] == live
            assert dead_hits == [] and live_hits == ["/healthz", "/healthz"]
        finally:
            revived.shutdown()
            revived.server_close()
    finally:
        server.shutdown()
        server.server_close()
    # Neither answers: both are named.
    with pytest.raises(Unreachable) as e:
        client.request("GET", "/healthz")
    assert f"http://127.0.0.1:{dead}:" in str(e.value) and f"http://127.0.0.1:{live}:" in str(
        e.value
    )


def test_a_malformed_server_in_the_list_is_named() -> None:
    with pytest.raises(Unreachable, match="got 'ftp://x'"):
        Client("http://127.0.0.1:1,ftp://x").request("GET", "/healthz")


# -- the xds cluster ---------------------------------------------------------------------------


def test_one_replica_keeps_the_xds_cluster_as_it_was() -> None:
    boot = bootstrap(ProxyIdentity("n", "s", "default"), "127.0.0.1", 15012, 15000)
    (cluster,) = boot["static_resources"]["clusters"]
    hosts = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert [h["endpoint"]["address"]["socket_address"]["port_value"] for h in hosts] == [15012]
    assert "outlier_detection" not in cluster


def test_envoy_accepts_an_xds_cluster_of_every_replica(tmp_path: Path) -> None:
    replicas = (("127.0.0.1", 15012), ("10.0.0.2", 15012), ("127.0.0.1", 15012))
    boot = bootstrap(
        ProxyIdentity("n", "s", "default"), "127.0.0.1", 15012, 15000, xds_replicas=replicas
    )
    (cluster,) = boot["static_resources"]["clusters"]
    hosts = [
        (a["socket_address"]["address"], a["socket_address"]["port_value"])
        for a in (
            h["endpoint"]["address"]
            for h in cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
        )
    ]
    assert hosts == [("127.0.0.1", 15012), ("10.0.0.2", 15012)]  # each once, this one first
    assert cluster["outlier_detection"]["consecutive_local_origin_failure"] == 1
    path = tmp_path / "envoy.json"
    path.write_text(json.dumps(boot))
    result = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(path), "--use-dynamic-base-id"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# -- what the CLI prints -----------------------------------------------------------------------


def test_proxy_status_shows_each_proxys_replica_and_names_a_silent_one() -> None:
    from tsunagi.cli.output import proxy_status, replica_problems

    synced = {"CDS": {"state": "SYNCED"}}
    shown = proxy_status(
        [
            {"id": "a.default", "service": "a", "types": synced, "replica": "10.0.0.5:15014"},
            {"id": "b.default", "service": "b", "types": synced, "replica": "10.0.0.6:15014"},
        ]
    )
    header, *rows = shown.splitlines()
    assert header.split()[-1] == "REPLICA"
    assert [r.split()[-1] for r in rows] == ["10.0.0.5:15014", "10.0.0.6:15014"]
    # Alone (no replica named): no column.
    assert "REPLICA" not in proxy_status([{"id": "a.default", "service": "a", "types": synced}])
    reports = [
        {"name": "10.0.0.5:15014", "api": "http://10.0.0.5:15014", "complete": True, "error": ""},
        {"name": "10.0.0.7:15014", "api": "http://10.0.0.7:15014", "complete": False,
         "error": "did not answer: connection refused"},
    ]  # fmt: skip
    assert replica_problems(reports) == [
        "replica 10.0.0.7:15014 (http://10.0.0.7:15014) did not answer: connection refused; "
        "its proxies are not shown"
    ]
