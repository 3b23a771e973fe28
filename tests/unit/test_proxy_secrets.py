"""``proxy-config secret``'s data: the certificate summary, the rows built from a real ADS
stream's ACK bookkeeping (SotW and delta), the API route, and the CLI's table."""

from __future__ import annotations

import asyncio
import datetime
import json
from collections.abc import AsyncIterator, Iterable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from envoy.service.discovery.v3 import discovery_pb2

from tests.certs import leaks, make_ca, make_cert
from tsunagi.ca.issue import Issued
from tsunagi.ca.summary import summarize
from tsunagi.cli.proxy_config import HEADERS, NONE_FOUND, secrets_table
from tsunagi.controlplane.http_api import Api
from tsunagi.controlplane.openapi import ProxySecrets
from tsunagi.controlplane.proxy_secrets import proxy_secrets
from tsunagi.controlplane.push import Pusher
from tsunagi.mesh.credentials import Credential
from tsunagi.registry import Registry
from tsunagi.store import MemoryStore
from tsunagi.xds.cache import NodeEntry, SnapshotCache
from tsunagi.xds.protocol import DeltaStream, SotwStream
from tsunagi.xds.resources import SECRET, Snapshot
from tsunagi.xds.translate.secrets import gateway_secrets

from .test_http_api import AUTH, TOKEN


def _now() -> datetime.datetime:
    """Now, when the test runs: certificates the tests make are valid from five minutes
    before they are made, and collection may come long before a test runs."""
    return datetime.datetime.now(datetime.UTC)


CRED, CACERT, MISSING = "kubernetes://cred", "kubernetes://cred-cacert", "kubernetes://gone"


def _snapshot(server: Issued, ca: Issued | None, revision: int = 1) -> Snapshot:
    cred = Credential("edge", "cred", server.cert, server.key, ca.cert if ca else b"")
    return Snapshot.build({SECRET: gateway_secrets((cred,)).values()}, revision)


# ----------------------------------------------------------------------------- summary


def test_a_certificate_summary_has_the_serial_in_hex_its_times_names_and_sans() -> None:
    ca = make_ca("edge-ca")
    leaf = make_cert("shop.example.com", ("shop.example.com", "www.example.com"), issuer=ca)
    certs, problem = summarize(leaf.cert + ca.cert, _now())
    assert problem is None
    first, second = certs
    assert int(first.serial_number, 16) == leaf.serial
    assert first.serial_number == f"{leaf.serial:x}"
    assert int(second.serial_number, 16) == ca.serial
    assert first.subject == "CN=shop.example.com" and first.issuer == "CN=edge-ca"
    assert first.sans == ("DNS:shop.example.com", "DNS:www.example.com")
    assert first.valid and first.not_after.endswith("Z") and first.not_before < first.not_after


def test_validity_is_judged_at_the_time_given() -> None:
    (cert,), _ = summarize(make_cert("a.example.com").cert, _now())
    assert cert.valid
    (later,), _ = summarize(make_cert("a.example.com").cert, _now() + datetime.timedelta(days=2))
    assert not later.valid
    (earlier,), _ = summarize(make_cert("a.example.com").cert, _now() - datetime.timedelta(hours=1))
    assert not earlier.valid


def test_what_is_not_a_certificate_says_so() -> None:
    certs, problem = summarize(b"hello", _now())
    assert certs == [] and problem is not None and "PEM" in problem


# ----------------------------------------------------------------------------- rows


def _sotw(t: str, names: Iterable[str], nonce: str = "") -> discovery_pb2.DiscoveryRequest:
    return discovery_pb2.DiscoveryRequest(
        type_url=t, resource_names=list(names), response_nonce=nonce
    )


def _entry(stream: Any, snap: Snapshot) -> NodeEntry:
    stream.set_snapshot(snap)
    meta = {"kind": "gateway", "namespace": "edge"}
    return NodeEntry("edge-1a2b3c.edge", meta, snap, stream, verified=True)  # may hold keys


def _by_name(entry: NodeEntry) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in proxy_secrets(entry, _now())["secrets"]}


def test_a_secret_is_pending_until_asked_warming_until_acked_then_active() -> None:
    server, ca = make_cert("tls.example.com"), make_ca()
    stream = SotwStream()
    entry = _entry(stream, _snapshot(server, ca))
    rows = _by_name(entry)
    assert list(rows) == [CRED, CACERT]
    assert {r["status"] for r in rows.values()} == {"PENDING"}  # Envoy asked for nothing yet

    stream.receive(_sotw(SECRET, [CRED]))
    sent = stream.next_response()
    assert sent is not None
    rows = _by_name(entry)
    assert (rows[CRED]["status"], rows[CACERT]["status"]) == ("WARMING", "PENDING")

    stream.receive(_sotw(SECRET, [CRED], nonce=sent.nonce))  # the ACK
    rows = _by_name(entry)
    cred = rows[CRED]
    assert cred["status"] == "ACTIVE" and cred["acked_version"] == cred["version"]
    assert (cred["type"], rows[CACERT]["type"]) == ("Cert Chain", "CA")
    assert int(cred["serial_number"], 16) == server.serial
    assert int(rows[CACERT]["serial_number"], 16) == ca.serial
    assert cred["valid"] and cred["subject"] == "CN=tls.example.com"
    assert cred["sans"] == ["DNS:tls.example.com"] and cred["source"] == "control-plane"
    assert not leaks(json.dumps(rows), server.key)


