"""The push path carries each stream's ticket check: when a Secret rotates, the push that
follows sends the new key to the gateway that proved who it is, and to no other proxy.

A real ``grpc.aio`` ADS server, the real :class:`Pusher` loop (store → World → translation
→ cache) and hand-made ADS clients that ask for the credential's SDS secret as Envoy does.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import grpc
import pytest

from tests.certs import make_cert
from tsunagi import proxy_contract as pc
from tsunagi.api import load_documents
from tsunagi.controlplane.push import Debounce, Pusher
from tsunagi.store.memory import MemoryStore
from tsunagi.xds import resources as rs
from tsunagi.xds import tickets
from tsunagi.xds.cache import SnapshotCache
from tsunagi.xds.server import start_server

from .test_xds_tickets import _BOUND, CONFIG, KEY, NS, SECRET, SERVER, _Ads, _b64

ROTATED = make_cert("bookinfo.example.com")


@pytest.fixture
async def mesh() -> AsyncIterator[tuple[MemoryStore, SnapshotCache, Pusher, int]]:
    store = MemoryStore()
    docs = load_documents("\n---\n".join(json.dumps(d) for d in CONFIG), "test.yaml")
    await store.commit([(r.key, dict(r.document)) for r in docs])
    cache = SnapshotCache()
    pusher = Pusher(store, cache, Debounce(quiet=0.001, max_delay=0.01))
    server, port = await start_server(cache, "127.0.0.1", 0, ticket_key=KEY)
    task = asyncio.create_task(pusher.run())
    try:
        yield store, cache, pusher, port
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await server.stop(None)


async def test_a_rotated_secret_reaches_only_the_verified_gateway(
    mesh: tuple[MemoryStore, SnapshotCache, Pusher, int],
) -> None:
    store, cache, pusher, port = mesh
    verified, impostor = "ingress-aaaaaa.istio-system", "ingress-bbbbbb.istio-system"
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        good = _Ads(channel, verified, pc.GATEWAY_KIND, tickets.ticket(KEY, verified, NS))
        bad = _Ads(channel, impostor, pc.GATEWAY_KIND, tickets.ticket(KEY, verified, NS))
        await good.ask()
        await bad.ask()
        first, keys = await good.next_keys()
        assert keys == {SECRET: SERVER.key}
        bad_first, bad_keys = await bad.next_keys()
        assert bad_keys == {}
        await good.ask(first)  # ACK, so the next version may come
        await bad.ask(bad_first)

        rotated = dict(CONFIG[1])
        rotated["data"] = {"tls.crt": _b64(ROTATED.cert), "tls.key": _b64(ROTATED.key)}
        revision = await store.commit([(("Secret", NS, "cred"), rotated)])

        _, keys = await good.next_keys()  # the push, not a reconnect, brings the new key
        assert keys == {SECRET: ROTATED.key}
        assert cache.nodes[verified].verified and not cache.nodes[impostor].verified
        # the same push made the impostor's snapshot, at the new revision, without secrets
        async with asyncio.timeout(_BOUND):
            while pusher.processed < revision:
                await asyncio.sleep(0.01)
        snapshot = cache.nodes[impostor].snapshot
        assert snapshot.revision >= revision and dict(snapshot.of(rs.SECRET)) == {}
        assert dict(cache.nodes[verified].snapshot.of(rs.SECRET)).keys() == {SECRET}
        good.call.cancel()
        bad.call.cancel()


async def test_a_sidecar_with_a_valid_ticket_gets_no_secret(
    mesh: tuple[MemoryStore, SnapshotCache, Pusher, int],
) -> None:
    _, cache, _, port = mesh
    node = "app-1.istio-system"
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        sidecar = _Ads(channel, node, pc.DEFAULT_KIND, tickets.ticket(KEY, node, NS))
        await sidecar.ask()
        _, keys = await sidecar.next_keys()
        assert keys == {}
        assert cache.nodes[node].verified  # the ticket held; being a sidecar, it gets no keys
        sidecar.call.cancel()
