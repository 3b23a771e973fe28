"""``GET /v1/bootstrap`` tells an agent what it needs to reach the mutual-TLS xDS port: whom
to expect there, the trust domain its identity lives in, and the trust bundle."""

from __future__ import annotations

import datetime
from pathlib import Path

from aiohttp.test_utils import TestClient, TestServer

from tsunagi.agent.identity import xds_trust
from tsunagi.ca.keystore import self_signed
from tsunagi.controlplane.http_api import Api
from tsunagi.controlplane.push import Pusher
from tsunagi.controlplane.xds_tls import control_plane_identity
from tsunagi.registry import Registry
from tsunagi.store.memory import MemoryStore
from tsunagi.xds.cache import SnapshotCache

TOKEN = "t0k3n"


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
            "xds": {"host": "127.0.0.1", "port": 15012, "identity": identity},
            "trust": {
                "trustDomain": "example.org",
                "rootCertificates": authority.root_pem.decode(),
            },
        }
        assert identity == "spiffe://example.org/ns/mesh-root/sa/tsunagi"
        # what the agent reads of it
        trust = xds_trust(body)
        assert (trust.port, trust.identity, trust.trust_domain) == (15012, identity, "example.org")
