"""The control plane's HTTP API in process: the real Api over a memory store, a Registry, a
Pusher and a SnapshotCache wired as ``tsunagi up`` wires them, driven through aiohttp's test
client (and raw loopback sockets for the connection limits)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from tsunagi.controlplane.http_api import Api
from tsunagi.controlplane.openapi import ROUTES
from tsunagi.controlplane.push import Pusher
from tsunagi.registry import Registry
from tsunagi.store import MemoryStore
from tsunagi.xds.cache import SnapshotCache

from .examples import instance_document

TOKEN = "test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

VS = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews}
"""

INSTANCE = instance_document("reviews-v1-0", namespace="default", address="127.0.0.1")


@dataclass
class Plane:
    api: Api
    store: MemoryStore
    client: TestClient[web.Request, web.Application]

    async def call(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, Any]]:
        kwargs: dict[str, Any] = {"headers": AUTH if headers is None else headers}
        if body is not None:
            kwargs["data" if isinstance(body, bytes | str) else "json"] = body
        async with self.client.request(method, path, **kwargs) as r:
            assert r.content_type == "application/json", await r.text()
            return r.status, await r.json()


Factory = Callable[..., Awaitable[Api]]


@pytest.fixture
async def make_api() -> AsyncIterator[Factory]:
    """Builds Apis wired as ``tsunagi up`` wires them, with the push loop running."""
    tasks: list[asyncio.Task[None]] = []

    async def make(**limits: Any) -> Api:
        store = MemoryStore()
        await store.open()
        cache = SnapshotCache()
        pusher = Pusher(store, cache)
        tasks.append(asyncio.create_task(pusher.run()))
        registry = Registry(store, ttl=15.0)
        return Api(store, registry, pusher, cache, TOKEN, ("127.0.0.1", 15010), **limits)

    yield make
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


@pytest.fixture
async def plane(make_api: Factory) -> AsyncIterator[Plane]:
    api = await make_api(max_body_size=64 * 1024, body_timeout=0.5)
    async with TestClient(TestServer(api.app())) as client:
        assert isinstance(api.store, MemoryStore)
        yield Plane(api, api.store, client)


def _concrete(path: str) -> str:
    return path.replace("{namespace}", "default").replace("{name}", "x")


def _is_error(body: dict[str, Any]) -> bool:
    return (
        isinstance(body.get("error"), str)
        and isinstance(body.get("errors"), list)
        and all(isinstance(e, str) for e in body["errors"])
        and bool(body["errors"])
    )


# ----------------------------------------------------------------------------- the description


async def test_every_route_is_described_and_every_description_is_routed(plane: Plane) -> None:
    routed = {
        (r.method, r.resource.canonical)
        for r in plane.api.app().router.routes()
        if r.resource is not None
    }
    status, spec = await plane.call("GET", "/v1/openapi.json")
    assert status == 200
    described = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops}
    assert routed == described
    assert spec["openapi"].startswith("3.")
    assert spec["security"] == [{"bearer": []}]
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            assert {"200", "401", "403"} <= set(op["responses"]), (method, path)
            if method == "post" and "requestBody" in op:
                assert {"400", "413"} <= set(op["responses"]), (method, path)


def test_the_route_table_names_real_handlers_once() -> None:
    assert len({(r.method, r.path) for r in ROUTES}) == len(ROUTES)
    for r in ROUTES:
        assert callable(getattr(Api, r.handler, None)), r.handler


async def test_the_description_states_the_configured_limits(make_api: Factory) -> None:
    api = await make_api(max_body_size=1234, max_wait_timeout=7.0)
    wait = api.spec["paths"]["/v1/wait"]["get"]
    timeout = next(p for p in wait["parameters"] if p["name"] == "timeout")
    assert timeout["schema"]["maximum"] == 7.0
    assert "1234 bytes" in api.spec["info"]["description"]


# ----------------------------------------------------------------------------- auth


