"""Zipkin's v2 HTTP API over a :class:`~tsunagi.telemetry.spans.SpanStore`.

``POST /api/v2/spans`` takes JSON or protobuf (``Content-Type: application/x-protobuf``),
as Envoy's Zipkin tracer sends (``HTTP_JSON`` / ``HTTP_PROTO``) and answers 202 as Zipkin
does; a body that does not decode is answered 400 naming the bad field and nothing of it is
stored. ``?span_id_byte_order=little`` reads the span ids of Envoy's protobuf (see
:mod:`tsunagi.telemetry.zipkin_proto`). The query routes (``/services``, ``/spans``,
``/remoteServices``, ``/traces``, ``/trace/{id}``) follow Zipkin's parameters and defaults,
so Grafana's Zipkin data source and other Zipkin clients can read from it. Like Zipkin, it
asks for no credentials: it listens on the control plane's host (loopback by default).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from typing import Any

from aiohttp import web

from tsunagi.telemetry import zipkin_json, zipkin_proto
from tsunagi.telemetry.spans import DEFAULT_LIMIT, DEFAULT_LOOKBACK_MS, Span, SpanStore, TraceQuery
from tsunagi.telemetry.zipkin_json import BadSpans

MAX_BODY = 16 * 1024 * 1024
"""Largest POST body, in bytes (after decompression)."""


class BadQuery(ValueError):
    """A query parameter that is missing or malformed."""


def app(store: SpanStore, sink: Callable[[Iterable[Span]], None]) -> web.Application:
    """The aiohttp application: queries read ``store``; posted spans go to ``sink`` (which
    stores them and forwards them when ``--trace-export`` is set)."""

    async def post_spans(request: web.Request) -> web.Response:
        body = await request.read()
        ctype = request.content_type
        order = request.query.get("span_id_byte_order", "big")
        try:
            if order not in ("big", "little"):
                raise BadSpans(f"span_id_byte_order must be big or little, not {order!r}")
            if ctype == "application/x-protobuf":
                spans = zipkin_proto.decode(body, little_endian_span_ids=order == "little")
            elif ctype == "application/x-thrift":
                raise BadSpans(
                    "Zipkin v1 Thrift is not supported: send application/json (a JSON list of "
                    "Zipkin v2 spans) or application/x-protobuf (zipkin.proto3.ListOfSpans)"
                )
            else:
                # Any other type is read as JSON, as Zipkin does (curl -d sends a form type).
                spans = zipkin_json.decode(body)
        except BadSpans as e:
            return _error(400, f"cannot accept these spans: {e}")
        sink(spans)
        return web.Response(status=202)

    async def services(request: web.Request) -> web.Response:
        return _json(store.services())

    async def span_names(request: web.Request) -> web.Response:
        return _json(store.span_names(_service(request)))

    async def remote_services(request: web.Request) -> web.Response:
        return _json(store.remote_services(_service(request)))

    async def traces(request: web.Request) -> web.Response:
        query = parse_query(request.query, now_ms=int(time.time() * 1000))
        return _json([[s.to_json() for s in t] for t in store.traces(query)])

    async def trace(request: web.Request) -> web.Response:
        trace_id = request.match_info["trace_id"]
        spans = store.trace(trace_id)
        if not spans:
            return _error(404, f"trace {trace_id} not found")
        return _json([s.to_json() for s in spans])

    @web.middleware
    async def bad_queries(request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            response: web.StreamResponse = await handler(request)
            return response
        except BadQuery as e:
            return _error(400, str(e))

    application = web.Application(client_max_size=MAX_BODY, middlewares=[bad_queries])
    application.add_routes(
        [
            web.post("/api/v2/spans", post_spans),
            web.get("/api/v2/services", services),
            web.get("/api/v2/spans", span_names),
            web.get("/api/v2/remoteServices", remote_services),
            web.get("/api/v2/traces", traces),
            web.get("/api/v2/trace/{trace_id}", trace),
        ]
    )
    return application


async def serve(
    store: SpanStore, sink: Callable[[Iterable[Span]], None], host: str, port: int
) -> tuple[web.AppRunner, int]:
    """Listen on ``host:port`` (0: a free port); return the runner (``await
    runner.cleanup()`` stops it) and the port."""
    runner = web.AppRunner(app(store, sink), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner, (runner.addresses[0][1] if runner.addresses else port)


def parse_query(params: Any, now_ms: int) -> TraceQuery:
    """``GET /api/v2/traces``'s parameters with Zipkin's defaults (``endTs`` now,
    ``lookback`` one day, ``limit`` 10). Raises :class:`BadQuery`."""
    min_d = _int(params, "minDuration")
    max_d = _int(params, "maxDuration")
    if max_d is not None and min_d is None:
        raise BadQuery("maxDuration is only valid with minDuration (Zipkin's rule)")
    limit = _int(params, "limit")
    if limit is not None and limit < 1:
        raise BadQuery("limit must be at least 1")
    end_ts = _int(params, "endTs")
    lookback = _int(params, "lookback")
    return TraceQuery(
        end_ts=now_ms if end_ts is None else end_ts,
        lookback=DEFAULT_LOOKBACK_MS if lookback is None else lookback,
        service_name=params.get("serviceName", "").lower(),
        remote_service_name=params.get("remoteServiceName", "").lower(),
        span_name=params.get("spanName", "").lower(),
        annotation_query=_annotation_query(params.get("annotationQuery", "")),
        min_duration=min_d,
        max_duration=max_d,
        limit=DEFAULT_LIMIT if limit is None else limit,
    )


def _annotation_query(text: str) -> dict[str, str]:
    """``http.path=/foo and error`` -> ``{"http.path": "/foo", "error": ""}``."""
    terms: dict[str, str] = {}
    for term in text.split(" and "):
        term = term.strip()
        if term:
            key, _, value = term.partition("=")
            terms[key.strip()] = value.strip()
    return terms


def _int(params: Any, name: str) -> int | None:
    raw = params.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise BadQuery(f"{name}: {raw!r} is not an integer") from None
    if value < 0:
        raise BadQuery(f"{name}: must not be negative")
    return value


def _service(request: web.Request) -> str:
    name = request.query.get("serviceName", "")
    if not name:
        raise BadQuery("serviceName is required (GET /api/v2/services lists them)")
    return name.lower()


def _json(doc: object) -> web.Response:
    return web.Response(
        text=json.dumps(doc, separators=(",", ":")), content_type="application/json"
    )


def _error(status: int, message: str) -> web.Response:
    return web.Response(status=status, text=message + "\n", content_type="text/plain")
