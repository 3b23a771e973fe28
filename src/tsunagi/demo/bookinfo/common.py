"""Plumbing shared by the four Bookinfo services.

Everything here is deliberately service-agnostic: configuration from the
environment, the ``x-served-by`` response header, context-header propagation,
a forgiving downstream JSON client, and a serve loop that exits cleanly on
SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

log = logging.getLogger("tsunagi.demo.bookinfo")

#: Headers a service copies from its inbound request onto every outbound call.
#: Envoy can only stitch spans into one trace, and route on ``end-user``, if the
#: application carries these across its own hop - the sidecar cannot do it.
#: The list is Istio's Bookinfo list (tracing headers of every common tracer, then the
#: user's identity and session: ``end-user``, ``cookie``, ``authorization``, ``jwt``), so
#: rules that match or hash on any of them work two hops deep, as with Istio's sample.
FORWARDED_HEADERS: tuple[str, ...] = (
    "x-request-id",
    "traceparent",
    "tracestate",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "b3",
    "x-ot-span-context",
    "x-datadog-trace-id",
    "x-datadog-parent-id",
    "x-datadog-sampling-priority",
    "x-cloud-trace-context",
    "grpc-trace-bin",
    "sw8",
    "end-user",
    "user-agent",
    "cookie",
    "authorization",
    "jwt",
)

#: Every service listens on this port *inside the mesh*; the sidecar maps the
#: short name (``details:9080``) to wherever the instance really listens.
MESH_PORT = 9080

#: How many recent requests ``GET /stats`` shows.
RECENT_REQUESTS = 50


@dataclass(frozen=True)
class ServiceConfig:
    """Identity and settings of one running service instance."""

    name: str
    version: str
    port: int
    hostname: str
    #: Overrides every downstream call's timeout when set (``DOWNSTREAM_TIMEOUT``); by
    #: default each call uses the timeout Istio's Bookinfo hard-codes for it.
    timeout_s: float | None = None
    #: The instance's name (``POD_NAME``, which ``tsunagi run`` sets), else the host name.
    pod: str = ""

    @property
    def served_by(self) -> str:
        """Value of the ``x-served-by`` header, e.g. ``reviews-v2``."""
        return f"{self.name}-{self.version}"

    @property
    def instance(self) -> str:
        """Human-readable instance id: ``hostname:port``."""
        return f"{self.hostname}:{self.port}"

    @classmethod
    def from_env(cls, name: str, env: Mapping[str, str] | None = None) -> ServiceConfig:
        """Build the config from ``PORT`` (required), ``SERVICE_VERSION``, ``POD_NAME`` and
        ``DOWNSTREAM_TIMEOUT`` (seconds; default: Istio's per-call timeouts).

        Raises ``ValueError`` with a readable message when ``PORT`` is missing
        or malformed.
        """
        env = os.environ if env is None else env
        raw_port = env.get("PORT", "").strip()
        if not raw_port:
            raise ValueError("environment variable PORT is required")
        try:
            port = int(raw_port)
        except ValueError:
            raise ValueError(f"PORT must be an integer, got {raw_port!r}") from None
        if not 0 < port < 65536:
            raise ValueError(f"PORT out of range: {port}")
        raw_timeout = env.get("DOWNSTREAM_TIMEOUT", "").strip()
        try:
            timeout_s = float(raw_timeout) if raw_timeout else None
        except ValueError:
            raise ValueError(f"DOWNSTREAM_TIMEOUT must be a number, got {raw_timeout!r}") from None
        if timeout_s is not None and not timeout_s > 0:
            raise ValueError(f"DOWNSTREAM_TIMEOUT must be positive, got {raw_timeout!r}")
        hostname = socket.gethostname()
        return cls(
            name=name,
            version=env.get("SERVICE_VERSION", "").strip() or "v1",
            port=port,
            hostname=hostname,
            timeout_s=timeout_s,
            pod=env.get("POD_NAME", "").strip() or hostname,
        )


class Stats:
    """What this instance received: a request count and the most recent requests."""

    def __init__(self) -> None:
        self.requests = 0
        self.by_path: dict[str, int] = {}
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT_REQUESTS)

    def record(self, request: web.Request) -> None:
        """Count ``request`` and remember its method, path and headers."""
        self.requests += 1
        self.by_path[request.path] = self.by_path.get(request.path, 0) + 1
        headers = {k.lower(): v for k, v in request.headers.items()}
        self.recent.append({"method": request.method, "path": request.path_qs, "headers": headers})


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

CONFIG_KEY = web.AppKey("config", ServiceConfig)
SESSION_KEY = web.AppKey("session", aiohttp.ClientSession)
STATS_KEY = web.AppKey("stats", Stats)


def service_url(service: str, path: str) -> str:
    """Plain in-mesh URL of ``service``; the sidecar (HTTP_PROXY) resolves it."""
    return f"http://{service}:{MESH_PORT}{path}"


def forwarded_headers(request: web.Request) -> dict[str, str]:
    """The subset of ``request``'s headers that must travel downstream."""
    return {name: request.headers[name] for name in FORWARDED_HEADERS if name in request.headers}


@dataclass(frozen=True)
class Downstream:
    """Outcome of one downstream call: either ``data`` or an ``error`` saying why not."""

    data: Any = None
    #: Why the call failed, for people: ``"HTTP 503: no healthy upstream"``,
    #: ``"timed out after 3 s"``. The page shows Istio's message and this as the cause.
    error: str | None = None
    status: int | None = None
    served_by: str | None = None

    @property
    def ok(self) -> bool:
        """True when the call returned a 2xx JSON body."""
        return self.error is None


async def get_json(
    request: web.Request,
    url: str,
    extra_headers: Mapping[str, str] | None = None,
    *,
    timeout_s: float,
    attempts: int = 1,
) -> Downstream:
    """GET ``url`` with the propagated headers (plus ``extra_headers``, which win), giving
    each attempt ``timeout_s`` seconds (``DOWNSTREAM_TIMEOUT`` overrides it) and trying up
    to ``attempts`` times while the answer is not a 2xx; never raises for network or HTTP
    failures, so a failed dependency degrades one section of a page, not the whole page.
    """
    session = request.app[SESSION_KEY]
    timeout_s = request.app[CONFIG_KEY].timeout_s or timeout_s
    headers = forwarded_headers(request)
    headers.update(extra_headers or {})
    result = Downstream(error="not tried")
    for _ in range(max(1, attempts)):
        result = await _get_once(session, url, headers, timeout_s)
        if result.ok:
            break
    return result


async def _get_once(
    session: aiohttp.ClientSession, url: str, headers: Mapping[str, str], timeout_s: float
) -> Downstream:
    try:
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        async with session.get(url, headers=headers, timeout=timeout) as resp:
            served_by = resp.headers.get("x-served-by")
            if resp.status >= 300:
                body = (await resp.text(errors="replace")).strip().splitlines()
                detail = f"HTTP {resp.status}"
                if body and body[0]:
                    detail += f": {body[0][:120]}"
                return Downstream(error=detail, status=resp.status, served_by=served_by)
            data = await resp.json(content_type=None)
            return Downstream(data=data, status=resp.status, served_by=served_by)
    except TimeoutError:
        return Downstream(error=f"timed out after {timeout_s:g} s")
    except aiohttp.ClientError as exc:
        return Downstream(error=f"{type(exc).__name__}: {exc}")
    except ValueError:  # a 2xx whose body is not JSON
        return Downstream(error="malformed response")


async def _client_session(app: web.Application) -> AsyncIterator[None]:
    """Own one pooled client per process; ``trust_env`` makes it honour
    ``HTTP_PROXY``/``NO_PROXY``, which is how traffic enters the sidecar. Timeouts are per
    call (see :func:`get_json`)."""
    async with aiohttp.ClientSession(trust_env=True) as session:
        app[SESSION_KEY] = session
        yield


async def _stamp_served_by(request: web.Request, response: web.StreamResponse) -> None:
    """Tag every response - including 404s and errors - with who produced it."""
    response.headers["x-served-by"] = request.app[CONFIG_KEY].served_by


@web.middleware
async def _count(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Record every request but the ones asking for the record."""
    if request.path != "/stats":
        request.app[STATS_KEY].record(request)
    return await handler(request)


async def stats(request: web.Request) -> web.Response:
    """``GET /stats``: how many requests this instance received (in all and per path) and
    the last few, with their headers: what the mesh delivered, seen from the app (mirrored
    copies, rewritten paths, edited headers)."""
    config = request.app[CONFIG_KEY]
    record = request.app[STATS_KEY]
    return web.json_response(
        {
            "service": config.name,
            "version": config.version,
            "pod": config.pod,
            "requests": record.requests,
            "by_path": record.by_path,
            "recent": list(record.recent),
        }
    )


async def health(request: web.Request) -> web.Response:
    """Liveness/readiness probe."""
    config = request.app[CONFIG_KEY]
    return web.json_response({"status": "ok", "service": config.name, "version": config.version})


def base_app(config: ServiceConfig) -> web.Application:
    """An application with the shared pieces wired in: config, HTTP client,
    ``x-served-by``, ``GET /health`` and ``GET /stats``."""
    app = web.Application(middlewares=[_count])
    app[CONFIG_KEY] = config
    app[STATS_KEY] = Stats()
    app.cleanup_ctx.append(_client_session)
    app.on_response_prepare.append(_stamp_served_by)
    app.router.add_get("/health", health)
    app.router.add_get("/stats", stats)
    return app


def parse_id(request: web.Request) -> int:
    """The integer ``{id}`` path parameter, or a 400 JSON error."""
    raw = request.match_info["id"]
    try:
        return int(raw)
    except ValueError:
        raise web.HTTPBadRequest(
            text='{"error": "product id must be an integer"}', content_type="application/json"
        ) from None


async def serve(app: web.Application, config: ServiceConfig) -> None:
    """Serve ``app`` on 127.0.0.1:PORT until SIGTERM or SIGINT arrives."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # A short shutdown timeout: the mesh drains traffic in Envoy, so the app
    # only needs to finish requests already in flight.
    runner = web.AppRunner(app, shutdown_timeout=2.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", config.port)
        await site.start()
        # The log format already names the service; say where and which instance.
        log.info("listening on http://127.0.0.1:%d (instance %s)", config.port, config.instance)
        await stop.wait()
        log.info("shutting down")
    finally:
        await runner.cleanup()