@pytest.mark.parametrize("route", ROUTES, ids=[f"{r.method} {r.path}" for r in ROUTES])
async def test_every_route_needs_the_token(plane: Plane, route: Any) -> None:
    path = _concrete(route.path)
    for headers in ({}, {"Authorization": "Basic dXNlcjpwYXNz"}, {"Authorization": "Bearer "}):
        status, body = await plane.call(route.method, path, headers=headers)
        assert status == 401 and _is_error(body), (headers, body)
        assert "token" in body["error"]
    status, body = await plane.call(route.method, path, headers={"Authorization": "Bearer nope"})
    assert status == 401 and _is_error(body) and "unknown token" in body["error"]
    # Not even a hint of the data behind it.
    assert "revision" not in body and "items" not in body


async def test_the_401_says_how_to_authenticate(plane: Plane) -> None:
    async with plane.client.get("/healthz") as r:
        assert r.status == 401
        assert r.headers["WWW-Authenticate"].startswith("Bearer")


async def test_healthz_and_bootstrap_with_the_token(plane: Plane) -> None:
    assert await plane.call("GET", "/healthz") == (200, {"ok": True, "revision": 0})
    status, body = await plane.call("GET", "/v1/bootstrap")
    assert status == 200 and body == {"xds": {"host": "127.0.0.1", "port": 15010}}
    # The scheme is case-insensitive (RFC 7235).
    status, _ = await plane.call("GET", "/healthz", headers={"Authorization": f"bearer {TOKEN}"})
    assert status == 200


# ----------------------------------------------------------------------------- resources


async def test_apply_dry_run_get_and_delete(plane: Plane) -> None:
    status, body = await plane.call("POST", "/v1/apply", {"text": VS, "dry_run": True})
    assert status == 200 and body["dry_run"] is True
    assert body["results"][0]["action"] == "created"
    assert plane.store.contents().revision == 0  # a dry run stores nothing

    status, body = await plane.call("POST", "/v1/apply", {"text": VS, "filename": "vs.yaml"})
    assert status == 200 and body["results"] == [
        {"kind": "VirtualService", "namespace": "default", "name": "reviews", "action": "created"}
    ]
    revision = body["revision"]
    assert revision == plane.store.contents().revision == 1
    status, again = await plane.call("POST", "/v1/apply", {"text": VS})
    assert again["results"][0]["action"] == "unchanged" and again["revision"] == revision

    status, got = await plane.call("GET", "/v1/resources?kind=vs&name=reviews&namespace=default")
    assert status == 200 and [i["name"] for i in got["items"]] == ["reviews"]
    assert got["items"][0]["document"]["spec"]["hosts"] == ["reviews"]
    status, listed = await plane.call("GET", "/v1/resources")
    assert status == 200 and len(listed["items"]) == 1

    status, missing = await plane.call("GET", "/v1/resources?kind=vs&name=nope")
    assert status == 404 and _is_error(missing) and "nope" in missing["error"]
    status, missing = await plane.call("GET", "/v1/resources?name=nope")
    assert status == 404 and "None" not in missing["error"]

    status, gone = await plane.call(
        "POST", "/v1/delete", {"kind": "virtualservice", "name": "reviews"}
    )
    assert status == 200 and gone["results"][0]["action"] == "deleted"
    status, again = await plane.call("POST", "/v1/delete", {"kind": "vs", "name": "reviews"})
    assert status == 404 and _is_error(again)
    assert "VirtualService default/reviews not found" in again["errors"]


async def test_delete_by_file(plane: Plane) -> None:
    assert (await plane.call("POST", "/v1/apply", {"text": VS}))[0] == 200
    status, body = await plane.call("POST", "/v1/delete", {"text": VS, "filename": "vs.yaml"})
    assert status == 200 and body["results"][0]["name"] == "reviews"
    assert plane.store.contents().records == {}


async def test_invalid_resources_are_refused_whole(plane: Plane) -> None:
    bad = VS + "---\n" + VS.replace("name: reviews", "name: other").replace("- route:", "- rout:")
    status, body = await plane.call("POST", "/v1/apply", {"text": bad, "filename": "bad.yaml"})
    assert status == 400 and "nothing was applied" in body["error"]
    assert any('unknown field "rout"' in e for e in body["errors"])
    assert plane.store.contents().records == {}


