"""Zipkin v2 JSON and protobuf decoding, OTLP conversion and the export URL rule."""

from __future__ import annotations

import json

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue
from opentelemetry.proto.trace.v1 import trace_pb2

from tsunagi.telemetry import otlp_spans, zipkin_json, zipkin_proto
from tsunagi.telemetry.export import Target, parse_target
from tsunagi.telemetry.spans import Annotation, Endpoint, Span
from tsunagi.telemetry.zipkin_json import BadSpans

FULL = Span(
    trace_id="463ac35c9f6413ad48485a3953bb6124",
    id="48485a3953bb6124",
    parent_id="1111111111111111",
    name="get /reviews",
    kind="CLIENT",
    timestamp=1_700_000_000_000_000,
    duration=1500,
    local_endpoint=Endpoint("productpage", "127.0.0.1", "", 9080),
    remote_endpoint=Endpoint("reviews", "", "::1", 9081),
    tags={"http.method": "GET", "http.status_code": "200"},
    annotations=(Annotation(1_700_000_000_000_100, "ws"),),
    shared=True,
)


def test_json_round_trip_and_zipkin_field_names() -> None:
    body = zipkin_json.encode([FULL])
    doc = json.loads(body)[0]
    assert doc["traceId"] == FULL.trace_id
    assert doc["localEndpoint"] == {"serviceName": "productpage", "ipv4": "127.0.0.1", "port": 9080}
    assert doc["remoteEndpoint"]["ipv6"] == "::1"
    assert doc["shared"] is True
    assert "debug" not in doc
    assert zipkin_json.decode(body) == [FULL]


def test_json_lowercases_names_and_pads_ids_as_zipkin_does() -> None:
    [s] = zipkin_json.decode(
        b'[{"traceId":"ABC","id":"1","name":"GET /X","localEndpoint":{"serviceName":"Web"},'
        b'"tags":{"n":1,"b":true}}]'
    )
    assert (s.trace_id, s.id, s.name, s.service) == (
        "0000000000000abc",
        "0000000000000001",
        "get /x",
        "web",
    )
    assert s.tags == {"n": "1", "b": "true"}
    assert s.kind is None and s.remote_endpoint is None


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{", "not JSON"),
        (b'{"traceId":"1"}', "expected a JSON list"),
        (b"[1]", "spans[0]: expected an object"),
        (b'[{"id":"1"}]', "spans[0].traceId: required"),
        (b'[{"traceId":"1","id":"1"},{"traceId":"xyz","id":"1"}]', "spans[1].traceId"),
        (b'[{"traceId":"1","id":"12345678901234567"}]', "spans[0].id"),
        (b'[{"traceId":"1","id":"1","kind":"SERVR"}]', "spans[0].kind: 'SERVR' is not one"),
        (b'[{"traceId":"1","id":"1","timestamp":-1}]', "spans[0].timestamp"),
        (b'[{"traceId":"1","id":"1","duration":"5"}]', "spans[0].duration"),
        (b'[{"traceId":"1","id":"1","localEndpoint":{"port":70000}}]', "localEndpoint.port"),
        (b'[{"traceId":"1","id":"1","tags":{"a":{}}}]', "spans[0].tags.a"),
        (b'[{"traceId":"1","id":"1","annotations":[{"value":"x"}]}]', "annotations[0]"),
    ],
)
def test_json_errors_name_the_span_and_field(body: bytes, message: str) -> None:
    with pytest.raises(BadSpans, match=message.replace("[", r"\[").replace("]", r"\]")):
        zipkin_json.decode(body)


def test_proto_round_trip() -> None:
    assert zipkin_proto.decode(zipkin_proto.encode([FULL])) == [FULL]


def test_proto_is_zipkins_wire_format() -> None:
    # Hand-encoded ListOfSpans{spans: [Span{trace_id: 8 bytes, id: 8 bytes, kind: SERVER,
    # name: "a", local_endpoint{service_name: "s"}}]} with zipkin.proto's field numbers.
    span = (
        b"\x0a\x08" + bytes.fromhex("00000000000000ab")
        + b"\x1a\x08" + bytes.fromhex("00000000000000cd")
        + b"\x20\x02"
        + b"\x2a\x01a"
        + b"\x42\x03\x0a\x01s"
    )  # fmt: skip
    [s] = zipkin_proto.decode(b"\x0a" + bytes([len(span)]) + span)
    assert (s.trace_id, s.id, s.kind, s.name, s.service) == (
        "00000000000000ab",
        "00000000000000cd",
        "SERVER",
        "a",
        "s",
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"\xff\xff\xff", "not a zipkin.proto3.ListOfSpans"),
        (b"\x0a\x05\x0a\x03abc", r"spans\[0\].trace_id: expected 8 or 16 bytes, got 3"),
        (b"\x0a\x0a\x0a\x08" + bytes(range(1, 9)), r"spans\[0\]: trace_id and id are required"),
    ],
)
def test_proto_errors(body: bytes, message: str) -> None:
    with pytest.raises(BadSpans, match=message):
        zipkin_proto.decode(body)


