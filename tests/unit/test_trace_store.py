"""The span store: its bound, its indexes and Zipkin's query semantics."""

from __future__ import annotations

import threading

import pytest

from tsunagi.telemetry.spans import (
    Annotation,
    Endpoint,
    Span,
    SpanStore,
    TraceQuery,
    normalize_span_id,
    normalize_trace_id,
)

NOW_MS = 1_800_000_000_000


def span(
    trace: str,
    sid: str,
    service: str = "web",
    parent: str | None = None,
    name: str = "get",
    ts_ms: int = NOW_MS - 1000,
    duration: int = 1000,
    remote: str = "",
    tags: dict[str, str] | None = None,
    annotations: tuple[Annotation, ...] = (),
) -> Span:
    return Span(
        trace_id=normalize_trace_id(trace),
        id=normalize_span_id(sid),
        parent_id=parent,
        name=name,
        kind="SERVER",
        timestamp=ts_ms * 1000,
        duration=duration,
        local_endpoint=Endpoint(service_name=service),
        remote_endpoint=Endpoint(service_name=remote) if remote else None,
        tags=tags or {},
        annotations=annotations,
    )


def q(**kw: object) -> TraceQuery:
    return TraceQuery(end_ts=NOW_MS, **kw)  # type: ignore[arg-type]


def ids(traces: list[list[Span]]) -> list[str]:
    return [t[0].trace_id for t in traces]


def test_keeps_only_the_newest_spans_and_forgets_evicted_services() -> None:
    store = SpanStore(max_spans=3)
    store.add([span("1", "a", service="old"), span("2", "b"), span("3", "c")])
    store.add([span("4", "d")])
    assert len(store) == 3
    assert store.trace("1") == []
    assert store.services() == ["web"]
    assert ids(store.traces(q(limit=10))) == [
        "0000000000000004",
        "0000000000000003",
        "0000000000000002",
    ]
    assert store.received == 4


def test_trace_returns_spans_by_timestamp() -> None:
    store = SpanStore()
    child = span("abc", "2", parent="0000000000000001", ts_ms=NOW_MS - 500)
    root = span("abc", "1", ts_ms=NOW_MS - 900)
    store.add([child, root])
    assert store.trace("ABC") == [root, child]
    assert store.trace("0000000000000abc") == [root, child]
    assert store.trace("not-hex") == []


def test_128_bit_ids_with_a_zero_upper_half_are_the_64_bit_trace() -> None:
    store = SpanStore()
    store.add([span("0000000000000000463ac35c9f6413ad", "1")])
    store.add([span("463ac35c9f6413ad", "2", parent="0000000000000001")])
    assert len(store.trace("463ac35c9f6413ad")) == 2
    assert len(store.trace("0000000000000000463ac35c9f6413ad")) == 2


def test_lookups_are_strict_by_default_and_lower_64_bits_when_not() -> None:
    full = "48485a3953bb6124463ac35c9f6413ad"
    spans = [span(full, "1"), span("463ac35c9f6413ad", "2")]
    strict = SpanStore()
    strict.add(spans)
    assert [s.id for s in strict.trace(full)] == ["0000000000000001"]
    lenient = SpanStore(strict_trace_id=False)
    lenient.add(spans)
    assert len(lenient.trace(full)) == 2
    assert len(lenient.trace("463ac35c9f6413ad")) == 2


def test_query_by_service_span_name_and_remote_service() -> None:
    store = SpanStore()
    store.add([span("1", "1", service="web", name="get /a", remote="db")])
    store.add([span("2", "1", service="web", name="get /b")])
    store.add([span("3", "1", service="api", name="get /a")])
    assert ids(store.traces(q(service_name="web"))) == ["0000000000000002", "0000000000000001"]
    assert ids(store.traces(q(service_name="web", span_name="get /a"))) == ["0000000000000001"]
    assert ids(store.traces(q(span_name="get /a"))) == ["0000000000000003", "0000000000000001"]
    assert ids(store.traces(q(remote_service_name="db"))) == ["0000000000000001"]
    assert store.traces(q(service_name="nobody")) == []
    assert store.span_names("web") == ["get /a", "get /b"]
    assert store.remote_services("web") == ["db"]


def test_span_name_must_belong_to_the_queried_service() -> None:
    store = SpanStore()
    store.add([span("1", "1", service="web", name="x"), span("1", "2", service="api", name="y")])
    assert store.traces(q(service_name="web", span_name="y")) == []
    assert len(store.traces(q(service_name="api", span_name="y"))) == 1


def test_query_by_duration() -> None:
    store = SpanStore()
    store.add([span("1", "1", duration=100), span("2", "1", duration=5000)])
    assert ids(store.traces(q(min_duration=1000))) == ["0000000000000002"]
    assert ids(store.traces(q(min_duration=50, max_duration=200))) == ["0000000000000001"]
    assert store.traces(q(min_duration=10_000)) == []


def test_end_ts_and_lookback_use_the_root_span() -> None:
    store = SpanStore()
    store.add([span("1", "1", ts_ms=NOW_MS - 10_000)])
    store.add([span("2", "1", ts_ms=NOW_MS - 100)])
    # The child started late, but the trace is placed by its root.
    store.add([span("1", "2", parent="0000000000000001", ts_ms=NOW_MS - 50)])
    assert ids(store.traces(q(lookback=1000))) == ["0000000000000002"]
    assert ids(store.traces(q(lookback=20_000))) == ["0000000000000002", "0000000000000001"]
    assert ids(store.traces(TraceQuery(end_ts=NOW_MS - 5000, lookback=20_000))) == [
        "0000000000000001"
    ]
    assert store.traces(TraceQuery(end_ts=NOW_MS + 100_000_000)) == []  # older than a day


def test_limit_keeps_the_newest_traces() -> None:
    store = SpanStore()
    for i in range(1, 6):
        store.add([span(str(i), "1", ts_ms=NOW_MS - 1000 + i)])
    assert ids(store.traces(q(limit=2))) == ["0000000000000005", "0000000000000004"]


def test_annotation_query_matches_tags_and_annotations() -> None:
    store = SpanStore()
    store.add(
        [
            span("1", "1", tags={"http.status_code": "500", "error": "boom"}),
            span("2", "1", annotations=(Annotation(1, "retried"),)),
        ]
    )
    assert ids(store.traces(q(annotation_query={"http.status_code": "500"}))) == [
        "0000000000000001"
    ]
    assert ids(store.traces(q(annotation_query={"error": ""}))) == ["0000000000000001"]
    assert ids(store.traces(q(annotation_query={"retried": ""}))) == ["0000000000000002"]
    assert store.traces(q(annotation_query={"http.status_code": "200"})) == []


def test_concurrent_writers_keep_the_bound() -> None:
    store = SpanStore(max_spans=500)

    def write(n: int) -> None:
        for i in range(400):
            store.add([span(f"{n}{i:05d}", "1", service=f"s{n}")])

    threads = [threading.Thread(target=write, args=(n,)) for n in range(1, 5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(store) == 500
    assert store.received == 1600
    assert len(store.traces(q(limit=10_000))) == 500


@pytest.mark.parametrize("bad", ["", "xyz", "1" * 33, "0" * 16])
def test_bad_trace_ids_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        normalize_trace_id(bad)
