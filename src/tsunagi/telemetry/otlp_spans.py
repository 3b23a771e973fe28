"""OpenTelemetry (OTLP) spans to and from :class:`~tsunagi.telemetry.spans.Span`.

The mapping is the OpenTelemetry specification's for its Zipkin exporter, so an app's own
spans look in the Zipkin API like any Zipkin tracer's: the resource's ``service.name`` is
the local service; ids are hex (a 128-bit trace id with a zero upper half becomes Zipkin's
64-bit form, so it joins Envoy's 64-bit trace); SERVER/CLIENT/PRODUCER/CONSUMER keep their
kind and INTERNAL becomes a local span; attributes become tags (arrays as JSON lists); the
status becomes ``otel.status_code`` and, for errors, the ``error`` tag holding the
description; events become annotations; the instrumentation scope becomes
``otel.scope.name``/``otel.scope.version``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1 import trace_pb2

# xds-protos ships an old copy of these modules at the same paths; if pip unpacked it last,
# OTLP requests would fail deep inside decoding. Say so at start-up instead.
if not hasattr(common_pb2, "InstrumentationScope"):  # pragma: no cover - an install problem
    raise ImportError(
        "OpenTelemetry's protos were overwritten by xds-protos' older copy: run "
        "`pip install --no-deps --force-reinstall opentelemetry-proto` with the version "
        "pinned in tsunagi's pyproject.toml (`make` does this)"
    )

from tsunagi.telemetry.spans import (
    Annotation,
    Endpoint,
    Kind,
    Span,
    normalize_span_id,
    normalize_trace_id,
)

_KIND_FROM_OTLP: dict[int, Kind] = {
    trace_pb2.Span.SPAN_KIND_SERVER: "SERVER",
    trace_pb2.Span.SPAN_KIND_CLIENT: "CLIENT",
    trace_pb2.Span.SPAN_KIND_PRODUCER: "PRODUCER",
    trace_pb2.Span.SPAN_KIND_CONSUMER: "CONSUMER",
}
_KIND_TO_OTLP = {v: k for k, v in _KIND_FROM_OTLP.items()}
_STATUS = {trace_pb2.Status.STATUS_CODE_OK: "OK", trace_pb2.Status.STATUS_CODE_ERROR: "ERROR"}


def from_request(request: ExportTraceServiceRequest) -> tuple[list[Span], list[str]]:
    """Convert an ``Export`` request. Returns the spans and, for each span that could not be
    converted (a missing or malformed id), a reason naming it; the others are kept, as the
    OTLP protocol's partial success allows."""
    spans: list[Span] = []
    errors: list[str] = []
    for r, rs in enumerate(request.resource_spans):
        resource = {kv.key: _text(kv.value) for kv in rs.resource.attributes}
        service = resource.get("service.name", "").lower()
        for s_i, ss in enumerate(rs.scope_spans):
            scope_tags = {}
            if ss.scope.name:
                scope_tags["otel.scope.name"] = ss.scope.name
            if ss.scope.version:
                scope_tags["otel.scope.version"] = ss.scope.version
            for i, span in enumerate(ss.spans):
                where = f"resource_spans[{r}].scope_spans[{s_i}].spans[{i}]"
                try:
                    spans.append(_span(span, service, scope_tags))
                except ValueError as e:
                    errors.append(f"{where}: {e}")
    return spans, errors


