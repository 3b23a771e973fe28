"""Zipkin v2 protobuf (``application/x-protobuf``, ``zipkin.proto3.ListOfSpans``) to and
from :class:`~tsunagi.telemetry.spans.Span`.

No maintained package ships Zipkin's generated classes for current protobuf (py_zipkin's
are generated for protobuf 3 and unmaintained), so the schema — four small messages — is
described here with ``descriptor_pb2`` in a private descriptor pool and its classes made by
``message_factory``. Field numbers and types are Zipkin's ``zipkin.proto``; this is what
Envoy sends with ``collector_endpoint_version: HTTP_PROTO``.

One quirk of Envoy's: its protobuf span ids (``id``, ``parent_id``) are in the host's byte
order — little-endian on x86-64 and arm64 — while trace ids are big-endian as Zipkin says
(measured with Envoy 1.40: B3 span id ``0102030405060708`` arrives as bytes ``08 07 .. 01``;
Envoy's own tests pin it). Its JSON is right. ``decode(..., little_endian_span_ids=True)``
reads such spans, so a sidecar's span ids match the ``x-b3-spanid``/``traceparent`` its app
saw; the Zipkin API turns it on for ``POST /api/v2/spans?span_id_byte_order=little``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

from tsunagi.telemetry.spans import (
    KINDS,
    Annotation,
    Endpoint,
    Span,
    normalize_span_id,
    normalize_trace_id,
)
from tsunagi.telemetry.zipkin_json import BadSpans

_F = descriptor_pb2.FieldDescriptorProto
_OPTIONAL, _REPEATED = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED


def _schema() -> descriptor_pb2.FileDescriptorProto:
    f = descriptor_pb2.FileDescriptorProto(
        name="tsunagi/zipkin.proto", package="zipkin.proto3", syntax="proto3"
    )

    def field(msg: Any, name: str, number: int, ftype: int, label: int = _OPTIONAL,
              type_name: str = "") -> None:  # fmt: skip
        fd = msg.field.add(name=name, number=number, type=ftype, label=label)
        if type_name:
            fd.type_name = type_name

    span = f.message_type.add(name="Span")
    kind = span.enum_type.add(name="Kind")
    for number, name in enumerate(("SPAN_KIND_UNSPECIFIED", *KINDS)):
        kind.value.add(name=name, number=number)
    tags = span.nested_type.add(name="TagsEntry")
    tags.options.map_entry = True
    field(tags, "key", 1, _F.TYPE_STRING)
    field(tags, "value", 2, _F.TYPE_STRING)
    field(span, "trace_id", 1, _F.TYPE_BYTES)
    field(span, "parent_id", 2, _F.TYPE_BYTES)
    field(span, "id", 3, _F.TYPE_BYTES)
    field(span, "kind", 4, _F.TYPE_ENUM, type_name=".zipkin.proto3.Span.Kind")
    field(span, "name", 5, _F.TYPE_STRING)
    field(span, "timestamp", 6, _F.TYPE_FIXED64)
    field(span, "duration", 7, _F.TYPE_UINT64)
    field(span, "local_endpoint", 8, _F.TYPE_MESSAGE, type_name=".zipkin.proto3.Endpoint")
    field(span, "remote_endpoint", 9, _F.TYPE_MESSAGE, type_name=".zipkin.proto3.Endpoint")
    field(span, "annotations", 10, _F.TYPE_MESSAGE, _REPEATED, ".zipkin.proto3.Annotation")
    field(span, "tags", 11, _F.TYPE_MESSAGE, _REPEATED, ".zipkin.proto3.Span.TagsEntry")
    field(span, "debug", 12, _F.TYPE_BOOL)
    field(span, "shared", 13, _F.TYPE_BOOL)

    endpoint = f.message_type.add(name="Endpoint")
    field(endpoint, "service_name", 1, _F.TYPE_STRING)
    field(endpoint, "ipv4", 2, _F.TYPE_BYTES)
    field(endpoint, "ipv6", 3, _F.TYPE_BYTES)
    field(endpoint, "port", 4, _F.TYPE_INT32)

    annotation = f.message_type.add(name="Annotation")
    field(annotation, "timestamp", 1, _F.TYPE_FIXED64)
    field(annotation, "value", 2, _F.TYPE_STRING)

    spans = f.message_type.add(name="ListOfSpans")
    field(spans, "spans", 1, _F.TYPE_MESSAGE, _REPEATED, ".zipkin.proto3.Span")
    return f


_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_schema())
ListOfSpans: Any = message_factory.GetMessageClass(
    _POOL.FindMessageTypeByName("zipkin.proto3.ListOfSpans")
)
"""The generated message class of ``zipkin.proto3.ListOfSpans``."""


def decode(body: bytes, little_endian_span_ids: bool = False) -> list[Span]:
    """Parse a serialized ``ListOfSpans``. Raises :class:`BadSpans` naming the bad field.
    ``little_endian_span_ids``: span and parent ids are byte-reversed (Envoy's encoding)."""
    msg = ListOfSpans()
    try:
        msg.ParseFromString(body)
    except DecodeError as e:
        raise BadSpans(f"the body is not a zipkin.proto3.ListOfSpans: {e}") from None
    return [_span(s, f"spans[{i}]", little_endian_span_ids) for i, s in enumerate(msg.spans)]


def encode(spans: Iterable[Span]) -> bytes:
    """Serialize ``spans`` as a ``ListOfSpans`` (used by tests and by nothing on the hot
    path; the exporter sends JSON)."""
    msg = ListOfSpans()
    for s in spans:
        p = msg.spans.add(
            trace_id=bytes.fromhex(s.trace_id),
            id=bytes.fromhex(s.id),
            name=s.name,
            timestamp=s.timestamp,
            duration=s.duration,
            debug=s.debug,
            shared=s.shared,
        )
        if s.parent_id:
            p.parent_id = bytes.fromhex(s.parent_id)
        if s.kind:
            p.kind = KINDS.index(s.kind) + 1
        _put_endpoint(p.local_endpoint, s.local_endpoint)
        if s.remote_endpoint:
            _put_endpoint(p.remote_endpoint, s.remote_endpoint)
        for a in s.annotations:
            p.annotations.add(timestamp=a.timestamp, value=a.value)
        p.tags.update(s.tags)
    return bytes(msg.SerializeToString())


def _put_endpoint(p: Any, e: Endpoint) -> None:
    p.service_name = e.service_name
    if e.ipv4:
        p.ipv4 = ipaddress.IPv4Address(e.ipv4).packed
    if e.ipv6:
        p.ipv6 = ipaddress.IPv6Address(e.ipv6).packed
    p.port = e.port


def _span(p: Any, where: str, little_endian_span_ids: bool) -> Span:
    trace_id = _hex_id(p.trace_id, (8, 16), f"{where}.trace_id", normalize_trace_id)
    raw_id, raw_parent = bytes(p.id), bytes(p.parent_id)
    if little_endian_span_ids:
        raw_id, raw_parent = raw_id[::-1], raw_parent[::-1]
    span_id = _hex_id(raw_id, (8,), f"{where}.id", normalize_span_id)
    parent = _hex_id(raw_parent, (8,), f"{where}.parent_id", normalize_span_id) or None
    if not trace_id or not span_id:
        raise BadSpans(f"{where}: trace_id and id are required")
    if not 0 <= p.kind <= len(KINDS):
        raise BadSpans(f"{where}.kind: unknown kind {p.kind}")
    return Span(
        trace_id=trace_id,
        id=span_id,
        parent_id=parent,
        name=p.name.lower(),
        kind=KINDS[p.kind - 1] if p.kind else None,
        timestamp=p.timestamp,
        duration=p.duration,
        local_endpoint=_endpoint(p.local_endpoint, f"{where}.local_endpoint") or Endpoint(),
        remote_endpoint=_endpoint(p.remote_endpoint, f"{where}.remote_endpoint")
        if p.HasField("remote_endpoint")
        else None,
        tags=dict(p.tags),
        annotations=tuple(Annotation(a.timestamp, a.value) for a in p.annotations),
        debug=p.debug,
        shared=p.shared,
    )


def _hex_id(raw: bytes, sizes: tuple[int, ...], where: str, norm: Any) -> str:
    if not raw:
        return ""
    if len(raw) not in sizes:
        want = " or ".join(str(n) for n in sizes)
        raise BadSpans(f"{where}: expected {want} bytes, got {len(raw)}")
    try:
        result: str = norm(raw.hex())
    except ValueError as e:
        raise BadSpans(f"{where}: {e}") from None
    return result


def _endpoint(p: Any, where: str) -> Endpoint | None:
    if len(p.ipv4) not in (0, 4) or len(p.ipv6) not in (0, 16):
        raise BadSpans(f"{where}: ipv4 must be 4 bytes and ipv6 16 bytes")
    if not 0 <= p.port <= 65535:
        raise BadSpans(f"{where}.port: {p.port} is not a port number")
    return Endpoint(
        service_name=p.service_name.lower(),
        ipv4=str(ipaddress.IPv4Address(p.ipv4)) if p.ipv4 else "",
        ipv6=str(ipaddress.IPv6Address(p.ipv6)) if p.ipv6 else "",
        port=p.port,
    )