@pytest.mark.parametrize(
    "text",
    [VS.replace("- route:", "- rout:"), "", "spec: [unclosed\n"],
    ids=["invalid resource", "no resources", "invalid YAML"],
)
@pytest.mark.parametrize(
    ("filename", "shown"),
    [
        ("vs.yaml\nHTTP/1.1 200 OK", '"vs.yaml\\nHTTP/1.1 200 OK"'),
        ("x" * 10_000, '"' + "x" * 80 + '..." (10000 characters)'),
        ("rules/vs.yaml", "rules/vs.yaml"),  # a plain name is shown as sent
    ],
    ids=["newline", "10 kB", "plain"],
)
@pytest.mark.parametrize("path", ["/v1/apply", "/v1/delete"])
async def test_the_filename_in_messages_is_escaped_and_cut(
    plane: Plane, path: str, text: str, filename: str, shown: str
) -> None:
    status, body = await plane.call("POST", path, {"text": text, "filename": filename})
    assert status == 400 and _is_error(body)
    verb = "applied" if path == "/v1/apply" else "deleted"
    if text:  # an invalid resource or invalid YAML: one error each
        assert body["error"] == f"1 error(s) in {shown}; nothing was {verb}"
    else:
        assert body["error"] == f"{shown}: no resources found; nothing was {verb}"
    for line in [body["error"], *body["errors"]]:
        assert line.isprintable() and len(line) < 300, line  # one line, bounded


BAD_BODIES: dict[str, tuple[str, Any, str]] = {
    "text is a number": ("/v1/apply", {"text": 5}, "body text"),
    "dry_run is a string": ("/v1/apply", {"text": VS, "dry_run": "yes"}, "body dry_run"),
    "no text": ("/v1/apply", {}, "body text: required"),
    "unknown field": ("/v1/apply", {"text": VS, "dryrun": True}, "body dryrun: unknown field"),
    "not JSON": ("/v1/apply", b"{text:", "must be JSON"),
    "not UTF-8": ("/v1/apply", b'{"text": "\xff"}', "must be JSON"),
    "a JSON list": ("/v1/apply", [VS], "JSON object"),
    "empty body": ("/v1/apply", b"", "must be JSON"),
    "deep JSON": ("/v1/apply", b"[" * 20_000 + b"]" * 20_000, "must be JSON"),
    "empty YAML": ("/v1/apply", {"text": ""}, "no resources found"),
    "malformed YAML": ("/v1/apply", {"text": "spec: [unclosed\n"}, "invalid YAML"),
    "YAML with NUL": ("/v1/apply", {"text": "kind: \x00"}, "nothing was applied"),
    "deep YAML": ("/v1/apply", {"text": "[" * 5000 + "]" * 5000}, "nothing was applied"),
    "delete: name is a list": ("/v1/delete", {"kind": "vs", "name": []}, "body name"),
    "delete: nothing named": ("/v1/delete", {"namespace": "default"}, "`kind` and `name`"),
    "delete: unknown kind": ("/v1/delete", {"kind": "nope", "name": "x"}, "unknown kind"),
    "delete: empty name": ("/v1/delete", {"kind": "vs", "name": ""}, "body name"),
    "delete: bad YAML": ("/v1/delete", {"text": "a: [b"}, "nothing was deleted"),
    "instance: port is a string": ("/v1/instances", {**INSTANCE, "port": "80"}, "body port"),
    # 0 is a gateway's port (kind gateway), never a sidecar's
    "instance: port 0": ("/v1/instances", {**INSTANCE, "port": 0}, "port must be 1..65535"),
    "instance: gateway port": (
        "/v1/instances",
        {**INSTANCE, "kind": "gateway", "port": 0},
        "target_port must be 0 for a gateway without a service port",
    ),
    "instance: kind": ("/v1/instances", {**INSTANCE, "kind": "waypoint"}, "body kind"),
    "instance: port true": ("/v1/instances", {**INSTANCE, "target_port": True}, "target_port"),
    "instance: labels not a map": ("/v1/instances", {**INSTANCE, "labels": "x"}, "body labels"),
    "instance: label value": ("/v1/instances", {**INSTANCE, "labels": {"a": 1}}, "labels.a"),
    "instance: bad name": ("/v1/instances", {**INSTANCE, "name": "Bad_Name"}, "body name"),
    "instance: bad address": ("/v1/instances", {**INSTANCE, "address": "nope"}, "IPv4 or IPv6"),
    "instance: missing service": (
        "/v1/instances",
        {k: v for k, v in INSTANCE.items() if k != "service"},
        "body service: required",
    ),
    "instance: locality": ("/v1/instances", {**INSTANCE, "locality": "a/b/c/d"}, "locality"),
    "instance: healthy": ("/v1/instances", {**INSTANCE, "healthy": "yes"}, "body healthy"),
    "instance: protocol": ("/v1/instances", {**INSTANCE, "protocol": "gprc"}, "use one of: http"),
    "instance: null": ("/v1/instances", b"null", "must be a JSON object"),
}


