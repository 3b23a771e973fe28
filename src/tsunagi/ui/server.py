"""The dashboard's web server (``tsunagi up --dashboard-port``): the page, its static files
and the JSON it polls.

Who may look: only loopback clients that signed in. ``tsunagi dashboard`` asks this server
for a login code (``POST /api/login-code`` with ``Authorization: Bearer <API token>``) and
opens ``/?code=...``: the code is random, single use and expires in a minute (see
:mod:`tsunagi.ui.sessions`), so the API token, which controls the whole mesh, never appears
in a URL or a browser's command line. The page swaps the code for a random session id in a
cookie (HttpOnly, SameSite=Strict, named after this port because browsers do not separate
cookies by port) and redirects to ``/`` so the code leaves the address bar. The API token
itself no longer signs a browser in; scripts may still send it as a bearer header.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

from aiohttp import web

from tsunagi.telemetry.graph import graph_view
from tsunagi.telemetry.listen import listen_error
from tsunagi.telemetry.panels import panel
from tsunagi.telemetry.views import MetricsViews
from tsunagi.ui.sessions import SignIns

log = logging.getLogger("tsunagi.dashboard")

COOKIE_PREFIX = "tsunagi_dashboard_"
STATIC = resources.files("tsunagi.ui") / "static"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Sources:
    """What the dashboard shows, as the control plane provides it."""

    views: MetricsViews
    config: Callable[[], list[dict[str, Any]]]
    """Stored resources with their warnings and translation errors."""
    proxies: Callable[[], Awaitable[list[dict[str, Any]]]]
    """Every connected proxy's sync state (``GET /v1/proxies``): a coroutine, as it may ask
    other replicas for theirs."""
    spans: Any = None
    """A :class:`~tsunagi.telemetry.spans.SpanStore`, or None when tracing is off."""


def cookie_name(port: int) -> str:
    """The session cookie's name for the dashboard on ``port``."""
    return f"{COOKIE_PREFIX}{port}"


def _is_loopback(remote: str | None) -> bool:
    try:
        return remote is not None and ipaddress.ip_address(remote).is_loopback
    except ValueError:
        return False


def _number(request: web.Request, name: str, default: float, low: float, high: float) -> float:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise web.HTTPBadRequest(text=f"{name}: {raw!r} is not a number") from None
    if math.isnan(value) or not low <= value <= high:
        raise web.HTTPBadRequest(text=f"{name}: must be from {low:g} to {high:g}")
    return value


