"""Zipkin v2 JSON (``application/json``) to and from :class:`~tsunagi.telemetry.spans.Span`.

Decoding is all or nothing: the first bad field raises :class:`BadSpans` naming it
(``spans[2].traceId: ...``), so a bad request stores nothing. Service and span names are
lower-cased on the way in, as Zipkin does, so queries match whatever case a tracer sent.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from tsunagi.telemetry.spans import (
    KINDS,
    Annotation,
    Endpoint,
    Kind,
    Span,
    normalize_span_id,
    normalize_trace_id,
)


class BadSpans(ValueError):
    """Spans that cannot be decoded; the message names the span and field."""


def decode(body: bytes) -> list[Span]:
    """Parse a JSON list of Zipkin v2 spans. Raises :class:`BadSpans`."""
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadSpans(f"the body is not JSON: {e}") from None
    if not isinstance(doc, list):
        raise BadSpans(f"expected a JSON list of spans, got {type(doc).__name__}")
    return [span_from_json(item, f"spans[{i}]") for i, item in enumerate(doc)]


def encode(spans: Iterable[Span]) -> bytes:
    """A JSON list of Zipkin v2 spans."""
    return json.dumps([s.to_json() for s in spans], separators=(",", ":")).encode()


def span_from_json(item: object, where: str) -> Span:
    """One span from its JSON object; ``where`` prefixes error messages."""
    if not isinstance(item, dict):
        raise BadSpans(f"{where}: expected an object, got {type(item).__name__}")
    trace_id = _id(item, "traceId", where, normalize_trace_id, required=True)
    span_id = _id(item, "id", where, normalize_span_id, required=True)
    parent_id = _id(item, "parentId", where, normalize_span_id, required=False)
    kind = item.get("kind")
    if kind is not None and kind not in KINDS:
        raise BadSpans(f"{where}.kind: {kind!r} is not one of {', '.join(KINDS)}")
    annotations = item.get("annotations") or []
    if not isinstance(annotations, list):
        raise BadSpans(f"{where}.annotations: expected a list")
    return Span(
        trace_id=trace_id or "",
        id=span_id or "",
        parent_id=parent_id,
        name=_str(item, "name", where).lower(),
        kind=_kind(kind),
        timestamp=_micros(item, "timestamp", where),
        duration=_micros(item, "duration", where),
        local_endpoint=_endpoint(item.get("localEndpoint"), f"{where}.localEndpoint") or Endpoint(),
        remote_endpoint=_endpoint(item.get("remoteEndpoint"), f"{where}.remoteEndpoint"),
        tags=_tags(item.get("tags"), f"{where}.tags"),
        annotations=tuple(
            _annotation(a, f"{where}.annotations[{i}]") for i, a in enumerate(annotations)
        ),
        debug=_bool(item, "debug", where),
        shared=_bool(item, "shared", where),
    )


def _kind(value: object) -> Kind | None:
    for k in KINDS:
        if value == k:
            return k
    return None


def _id(item: dict[str, Any], name: str, where: str, norm: Any, required: bool) -> str | None:
    value = item.get(name)
    if value is None or value == "":
        if required:
            raise BadSpans(f"{where}.{name}: required")
        return None
    if not isinstance(value, str):
        raise BadSpans(f"{where}.{name}: expected a hex string, got {type(value).__name__}")
    try:
        result: str = norm(value)
    except ValueError as e:
        raise BadSpans(f"{where}.{name}: {e}") from None
    return result


def _str(item: dict[str, Any], name: str, where: str) -> str:
    value = item.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise BadSpans(f"{where}.{name}: expected a string, got {type(value).__name__}")
    return value


def _bool(item: dict[str, Any], name: str, where: str) -> bool:
    value = item.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise BadSpans(f"{where}.{name}: expected true or false")
    return value


def _micros(item: dict[str, Any], name: str, where: str) -> int:
    value = item.get(name)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadSpans(f"{where}.{name}: expected a non-negative integer of microseconds")
    return value


def _endpoint(value: object, where: str) -> Endpoint | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise BadSpans(f"{where}: expected an object")
    port = value.get("port", 0)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise BadSpans(f"{where}.port: expected a port number (0-65535)")
    return Endpoint(
        service_name=_str(value, "serviceName", where).lower(),
        ipv4=_str(value, "ipv4", where),
        ipv6=_str(value, "ipv6", where),
        port=port,
    )


def _tags(value: object, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadSpans(f"{where}: expected an object of string values")
    tags: dict[str, str] = {}
    for k, v in value.items():
        if isinstance(v, bool):
            tags[k] = "true" if v else "false"
        elif isinstance(v, str | int | float):
            tags[k] = str(v)  # tracers that send numbers mean their text
        else:
            raise BadSpans(f"{where}.{k}: expected a string, got {type(v).__name__}")
    return tags


def _annotation(value: object, where: str) -> Annotation:
    if not isinstance(value, dict):
        raise BadSpans(f"{where}: expected an object with timestamp and value")
    ts = _micros(value, "timestamp", where)
    text = _str(value, "value", where)
    if not ts or not text:
        raise BadSpans(f"{where}: timestamp and value are required")
    return Annotation(ts, text)