@pytest.mark.parametrize("case", list(BAD_BODIES), ids=list(BAD_BODIES))
async def test_bad_bodies_get_400_naming_the_problem(plane: Plane, case: str) -> None:
    path, body, expected = BAD_BODIES[case]
    status, reply = await plane.call("POST", path, body)
    assert status == 400, reply
    assert _is_error(reply)
    assert any(expected in line for line in [reply["error"], *reply["errors"]]), reply
    assert plane.store.contents().records == {}


BAD_QUERIES = {
    "unknown kind": ("/v1/resources?kind=nosuchkind", "unknown kind"),
    "negative timeout": ("/v1/wait?timeout=-1", "timeout"),
    "NaN timeout": ("/v1/wait?timeout=nan", "timeout"),
    "infinite timeout": ("/v1/wait?timeout=inf", "timeout"),
    "huge timeout": ("/v1/wait?timeout=1e9", "at most 300"),
    "timeout not a number": ("/v1/wait?timeout=soon", "timeout"),
    "negative revision": ("/v1/wait?revision=-1", "revision"),
    "revision not a number": ("/v1/wait?revision=abc", "revision"),
    "NaN since": ("/v1/wait?since=nan", "since"),
}


@pytest.mark.parametrize("case", list(BAD_QUERIES), ids=list(BAD_QUERIES))
async def test_bad_query_parameters_get_400(plane: Plane, case: str) -> None:
    path, expected = BAD_QUERIES[case]
    status, reply = await plane.call("GET", path)
    assert status == 400 and _is_error(reply), reply
    assert expected in reply["error"], reply


async def test_unknown_paths_and_methods_answer_in_json(plane: Plane) -> None:
    status, body = await plane.call("GET", "/v1/nothing-here")
    assert status == 404 and _is_error(body) and "openapi" in body["error"]
    async with plane.client.put("/v1/apply", headers=AUTH) as r:
        assert r.status == 405 and r.headers["Allow"] == "POST"
        body = await r.json()
        assert _is_error(body) and "use POST" in body["error"]


# ----------------------------------------------------------------------------- instances


async def test_register_heartbeat_deregister(plane: Plane) -> None:
    status, body = await plane.call("POST", "/v1/instances", INSTANCE)
    assert status == 200 and body["ttl"] == 15.0 and body["revision"] == 1
    assert (await plane.call("POST", "/v1/instances", INSTANCE))[1]["revision"] == 1  # same
    status, listed = await plane.call("GET", "/v1/resources?kind=workloads")
    assert [i["name"] for i in listed["items"]] == ["reviews-v1-0"]
    assert listed["items"][0]["document"]["labels"] == {"version": "v1"}

    path = "/v1/instances/default/reviews-v1-0"
    assert await plane.call("POST", f"{path}/heartbeat") == (200, {"ok": True})
    status, body = await plane.call("DELETE", path)
    assert status == 200 and body["revision"] == 2
    status, body = await plane.call("POST", f"{path}/heartbeat")
    assert status == 404 and "register again" in body["error"]
    status, body = await plane.call("DELETE", path)
    assert status == 404 and _is_error(body)


