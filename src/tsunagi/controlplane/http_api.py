"""The control plane's JSON HTTP API, used by the CLI and by agents.

Every route but ``/healthz`` needs ``Authorization: Bearer <token>``. Errors are JSON
``{"error": ..., "errors": [...]}`` with 400 for bad input, 401/403 for auth, 404 for missing.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from tsunagi.api import KINDS, Resource, ValidationFailed, load_documents
from tsunagi.controlplane.status import proxy_statuses, wait_for_acks
from tsunagi.mesh import World
from tsunagi.mesh.analysis import not_yet_enforced, undefined_subsets
from tsunagi.registry import KIND as INSTANCE_KIND
from tsunagi.registry import Instance, InvalidInstance, Registry
from tsunagi.store import Key, Store

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_ALIASES = {
    "vs": "VirtualService",
    "dr": "DestinationRule",
    "se": "ServiceEntry",
    "we": "WorkloadEntry",
    "gw": "Gateway",
    "pa": "PeerAuthentication",
    "ap": "AuthorizationPolicy",
    "workload": INSTANCE_KIND,
    "workloads": INSTANCE_KIND,
    "instance": INSTANCE_KIND,
    "instances": INSTANCE_KIND,
}


def resolve_kind(text: str) -> str | None:
    """``vs``, ``virtualservice``, ``VirtualServices`` → ``VirtualService``."""
    low = text.lower()
    if low in _ALIASES:
        return _ALIASES[low]
    for kind in [*KINDS, INSTANCE_KIND]:
        if low in (kind.lower(), kind.lower() + "s"):
            return kind
    return None


def _error(status: int, message: str, errors: list[str] | None = None) -> web.Response:
    return web.json_response({"error": message, "errors": errors or [message]}, status=status)


def _record_json(key: Key, record: Any) -> dict[str, Any]:
    kind, ns, name = key
    return {
        "kind": kind,
        "namespace": ns,
        "name": name,
        "revision": record.revision,
        "document": record.document,
    }


class Api:
    """Handlers bound to the control plane's parts."""

    def __init__(
        self,
        store: Store,
        registry: Registry,
        pusher: Any,
        cache: Any,
        token: str,
        xds_address: tuple[str, int],
    ) -> None:
        self.store = store
        self.registry = registry
        self.pusher = pusher
        self.cache = cache
        self.token = token
        self.xds_address = xds_address

    @web.middleware
    async def auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == "/healthz":
            return await handler(request)
        given = request.headers.get("Authorization", "")
        if not given.startswith("Bearer "):
            return _error(
                401,
                "missing token: pass --token, set TSUNAGI_TOKEN, or use the "
                "state directory that `tsunagi up` wrote",
            )
        if not hmac.compare_digest(given.removeprefix("Bearer ").strip(), self.token):
            return _error(403, "wrong token for this control plane")
        return await handler(request)

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.auth], client_max_size=16 * 1024 * 1024)
        app.add_routes(
            [
                web.get("/healthz", self.healthz),
                web.get("/v1/bootstrap", self.bootstrap),
                web.post("/v1/apply", self.apply),
                web.post("/v1/delete", self.delete),
                web.get("/v1/resources", self.list_resources),
                web.post("/v1/instances", self.register),
                web.post("/v1/instances/{namespace}/{name}/heartbeat", self.heartbeat),
                web.delete("/v1/instances/{namespace}/{name}", self.deregister),
                web.get("/v1/proxies", self.proxies),
                web.get("/v1/wait", self.wait),
            ]
        )
        return app

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "revision": self.store.contents().revision})

    async def bootstrap(self, request: web.Request) -> web.Response:
        host, port = self.xds_address
        return web.json_response({"xds": {"host": host, "port": port}})

    async def _body(self, request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError:
            raise web.HTTPBadRequest(text="request body must be JSON") from None
        if not isinstance(body, dict):
            raise web.HTTPBadRequest(text="request body must be a JSON object")
        return body

    async def apply(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        filename = str(body.get("filename") or "<stdin>")
        try:
            resources = load_documents(str(body.get("text") or ""), filename)
        except ValidationFailed as e:
            return _error(
                400,
                f"{len(e.errors)} error(s) in {filename}; nothing was applied",
                [str(x) for x in e.errors],
            )
        if not resources:
            return _error(400, f"{filename}: no resources found; nothing was applied")
        contents = self.store.contents()
        results = []
        puts = []
        for r in resources:
            current = contents.records.get(r.key)
            doc = dict(r.document)
            if current is None:
                action = "created"
            elif current.document == doc:
                action = "unchanged"
            else:
                action = "configured"
            results.append(
                {"kind": r.kind, "namespace": r.namespace, "name": r.name, "action": action}
            )
            if action != "unchanged":
                puts.append((r.key, doc))
        warnings = self._warnings(resources)
        revision = contents.revision
        if puts and not body.get("dry_run"):
            revision = await self.store.commit(puts)
        return web.json_response(
            {
                "revision": revision,
                "results": results,
                "warnings": warnings,
                "dry_run": bool(body.get("dry_run")),
            }
        )

    def _warnings(self, applied: list[Resource]) -> list[str]:
        world: World = self.pusher.world
        keys = {r.key for r in applied}
        others = [r for r in world.resources if r.key not in keys]
        candidate = World.build(world.revision, [*others, *applied], self.registry.instances())
        return undefined_subsets(candidate, applied) + not_yet_enforced(applied)

    async def delete(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        keys: list[Key] = []
        if "text" in body:
            filename = str(body.get("filename") or "<stdin>")
            try:
                keys = [r.key for r in load_documents(str(body["text"]), filename)]
            except ValidationFailed as e:
                return _error(
                    400,
                    f"{len(e.errors)} error(s) in {filename}; nothing was deleted",
                    [str(x) for x in e.errors],
                )
        else:
            kind = resolve_kind(str(body.get("kind", "")))
            if kind is None:
                return _error(
                    400, f"unknown kind {body.get('kind')!r}; try one of: " + ", ".join(KINDS)
                )
            keys = [(kind, str(body.get("namespace") or "default"), str(body.get("name", "")))]
        contents = self.store.contents()
        missing = [k for k in keys if k not in contents.records]
        if missing:
            return _error(
                404,
                "not found; nothing was deleted",
                [f"{k[0]} {k[1]}/{k[2]} not found" for k in missing],
            )
        revision = await self.store.commit([], keys)
        return web.json_response(
            {
                "revision": revision,
                "results": [
                    {"kind": k[0], "namespace": k[1], "name": k[2], "action": "deleted"}
                    for k in keys
                ],
            }
        )

    async def list_resources(self, request: web.Request) -> web.Response:
        q = request.query
        kind = None
        if q.get("kind"):
            kind = resolve_kind(q["kind"])
            if kind is None:
                return _error(
                    400,
                    f"unknown kind {q['kind']!r}; try one of: " + ", ".join([*KINDS, "workloads"]),
                )
        ns, name = q.get("namespace"), q.get("name")
        items = [
            _record_json(key, rec)
            for key, rec in sorted(self.store.contents().records.items())
            if (kind is None or key[0] == kind)
            and (not ns or key[1] == ns)
            and (not name or key[2] == name)
        ]
        if name and not items:
            return _error(404, f"{kind} {ns or 'default'}/{name} not found")
        return web.json_response({"revision": self.store.contents().revision, "items": items})

    async def register(self, request: web.Request) -> web.Response:
        try:
            inst = Instance.from_document(await self._body(request))
        except InvalidInstance as e:
            return _error(400, f"invalid instance: {e}")
        revision = await self.registry.register(inst)
        return web.json_response({"revision": revision, "ttl": self.registry.ttl})

    async def heartbeat(self, request: web.Request) -> web.Response:
        ns, name = request.match_info["namespace"], request.match_info["name"]
        if not self.registry.heartbeat(ns, name):
            return _error(404, f"instance {ns}/{name} is not registered; register again")
        return web.json_response({"ok": True})

    async def deregister(self, request: web.Request) -> web.Response:
        ns, name = request.match_info["namespace"], request.match_info["name"]
        if not await self.registry.deregister(ns, name):
            return _error(404, f"instance {ns}/{name} is not registered")
        return web.json_response({"revision": self.store.contents().revision})

    async def proxies(self, request: web.Request) -> web.Response:
        return web.json_response({"proxies": proxy_statuses(self.cache)})

    async def wait(self, request: web.Request) -> web.Response:
        try:
            revision = int(request.query.get("revision", "0"))
            timeout = float(request.query.get("timeout", "30"))
            since = float(request.query.get("since", "0")) or time.time()
        except ValueError:
            return _error(400, "revision, timeout and since must be numbers")
        try:
            result = await asyncio.wait_for(
                wait_for_acks(self.cache, self.pusher, revision), timeout=timeout
            )
        except TimeoutError:
            return web.json_response(
                {
                    "complete": False,
                    "elapsed_ms": (time.time() - since) * 1000,
                    "proxies": proxy_statuses(self.cache),
                },
                status=504,
            )
        result["elapsed_ms"] = (time.time() - since) * 1000
        return web.json_response(result)