def _kv(key: str, **value: object) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(**value))  # type: ignore[arg-type]


def otlp_request() -> ExportTraceServiceRequest:
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.append(_kv("service.name", string_value="Checkout"))
    ss = rs.scope_spans.add()
    ss.scope.name = "my.lib"
    ss.scope.version = "1.2"
    ss.spans.add(
        trace_id=bytes(8) + bytes.fromhex("463ac35c9f6413ad"),
        span_id=bytes.fromhex("00000000000000aa"),
        parent_span_id=bytes.fromhex("00000000000000bb"),
        name="Charge",
        kind=trace_pb2.Span.SPAN_KIND_CLIENT,
        start_time_unix_nano=1_700_000_000_000_000_000,
        end_time_unix_nano=1_700_000_000_002_000_400,
        attributes=[
            _kv("peer.service", string_value="payments"),
            _kv("retry", bool_value=True),
            _kv("count", int_value=3),
            _kv("ids", array_value=ArrayValue(values=[AnyValue(int_value=1)])),
        ],
        events=[trace_pb2.Span.Event(time_unix_nano=1_700_000_000_001_000_000, name="sent")],
        status=trace_pb2.Status(code=trace_pb2.Status.STATUS_CODE_ERROR, message="declined"),
    )
    ss.spans.add(
        trace_id=bytes.fromhex("48485a3953bb6124463ac35c9f6413ad"),
        span_id=bytes.fromhex("00000000000000cc"),
        name="internal",
        kind=trace_pb2.Span.SPAN_KIND_INTERNAL,
        start_time_unix_nano=5000,
        end_time_unix_nano=5100,
    )
    ss.spans.add(trace_id=b"short", span_id=bytes(8), name="bad")
    return req


def test_otlp_spans_become_zipkin_spans() -> None:
    spans, errors = otlp_spans.from_request(otlp_request())
    assert errors == [
        "resource_spans[0].scope_spans[0].spans[2]: trace_id must be 16 bytes and span_id 8 bytes"
    ]
    charge, internal = spans
    assert charge.trace_id == "463ac35c9f6413ad"  # the 64-bit trace Envoy started
    assert (charge.id, charge.parent_id) == ("00000000000000aa", "00000000000000bb")
    assert (charge.name, charge.kind, charge.service) == ("charge", "CLIENT", "checkout")
    assert (charge.timestamp, charge.duration) == (1_700_000_000_000_000, 2000)
    assert charge.remote_endpoint == Endpoint(service_name="payments")
    assert charge.tags == {
        "otel.scope.name": "my.lib",
        "otel.scope.version": "1.2",
        "peer.service": "payments",
        "retry": "true",
        "count": "3",
        "ids": "[1]",
        "otel.status_code": "ERROR",
        "error": "declined",
    }
    assert charge.annotations == (Annotation(1_700_000_000_001_000, "sent"),)
    assert internal.trace_id == "48485a3953bb6124463ac35c9f6413ad"
    assert internal.kind is None and internal.parent_id is None
    assert internal.duration == 1  # under a microsecond rounds up, as in Zipkin


def test_otlp_round_trip_for_export() -> None:
    spans, _ = otlp_spans.from_request(otlp_request())
    back, errors = otlp_spans.from_request(otlp_spans.to_request(spans))
    assert errors == []

    def key(s: Span) -> tuple[object, ...]:
        return (s.trace_id, s.id, s.parent_id, s.kind, s.service, s.tags.get("error"))

    assert [key(s) for s in back] == [key(s) for s in spans]
    assert back[0].remote_endpoint == Endpoint(service_name="payments")


@pytest.mark.parametrize(
    ("url", "target"),
    [
        ("http://zipkin:9411/api/v2/spans", Target("zipkin", "http://zipkin:9411/api/v2/spans")),
        ("http://zipkin:9411", Target("zipkin", "http://zipkin:9411/api/v2/spans")),
        ("https://z.example/custom", Target("zipkin", "https://z.example/custom")),
        ("otlp://collector:4317", Target("otlp", "collector:4317")),
        ("grpc://collector", Target("otlp", "collector:4317")),
    ],
)
def test_export_url_rule(url: str, target: Target) -> None:
    assert parse_target(url) == target


@pytest.mark.parametrize("url", ["collector:4317", "ftp://x", "http://", ""])
def test_export_url_errors_say_what_is_known(url: str) -> None:
    with pytest.raises(ValueError, match="otlp://HOST:4317"):
        parse_target(url)


def test_proto_span_ids_in_envoys_byte_order() -> None:
    # Envoy writes span ids in host (little-endian) order and trace ids big-endian.
    body = zipkin_proto.encode(
        [Span(trace_id="0102030405060708", id="1112131415161718", parent_id="2122232425262728")]
    )
    [s] = zipkin_proto.decode(body, little_endian_span_ids=True)
    assert (s.trace_id, s.id, s.parent_id) == (
        "0102030405060708",
        "1817161514131211",
        "2827262524232221",
    )