async def test_instances_that_disagree_on_a_protocol_are_told(plane: Plane) -> None:
    first = {**INSTANCE, "protocol": "grpc"}
    status, reply = await plane.call("POST", "/v1/instances", first)
    assert status == 200 and "warnings" not in reply
    second = {**INSTANCE, "name": "reviews-v1-1", "protocol": "HTTP"}
    status, reply = await plane.call("POST", "/v1/instances", second)
    assert status == 200  # registered all the same: one answer is picked, not a crash
    assert reply["warnings"] == [
        "instances of reviews.default:9080 disagree on its protocol (grpc (1), http (1)); the "
        "mesh uses http for all of them. Run every instance with the same --port 9080/PROTOCOL"
    ]
    assert len(plane.store.contents().records) == 2


async def test_an_ipv6_instance_and_defaults(plane: Plane) -> None:
    minimal = {"name": "a", "service": "b", "port": 80, "target_port": 8080, "address": "::1"}
    status, _ = await plane.call("POST", "/v1/instances", minimal)
    assert status == 200
    status, listed = await plane.call("GET", "/v1/resources?kind=workloads&namespace=default")
    doc = listed["items"][0]["document"]
    assert doc["namespace"] == "default" and doc["address"] == "::1" and doc["healthy"] is True


# ----------------------------------------------------------------------------- wait


async def test_wait_answers_when_pushed_and_504_on_timeout(plane: Plane) -> None:
    status, applied = await plane.call("POST", "/v1/apply", {"text": VS})
    revision = applied["revision"]
    status, body = await plane.call("GET", f"/v1/wait?revision={revision}&timeout=20")
    assert status == 200 and body["complete"] is True and body["elapsed_ms"] >= 0
    status, body = await plane.call("GET", f"/v1/wait?revision={revision + 100}&timeout=0.1")
    assert status == 504 and body["complete"] is False and body["proxies"] == []
    # ``since`` far away in either direction still gives a finite, non-negative number.
    for since in ("1", "1e300"):
        status, body = await plane.call(
            "GET", f"/v1/wait?revision={revision}&timeout=1&since={since}"
        )
        assert status == 200 and 0 <= body["elapsed_ms"] < float("inf")


async def test_a_wait_the_client_abandons_stops(plane: Plane) -> None:
    def waiting(coro: Any) -> bool:  # in wait_for_acks, however deep in the task's awaits
        while coro is not None and getattr(coro, "__name__", "") != "wait_for_acks":
            coro = getattr(coro, "cr_await", None)
        return coro is not None

    def waits() -> list[asyncio.Task[Any]]:
        return [t for t in asyncio.all_tasks() if waiting(t.get_coro())]

    port = plane.client.port
    assert port is not None
    _reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"GET /v1/wait?revision=1000&timeout=250 HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {TOKEN}\r\n\r\n".encode()
    )
    await writer.drain()
    await _until(lambda: len(waits()) == 1, "the wait to start")
    writer.close()
    await _until(lambda: not waits(), "the abandoned wait to stop")


# ----------------------------------------------------------------------------- limits


async def test_a_body_over_the_limit_gets_413_with_the_limit(plane: Plane) -> None:
    big = {"text": "#" * (70 * 1024)}
    status, body = await plane.call("POST", "/v1/apply", big)
    assert status == 413 and _is_error(body)
    assert "65536 bytes" in body["error"] and "--api-max-body-mib" in body["error"]

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: chunked
        yield b'{"text": "'
        for _ in range(100):
            yield b"#" * 1024
        yield b'"}'

    async with plane.client.post("/v1/apply", data=chunks(), headers=AUTH) as r:
        assert r.status == 413
        assert _is_error(await r.json())
    # Still serving.
    assert (await plane.call("GET", "/healthz"))[0] == 200


async def test_a_body_that_never_arrives_gets_408(plane: Plane) -> None:
    port = plane.client.port
    assert port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            f"POST /v1/apply HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{".encode()
        )
        await writer.drain()
        head, body = await _response(reader)
        assert head.startswith(b"HTTP/1.1 408")
        assert _is_error(json.loads(body))
    finally:
        writer.close()


@pytest.fixture
async def served(make_api: Factory) -> AsyncIterator[tuple[Api, int]]:
    """The Api on a real loopback port, through the same ``serve`` as ``tsunagi up``."""
    api = await make_api(idle_timeout=0.5)
    runner, port = await api.serve("127.0.0.1", 0)
    try:
        yield api, port
    finally:
        await runner.cleanup()


