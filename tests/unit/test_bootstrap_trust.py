"""``GET /v1/bootstrap`` tells an agent what it needs to reach the mutual-TLS xDS port: whom
to expect there, the trust domain its identity lives in, and the trust bundle."""

from __future__ import annotations

import datetime
import json
import socket
import ssl
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

from aiohttp.test_utils import TestClient, TestServer

from tsunagi.agent.bootstrap import ProxyIdentity, bootstrap
from tsunagi.agent.envoy import envoy_binary
from tsunagi.agent.identity import new_key_and_csr, xds_trust
from tsunagi.agent.ports import free_ports
from tsunagi.agent.sds_files import write_secrets
from tsunagi.ca.keystore import self_signed
from tsunagi.controlplane.http_api import Api
from tsunagi.controlplane.push import Pusher
from tsunagi.controlplane.xds_tls import (
    ServingCertificate,
    control_plane_identity,
    serving_hosts,
    xds_server_name,
)
from tsunagi.registry import Registry
from tsunagi.spiffe import spiffe_id
from tsunagi.store.memory import MemoryStore
from tsunagi.xds.cache import SnapshotCache

TOKEN = "t0k3n"
TD = "cluster.local"


async def test_bootstrap_names_the_xds_identity_and_the_trust_bundle(tmp_path: Path) -> None:
    authority = self_signed(tmp_path, "example.org", datetime.datetime.now(datetime.UTC))
    store = MemoryStore()
    await store.open()
    cache = SnapshotCache()
    identity = control_plane_identity("example.org", "mesh-root")
    api = Api(
        store,
        Registry(store, ttl=15.0),
        Pusher(store, cache),
        cache,
        TOKEN,
        ("127.0.0.1", 15012),
        xds_identity=identity,
        authority=authority,
    )
    async with TestClient(TestServer(api.app())) as client:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with client.get("/v1/bootstrap", headers=headers) as r:
            assert r.status == 200
            body = await r.json()
        assert body == {
            "xds": {
                "host": "127.0.0.1",
                "port": 15012,
                "identity": identity,
                "serverName": "xds.tsunagi.example.org",
            },
            "trust": {
                "trustDomain": "example.org",
                "rootCertificates": authority.root_pem.decode(),
            },
        }
        assert identity == "spiffe://example.org/ns/mesh-root/sa/tsunagi"
        # what the agent reads of it
        trust = xds_trust(body)
        assert (trust.port, trust.server_name, trust.trust_domain) == (
            15012,
            "xds.tsunagi.example.org",
            "example.org",
        )


# --------------------------------------------------------------------- what real Envoy accepts


class _TlsServer:
    """A loopback TLS server presenting ``cert``/``key`` (PEM files), as the xDS port does;
    it counts the handshakes that completed (the client accepted the certificate)."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        self.context.set_alpn_protocols(["h2"])
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.5)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            conn.settimeout(5)
            try:
                with self.context.wrap_socket(conn, server_side=True):
                    self.accepted += 1
            except (OSError, ssl.SSLError):
                conn.close()  # refused by the client (or it went away)

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(10)
        self.sock.close()


def _xds_ssl_stats(admin_port: int) -> dict[str, int]:
    url = f"http://127.0.0.1:{admin_port}/stats?filter=^cluster\\.xds\\.ssl\\."
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        name, _, value = line.partition(": ")
        if value.strip().isdigit():
            out[name.removeprefix("cluster.xds.ssl.")] = int(value)
    return out


def _envoy_meets(tmp_path: Path, cert: Path, key: Path) -> tuple[int, dict[str, int]]:
    """Start real Envoy with the agent's bootstrap against a server presenting ``cert``;
    once Envoy has tried it: (handshakes the server completed, Envoy's xds ssl stats)."""
    server = _TlsServer(cert, key)
    [admin] = free_ports(1)
    ident = ProxyIdentity("cart-1.shop", "cart", "shop", service_account="cart")
    doc = bootstrap(ident, "127.0.0.1", server.port, admin, xds_server_name=xds_server_name(TD))
    (tmp_path / "envoy.json").write_text(json.dumps(doc))
    envoy = subprocess.Popen(
        [envoy_binary(), "-c", "envoy.json", "--use-dynamic-base-id", "-l", "warning"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60  # a bound, not a measurement
        stats: dict[str, int] = {}
        while time.monotonic() < deadline:
            stats = _xds_ssl_stats(admin)
            if server.accepted or stats.get("fail_verify_san") or stats.get("handshake"):
                break
            time.sleep(0.2)
        return server.accepted, stats
    finally:
        envoy.terminate()
        envoy.wait(30)
        server.close()


def test_envoy_trusts_the_xds_dns_name_and_no_workload_certificate(tmp_path: Path) -> None:
    """The agent's bootstrap pins the xDS server's DNS SAN: real Envoy completes a handshake
    with the control plane's serving certificate, and refuses a workload certificate of the
    same CA, even one for the control plane's own SPIFFE ID (issued before a
    --root-namespace change, say)."""
    now = datetime.datetime.now(datetime.UTC)
    authority = self_signed(tmp_path / "ca", TD, now)
    hour = datetime.timedelta(hours=1)
    proxy_key, csr = new_key_and_csr(spiffe_id(TD, "shop", "cart"))
    own = authority.sign_csr(csr.encode(), spiffe_id(TD, "shop", "cart"), hour, now)
    write_secrets(str(tmp_path), own.chain.decode(), proxy_key, own.root.decode())

    xds_id = control_plane_identity(TD, "istio-system")
    serving = ServingCertificate(authority, xds_id, serving_hosts("127.0.0.1"))
    genuine = authority.issue_serving(xds_id, serving.hosts, hour, now)
    poser_key, poser_csr = new_key_and_csr(xds_id)
    poser = authority.sign_csr(poser_csr.encode(), xds_id, hour, now)
    for name, chain, key in (
        ("genuine", genuine.cert, genuine.key),
        ("poser", poser.chain, poser_key.encode()),
    ):
        (tmp_path / f"{name}.crt").write_bytes(chain)
        (tmp_path / f"{name}.key").write_bytes(key)

    accepted, stats = _envoy_meets(tmp_path, tmp_path / "genuine.crt", tmp_path / "genuine.key")
    assert accepted >= 1, stats
    accepted, stats = _envoy_meets(tmp_path, tmp_path / "poser.crt", tmp_path / "poser.key")
    assert accepted == 0 and stats.get("fail_verify_san", 0) >= 1, stats
