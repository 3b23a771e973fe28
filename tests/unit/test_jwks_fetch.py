"""The control plane's JWKS fetching, against a real HTTP server on loopback: what it
fetches, that a failure keeps the last good set, and that a fetched set is pushed at once."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tsunagi.api import load_documents
from tsunagi.controlplane.jwks import FetchFailed, JwksFetcher, fetch
from tsunagi.controlplane.push import Debounce, Pusher
from tsunagi.store import MemoryStore
from tsunagi.xds import resources as rs
from tsunagi.xds.cache import SnapshotCache
from tsunagi.xds.resources import Snapshot

from .test_request_authentication import public_jwks


class Issuer:
    """An issuer's web server: what it answers can change during a test."""

    def __init__(self) -> None:
        self.jwks = public_jwks("one")
        self.status = 200
        self.requests: list[str] = []
        self.base = ""

    async def keys(self, request: web.Request) -> web.Response:
        self.requests.append(request.path)
        return web.Response(text=self.jwks, status=self.status)

    async def discovery(self, request: web.Request) -> web.Response:
        self.requests.append(request.path)
        return web.json_response({"issuer": self.base, "jwks_uri": f"{self.base}/keys"})

    async def garbage(self, request: web.Request) -> web.Response:
        return web.Response(text="<html>not a key set</html>")


@pytest.fixture
async def issuer() -> AsyncIterator[Issuer]:
    it = Issuer()
    app = web.Application()
    app.router.add_get("/keys", it.keys)
    app.router.add_get("/.well-known/openid-configuration", it.discovery)
    app.router.add_get("/garbage", it.garbage)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    it.base = f"http://127.0.0.1:{port}"
    try:
        yield it
    finally:
        await runner.cleanup()


async def test_fetch_reads_a_key_set_or_says_why_not(issuer: Issuer) -> None:
    async with aiohttp.ClientSession() as session:
        assert await fetch(session, f"{issuer.base}/keys", 5) == issuer.jwks
        discovered = f"{issuer.base}/.well-known/openid-configuration"
        assert await fetch(session, discovered, 5) == issuer.jwks
        issuer.status = 503
        with pytest.raises(FetchFailed, match="status 503"):
            await fetch(session, f"{issuer.base}/keys", 5)
        with pytest.raises(FetchFailed, match="not a JWK set"):
            await fetch(session, f"{issuer.base}/garbage", 5)
        with pytest.raises(FetchFailed, match=r"GET http://127\.0\.0\.1:1/"):
            await fetch(session, "http://127.0.0.1:1/keys", 5)


def _authentication(uri: str, name: str = "ra") -> tuple[Any, dict[str, Any]]:
    text = (
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\n"
        f"metadata: {{name: {name}, namespace: foo}}\n"
        f"spec:\n  jwtRules: [{{issuer: i, jwksUri: '{uri}'}}]\n"
    )
    [res] = load_documents(text)
    return res.key, dict(res.document)


async def _until(check: Callable[[], bool], what: str) -> None:
    for _ in range(1000):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


async def test_a_failed_refresh_keeps_the_last_good_set(issuer: Issuer) -> None:
    store = MemoryStore()
    seen: list[dict[str, str]] = []
    fetcher = JwksFetcher(store, lambda docs: seen.append(dict(docs)), refresh=0.05, retry=0.05)
    task = asyncio.create_task(fetcher.run())
    uri = f"{issuer.base}/keys"
    try:
        key, doc = _authentication(uri)
        await store.commit([(key, doc)])
        await _until(lambda: bool(seen), "the first fetch")
        assert seen[-1] == {uri: issuer.jwks}
        first = issuer.jwks
        issuer.status = 500
        failed_from = len(issuer.requests)
        await _until(lambda: len(issuer.requests) >= failed_from + 2, "refreshes that fail")
        assert fetcher.documents == {uri: first}  # kept
        issuer.status, issuer.jwks = 200, public_jwks("two")
        await _until(lambda: seen[-1] == {uri: issuer.jwks}, "the rotated set")
        await store.commit([], [key])
        await _until(lambda: seen[-1] == {}, "the set to be dropped with its rule")
    finally:
        task.cancel()


META = {
    "namespace": "foo",
    "service": "httpbin",
    "inbound": {"8000": {"listen": 15006, "app": 8080}},
}


class RecordingStream:
    def __init__(self) -> None:
        self.snapshots: list[Snapshot] = []

    def set_snapshot(self, snapshot: Snapshot) -> None:
        self.snapshots.append(snapshot)


async def test_a_fetched_set_is_pushed_without_a_store_change(issuer: Issuer) -> None:
    store = MemoryStore()
    key, doc = _authentication(f"{issuer.base}/keys")
    await store.commit([(key, doc)])
    cache = SnapshotCache()
    pusher = Pusher(store, cache, Debounce(quiet=0.01, max_delay=0.1))
    stream = RecordingStream()
    cache.connect("httpbin.foo", META, stream)
    push = asyncio.create_task(pusher.run())
    fetch_task = asyncio.create_task(JwksFetcher(store, pusher.use_jwks).run())

    def inlined() -> bool:
        listeners = stream.snapshots[-1].of(rs.LISTENER) if stream.snapshots else {}
        bodies = [r.body.value for r in listeners.values()]
        n = json.loads(issuer.jwks)["keys"][0]["n"].encode()
        return any(n in b for b in bodies)

    try:
        await _until(inlined, "the fetched key set in the proxy's listeners")
        assert store.contents().revision == 1  # no store change was needed
    finally:
        push.cancel()
        fetch_task.cancel()