class Dashboard:
    """The dashboard app for one control plane."""

    def __init__(self, token: str, sources: Sources, sign_ins: SignIns | None = None) -> None:
        self.token = token
        self.sources = sources
        self.sign_ins = sign_ins or SignIns()
        self.cookie = cookie_name(0)
        """Set to the bound port's name by :meth:`serve`."""

    def _bearer_ok(self, request: web.Request) -> bool:
        scheme, _, bearer = request.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            bearer.strip().encode(), self.token.encode()
        )

    @web.middleware
    async def guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Loopback clients with a session (from a login code) or the bearer token only."""
        if not _is_loopback(request.remote):
            return web.Response(status=403, text="the dashboard answers loopback clients only\n")
        if request.path.startswith("/static/"):
            return await handler(request)  # the page's scripts and styles hold no data
        code = request.query.get("code")
        if code is not None and request.path == "/":
            session = self.sign_ins.redeem(code)
            if session is None:
                return self._denied("this sign-in code is expired or was used already")
            redirect = web.HTTPFound("/")  # drops the code from the address bar and history
            redirect.set_cookie(self.cookie, session, httponly=True, samesite="Strict", path="/")
            raise redirect
        if request.path == "/api/login-code":
            # Codes only for the API token's holder, sent as a header (never in a URL).
            if request.method != "POST" or not self._bearer_ok(request):
                return self._denied("a login code needs POST with the API token as bearer")
            return await handler(request)
        if self.sign_ins.check(request.cookies.get(self.cookie, "")) or self._bearer_ok(request):
            return await handler(request)
        return self._denied("not signed in")

    @staticmethod
    def _denied(why: str) -> web.Response:
        return web.Response(
            status=401,
            text=f"{why}: run `tsunagi dashboard` and open the URL it prints "
            "(its code works once, within a minute)\n",
        )

    async def login_code(self, request: web.Request) -> web.Response:
        """A fresh single-use code for ``/?code=``."""
        return _json({"code": self.sign_ins.new_code(), "expires_in": self.sign_ins.code_ttl})

    def app(self) -> web.Application:
        """The routes."""
        app = web.Application(middlewares=[self.guard])
        app.router.add_get("/", self.index)
        app.router.add_post("/api/login-code", self.login_code)
        app.router.add_get("/static/{path:.+}", self.static)
        app.router.add_get("/api/graph", self.graph)
        app.router.add_get("/api/panel", self.panel)
        app.router.add_get("/api/config", self.config)
        app.router.add_get("/api/proxies", self.proxies)
        app.router.add_get("/api/traces", self.traces)
        app.router.add_get("/api/traces/{trace_id}", self.trace)
        return app

    async def serve(self, host: str, port: int) -> tuple[web.AppRunner, int]:
        """Listen on ``host:port`` (0: any free port); the runner and the port."""
        runner = web.AppRunner(self.app(), access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as e:
            await runner.cleanup()
            raise listen_error(e, port, "--dashboard-port") from e
        except BaseException:
            await runner.cleanup()
            raise
        bound = runner.addresses[0][1] if runner.addresses else port
        self.cookie = cookie_name(bound)
        return runner, bound

    async def index(self, request: web.Request) -> web.Response:
        html = (STATIC / "index.html").read_text()
        return web.Response(text=html, content_type="text/html", headers=_NO_STORE)

    async def static(self, request: web.Request) -> web.StreamResponse:
        parts = request.match_info["path"].split("/")
        if any(p in ("", ".", "..") or p.startswith(".") for p in parts):
            raise web.HTTPNotFound()
        node = STATIC
        for p in parts:
            node = node / p
        if not node.is_file():
            raise web.HTTPNotFound()
        kind = {"js": "text/javascript", "css": "text/css", "svg": "image/svg+xml"}.get(
            parts[-1].rsplit(".", 1)[-1], "application/octet-stream"
        )
        return web.Response(body=node.read_bytes(), content_type=kind)

    async def graph(self, request: web.Request) -> web.Response:
        window = _number(request, "window", 60, 1, 3600)
        return _json(await graph_view(self.sources.views, window))

    async def panel(self, request: web.Request) -> web.Response:
        kind = request.query.get("kind", "service")
        if kind not in ("service", "workload"):
            raise web.HTTPBadRequest(text="kind: service or workload")
        name = request.query.get("name", "")
        if not name:
            raise web.HTTPBadRequest(text="name: required")
        window = _number(request, "window", 600, 10, 3600)
        step = _number(request, "step", 10, 1, 3600)
        return _json(
            await panel(
                self.sources.views,
                kind,  # type: ignore[arg-type]
                request.query.get("namespace", "default"),
                name,
                window,
                step,
            )
        )

    async def config(self, request: web.Request) -> web.Response:
        return _json({"items": self.sources.config()})

    async def proxies(self, request: web.Request) -> web.Response:
        return _json({"proxies": await self.sources.proxies()})

    async def traces(self, request: web.Request) -> web.Response:
        spans = self.sources.spans
        if spans is None:
            return _json({"enabled": False, "services": [], "traces": []})
        from tsunagi.telemetry.spans import TraceQuery

        service = request.query.get("service", "").lower()
        limit = int(_number(request, "limit", 20, 1, 500))
        lookback = int(_number(request, "lookback", 3600, 1, 86400 * 7) * 1000)
        found = spans.traces(
            TraceQuery(
                end_ts=int(time.time() * 1000),
                lookback=lookback,
                service_name=service,
                limit=limit,
            )
        )
        return _json(
            {
                "enabled": True,
                "services": spans.services(),
                "traces": [_summary(t) for t in found],
            }
        )

    async def trace(self, request: web.Request) -> web.Response:
        spans = self.sources.spans
        found = spans.trace(request.match_info["trace_id"]) if spans is not None else []
        if not found:
            raise web.HTTPNotFound(text="no such trace (it may have been evicted)")
        return _json({"spans": [s.to_json() for s in found]})


_NO_STORE = {"Cache-Control": "no-store"}


def _summary(trace: list[Any]) -> dict[str, Any]:
    """One line of the trace list: id, root span, start, duration, services, span count."""
    root = next((s for s in trace if s.parent_id is None), trace[0])
    start = min((s.timestamp for s in trace if s.timestamp), default=0)
    end = max(((s.timestamp or 0) + (s.duration or 0) for s in trace), default=0)
    return {
        "trace_id": root.trace_id,
        "root": f"{root.service}: {root.name}",
        "start_us": start,
        "duration_us": max(0, end - start),
        "services": sorted({s.service for s in trace if s.service}),
        "spans": len(trace),
        "errors": sum(1 for s in trace if "error" in s.tags),
    }


def _json(doc: object) -> web.Response:
    return web.Response(
        text=json.dumps(doc, separators=(",", ":")),
        content_type="application/json",
        headers=_NO_STORE,
    )