@pytest.mark.parametrize("mode", ["sotw", "delta"])
def test_a_renewal_is_warming_until_acked(mode: str) -> None:
    first, renewed = make_cert("tls.example.com"), make_cert("tls.example.com")
    stream: Any = SotwStream() if mode == "sotw" else DeltaStream()
    entry = _entry(stream, _snapshot(first, None))

    def ask(nonce: str = "") -> Any:
        if mode == "sotw":
            return stream.receive(_sotw(SECRET, [CRED], nonce))
        req = discovery_pb2.DeltaDiscoveryRequest(type_url=SECRET, response_nonce=nonce)
        if not nonce:
            req.resource_names_subscribe.append(CRED)
        return stream.receive(req)

    ask()
    ask(stream.next_response().nonce)
    assert _by_name(entry)[CRED]["status"] == "ACTIVE"

    entry.snapshot = _snapshot(renewed, None, revision=2)
    stream.set_snapshot(entry.snapshot)
    row = _by_name(entry)[CRED]
    assert row["status"] == "WARMING" and int(row["serial_number"], 16) == renewed.serial
    ask(stream.next_response().nonce)
    row = _by_name(entry)[CRED]
    assert row["status"] == "ACTIVE" and int(row["serial_number"], 16) == renewed.serial


def test_a_secret_envoy_asks_for_that_the_control_plane_lacks_is_warming_and_explained() -> None:
    stream = SotwStream()
    entry = _entry(stream, _snapshot(make_cert("x.example.com"), None))
    stream.receive(_sotw(SECRET, [CRED, MISSING]))
    gone = _by_name(entry)[MISSING]
    assert gone["status"] == "WARMING" and gone["type"] == "" and not gone["valid"]
    assert "no usable Secret gone in namespace edge" in gone["message"]
    assert gone["certificates"] == []


def test_a_ca_envoy_asks_for_that_the_credential_lacks_says_where_to_put_one() -> None:
    stream = SotwStream()
    entry = _entry(stream, _snapshot(make_cert("x.example.com"), None))  # no CA
    stream.receive(_sotw(SECRET, [CRED, CACERT]))
    row = _by_name(entry)[CACERT]
    assert row["status"] == "WARMING"
    assert "give Secret cred in namespace edge a ca.crt" in row["message"]
    assert "create Secret cred-cacert" in row["message"]


def test_a_sidecar_holds_none() -> None:
    entry = _entry(SotwStream(), Snapshot.build({}, 1))
    assert proxy_secrets(entry, _now())["secrets"] == []


# ----------------------------------------------------------------------------- the route


@pytest.fixture
async def api() -> AsyncIterator[Api]:
    """The real Api over a memory store, its push loop running, as ``tsunagi up`` wires it."""
    store = MemoryStore()
    await store.open()
    cache = SnapshotCache()
    pusher = Pusher(store, cache)
    task = asyncio.create_task(pusher.run())
    yield Api(store, Registry(store, ttl=15.0), pusher, cache, TOKEN, ("127.0.0.1", 15010))
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_the_route_answers_for_a_connected_proxy_by_either_name(api: Api) -> None:
    server = make_cert("tls.example.com")
    api.cache.nodes["edge-1a2b3c.edge"] = _entry(SotwStream(), _snapshot(server, None))
    async with TestClient(TestServer(api.app())) as client:
        for path in (
            "/v1/proxies/edge-1a2b3c.edge/secrets",
            "/v1/proxies/edge-1a2b3c/secrets?namespace=edge",
        ):
            async with client.get(path, headers=AUTH) as r:
                assert r.status == 200, await r.text()
                text = await r.text()
            reply = ProxySecrets.model_validate_json(text)
            assert reply.proxy == "edge-1a2b3c.edge" and [s.name for s in reply.secrets] == [CRED]
            assert int(reply.secrets[0].serial_number, 16) == server.serial
            assert not leaks(text, server.key)


async def test_an_unknown_proxy_is_404_naming_the_connected_ones(api: Api) -> None:
    async with TestClient(TestServer(api.app())) as client:
        async with client.get("/v1/proxies/nope/secrets", headers=AUTH) as r:
            assert r.status == 404
            assert "no proxy is connected" in (await r.json())["error"]
        api.cache.nodes["edge-1a2b3c.edge"] = _entry(SotwStream(), Snapshot.build({}, 1))
        async with client.get("/v1/proxies/edge-1a2b3c/secrets", headers=AUTH) as r:
            error = (await r.json())["error"]
        # without -n the namespace is `default`, as istioctl's
        assert r.status == 404 and "proxy-status" in error and "edge-1a2b3c.edge" in error
        async with client.get("/v1/proxies/x/secrets?nmspace=edge", headers=AUTH) as r:
            assert r.status == 400


# ----------------------------------------------------------------------------- the table


def test_the_table_has_istioctls_columns_and_says_when_there_is_nothing() -> None:
    assert secrets_table([]) == NONE_FOUND
    stream = SotwStream()
    entry = _entry(stream, _snapshot(make_cert("t.example.com"), None))
    stream.receive(_sotw(SECRET, [CRED, MISSING]))
    out = secrets_table(proxy_secrets(entry, _now())["secrets"])
    header, cred, gone, _, note = out.splitlines()
    assert header.split("   ")[0] == "RESOURCE NAME" and all(h in header for h in HEADERS)
    assert cred.split()[:5] == [CRED, "Cert", "Chain", "WARMING", "true"]
    assert gone.split()[:3] == [MISSING, "WARMING", "false"]
    assert note.strip().startswith(f"{MISSING}: ")