def _span(p: trace_pb2.Span, service: str, scope_tags: dict[str, str]) -> Span:
    if len(p.trace_id) != 16 or len(p.span_id) != 8:
        raise ValueError("trace_id must be 16 bytes and span_id 8 bytes")
    if p.parent_span_id and len(p.parent_span_id) != 8:
        raise ValueError("parent_span_id must be 8 bytes")
    attrs = {kv.key: _text(kv.value) for kv in p.attributes}
    tags = {**scope_tags, **attrs}
    status = _STATUS.get(p.status.code)
    if status:
        tags["otel.status_code"] = status
        if status == "ERROR":
            tags["error"] = p.status.message
    kind = _KIND_FROM_OTLP.get(p.kind)
    start_us = p.start_time_unix_nano // 1000
    duration = 0
    if p.end_time_unix_nano and p.end_time_unix_nano >= p.start_time_unix_nano:
        # Zipkin rounds durations under a microsecond up to one.
        duration = max(1, (p.end_time_unix_nano - p.start_time_unix_nano) // 1000)
    return Span(
        trace_id=normalize_trace_id(p.trace_id.hex()),
        id=normalize_span_id(p.span_id.hex()),
        parent_id=normalize_span_id(p.parent_span_id.hex()) if p.parent_span_id else None,
        name=p.name.lower(),
        kind=kind,
        timestamp=start_us,
        duration=duration,
        local_endpoint=Endpoint(service_name=service),
        remote_endpoint=_remote(kind, attrs),
        tags=tags,
        annotations=tuple(Annotation(e.time_unix_nano // 1000, _event_value(e)) for e in p.events),
    )


def _remote(kind: Kind | None, attrs: dict[str, str]) -> Endpoint | None:
    """The other side, for spans that call out (the spec's ``peer.service`` first)."""
    if kind not in ("CLIENT", "PRODUCER"):
        return None
    name = attrs.get("peer.service") or attrs.get("server.address") or attrs.get("net.peer.name")
    if not name:
        return None
    port = attrs.get("server.port") or attrs.get("net.peer.port") or "0"
    return Endpoint(service_name=name.lower(), port=int(port) if port.isdigit() else 0)


def _event_value(e: trace_pb2.Span.Event) -> str:
    if not e.attributes:
        return e.name
    attrs = {kv.key: _json_value(kv.value) for kv in e.attributes}
    return f"{e.name}: {json.dumps(attrs, separators=(',', ':'))}"


def _json_value(v: AnyValue) -> Any:
    which = v.WhichOneof("value")
    if which == "array_value":
        return [_json_value(x) for x in v.array_value.values]
    if which == "kvlist_value":
        return {kv.key: _json_value(kv.value) for kv in v.kvlist_value.values}
    if which == "bytes_value":
        return v.bytes_value.hex()
    return getattr(v, which) if which else None


def _text(v: AnyValue) -> str:
    """An attribute value as tag text: booleans lower-case, arrays and maps as JSON."""
    which = v.WhichOneof("value")
    if which == "string_value":
        return v.string_value
    if which == "bool_value":
        return "true" if v.bool_value else "false"
    if which in ("array_value", "kvlist_value"):
        return json.dumps(_json_value(v), separators=(",", ":"))
    value = _json_value(v)
    return "" if value is None else str(value)


def to_request(spans: Iterable[Span]) -> ExportTraceServiceRequest:
    """Spans as an OTLP ``Export`` request, one resource per service (for ``--trace-export``
    to an OTLP collector). Tags become string attributes; an ``error`` tag becomes an error
    status."""
    request = ExportTraceServiceRequest()
    by_service: dict[str, Any] = {}
    for s in spans:
        scope = by_service.get(s.service)
        if scope is None:
            rs = request.resource_spans.add()
            if s.service:
                rs.resource.attributes.append(_kv("service.name", s.service))
            scope = by_service[s.service] = rs.scope_spans.add()
        p = scope.spans.add(
            trace_id=bytes.fromhex(s.trace_id.rjust(32, "0")),
            span_id=bytes.fromhex(s.id),
            name=s.name,
            kind=_KIND_TO_OTLP.get(s.kind, trace_pb2.Span.SPAN_KIND_INTERNAL)
            if s.kind
            else trace_pb2.Span.SPAN_KIND_INTERNAL,
            start_time_unix_nano=s.timestamp * 1000,
            end_time_unix_nano=(s.timestamp + s.duration) * 1000,
        )
        if s.parent_id:
            p.parent_span_id = bytes.fromhex(s.parent_id)
        for k, v in s.tags.items():
            if k not in ("otel.status_code", "error"):
                p.attributes.append(_kv(k, v))
        if s.remote_service and "peer.service" not in s.tags:
            p.attributes.append(_kv("peer.service", s.remote_service))
        if "error" in s.tags:
            p.status.code = trace_pb2.Status.STATUS_CODE_ERROR
            p.status.message = s.tags["error"]
        elif s.tags.get("otel.status_code") == "OK":
            p.status.code = trace_pb2.Status.STATUS_CODE_OK
        for a in s.annotations:
            p.events.add(time_unix_nano=a.timestamp * 1000, name=a.value)
    return request


def _kv(key: str, value: str) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(string_value=value))