async def _get(port: int, path: str, source: str = "127.0.0.1") -> tuple[bytes, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    try:
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        await writer.drain()
        return await _response(reader)
    finally:
        writer.close()


async def _response(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """Read one whole response (bounded: a test must not hang)."""
    raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 20)
    length = next(
        int(line.split(b":")[1])
        for line in raw.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    return raw, await asyncio.wait_for(reader.readexactly(length), 20)


async def _until(check: Callable[[], bool], what: str, limit: float = 20.0) -> None:
    """Poll ``check``; fail after ``limit`` seconds (a bound, not a measurement)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not check():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def _closed_by_server(reader: asyncio.StreamReader) -> bool:
    return await asyncio.wait_for(reader.read(1), 20) == b""


async def test_idle_connections_are_closed(served: tuple[Api, int]) -> None:
    _, port = served
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        assert await _closed_by_server(reader)  # never sent a byte
    finally:
        writer.close()


async def test_a_client_that_sends_headers_slowly_is_cut_off(served: tuple[Api, int]) -> None:
    _, port = served
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")

        async def trickle() -> None:
            for _ in range(1000):  # one header line at a time, never the blank line
                writer.write(b"X-Slow: 1\r\n")
                await asyncio.sleep(0.05)

        dripping = asyncio.create_task(trickle())
        try:
            assert await _closed_by_server(reader)
        finally:
            dripping.cancel()
            await asyncio.gather(dripping, return_exceptions=True)
    finally:
        writer.close()


async def test_hundreds_of_idle_connections_do_not_starve_other_clients(
    make_api: Factory,
) -> None:
    # The default limits (256 per address; idle connections kept 30 s), so the hog's
    # connections stay open for the whole test.
    api = await make_api()
    runner, port = await api.serve("127.0.0.1", 0)
    hog: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        for _ in range(400):
            hog.append(
                await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.1", 0))
            )
        reads = [asyncio.ensure_future(r.read()) for r, _ in hog]  # until EOF
        refused = 400 - api.max_connections_per_client
        await _until(lambda: sum(t.done() for t in reads) >= refused, "the refusals")
        # Exactly the limit is kept open; the rest got a clear answer and were closed.
        answers = [t.result() for t in reads if t.done()]
        assert len(answers) == refused
        for raw in answers:
            head, _, body = raw.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 503")
            error = json.loads(body)
            assert _is_error(error) and "too many connections from 127.0.0.1" in error["error"]
            assert f"at most {api.max_connections_per_client}" in error["error"]

        # Another client is served at once, and so is the hog on a connection it holds.
        head, body = await _get(port, "/healthz", source="127.0.0.2")
        assert head.startswith(b"HTTP/1.1 200") and json.loads(body)["ok"] is True
        held = next(i for i, t in enumerate(reads) if not t.done())
        hog[held][1].write(
            f"GET /healthz HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        assert (await asyncio.wait_for(reads[held], 20)).startswith(b"HTTP/1.1 200")
    finally:
        for _, w in hog:
            w.close()
    try:
        # Once the hog lets go, its address is served again.
        async def served_again() -> bool:
            head, _ = await _get(port, "/healthz")
            return head.startswith(b"HTTP/1.1 200")

        for _ in range(200):
            if await served_again():
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("127.0.0.1 was not served again after closing its connections")
    finally:
        await runner.cleanup()


async def test_an_over_long_query_value_gets_the_apis_own_400(make_api: Factory) -> None:
    """A 20 KB query value (over aiohttp's 8 KiB request line) reaches the route and gets the
    API's JSON 400 naming the parameter, as a short bad value does."""
    import aiohttp

    api = await make_api()
    runner, port = await api.serve("127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{port}/v1/wait"
            async with session.get(url, params={"since": "n" * 20_000}, headers=AUTH) as r:
                assert r.status == 400 and r.content_type == "application/json", await r.text()
                body = await r.json()
    finally:
        await runner.cleanup()
    assert _is_error(body) and "since" in " ".join(body["errors"]), body
