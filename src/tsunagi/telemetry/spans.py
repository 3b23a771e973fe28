"""The span model (Zipkin v2's, field for field) and the bounded in-memory span store.

The store keeps the newest ``max_spans`` spans and indexes them by trace id and by service,
so the Zipkin query API and the dashboard answer without scanning everything. Every method
takes one lock: the event loop (Zipkin HTTP, OTLP gRPC) and any thread may call it.

Trace ids follow Zipkin's rules: lower-hex, 16 or 32 characters, and a 128-bit id whose
upper 64 bits are zero is the same as its 64-bit form (what Envoy sends for 64-bit ids and
what the OpenTelemetry SDK sends after continuing a 64-bit B3 context). Lookups are strict,
Zipkin's default (``STRICT_TRACE_ID=true``): a 128-bit id finds only spans with all 128 bits
equal; ``strict_trace_id=False`` groups by the lower 64 bits as Zipkin does when told so.
"""

from __future__ import annotations

import threading
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Kind = Literal["CLIENT", "SERVER", "PRODUCER", "CONSUMER"]
KINDS: tuple[Kind, ...] = ("CLIENT", "SERVER", "PRODUCER", "CONSUMER")

DEFAULT_MAX_SPANS = 10_000
DEFAULT_LOOKBACK_MS = 86_400_000
"""Zipkin's default ``QUERY_LOOKBACK``: one day."""
DEFAULT_LIMIT = 10

_HEX = frozenset("0123456789abcdef")


def normalize_trace_id(value: str) -> str:
    """Zipkin's canonical form of a trace id: lower-hex, left-padded to 16 or 32 characters,
    with an all-zero upper half dropped. Raises ``ValueError`` saying what is wrong."""
    v = value.strip().lower()
    if not v or len(v) > 32 or not set(v) <= _HEX:
        raise ValueError(f"{value!r} is not 1 to 32 hex characters")
    v = v.rjust(16 if len(v) <= 16 else 32, "0")
    if len(v) == 32 and v.startswith("0" * 16):
        v = v[16:]
    if v == "0" * 16:
        raise ValueError("a trace id cannot be all zeros")
    return v


def normalize_span_id(value: str) -> str:
    """A span id as 16 lower-hex characters (left-padded). Raises ``ValueError``."""
    v = value.strip().lower()
    if not v or len(v) > 16 or not set(v) <= _HEX:
        raise ValueError(f"{value!r} is not 1 to 16 hex characters")
    v = v.rjust(16, "0")
    if v == "0" * 16:
        raise ValueError("a span id cannot be all zeros")
    return v


def lower_64(trace_id: str) -> str:
    """The lower 64 bits of a normalized trace id, as 16 hex characters."""
    return trace_id[-16:]


@dataclass(frozen=True)
class Endpoint:
    """Zipkin's ``Endpoint``: who recorded a span, or the other side of it."""

    service_name: str = ""
    ipv4: str = ""
    ipv6: str = ""
    port: int = 0

    def to_json(self) -> dict[str, Any]:
        """Zipkin v2 JSON: empty fields are left out."""
        out: dict[str, Any] = {}
        if self.service_name:
            out["serviceName"] = self.service_name
        if self.ipv4:
            out["ipv4"] = self.ipv4
        if self.ipv6:
            out["ipv6"] = self.ipv6
        if self.port:
            out["port"] = self.port
        return out


@dataclass(frozen=True)
class Annotation:
    """An event inside a span: epoch microseconds and a short value."""

    timestamp: int
    value: str


@dataclass(frozen=True)
class Span:
    """One span in Zipkin v2's shape. Ids are normalized lower-hex (see
    :func:`normalize_trace_id`); ``timestamp`` and ``duration`` are microseconds, 0 when
    unknown; ``kind`` is ``None`` for a local span."""

    trace_id: str
    id: str
    parent_id: str | None = None
    name: str = ""
    kind: Kind | None = None
    timestamp: int = 0
    duration: int = 0
    local_endpoint: Endpoint = field(default_factory=Endpoint)
    remote_endpoint: Endpoint | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    annotations: tuple[Annotation, ...] = ()
    debug: bool = False
    shared: bool = False

    @property
    def service(self) -> str:
        """The local service name ("" when the span has none)."""
        return self.local_endpoint.service_name

    @property
    def remote_service(self) -> str:
        """The remote service name ("" when unknown)."""
        return self.remote_endpoint.service_name if self.remote_endpoint else ""

    def to_json(self) -> dict[str, Any]:
        """Zipkin v2 JSON, as ``GET /api/v2/trace/{id}`` answers: absent fields left out."""
        out: dict[str, Any] = {"traceId": self.trace_id}
        if self.parent_id:
            out["parentId"] = self.parent_id
        out["id"] = self.id
        if self.kind:
            out["kind"] = self.kind
        if self.name:
            out["name"] = self.name
        if self.timestamp:
            out["timestamp"] = self.timestamp
        if self.duration:
            out["duration"] = self.duration
        local = self.local_endpoint.to_json()
        if local:
            out["localEndpoint"] = local
        remote = self.remote_endpoint.to_json() if self.remote_endpoint else {}
        if remote:
            out["remoteEndpoint"] = remote
        if self.annotations:
            out["annotations"] = [
                {"timestamp": a.timestamp, "value": a.value} for a in self.annotations
            ]
        if self.tags:
            out["tags"] = dict(self.tags)
        if self.debug:
            out["debug"] = True
        if self.shared:
            out["shared"] = True
        return out


@dataclass(frozen=True)
class TraceQuery:
    """``GET /api/v2/traces``'s parameters, with Zipkin's meaning: a trace matches when its
    root (or earliest) span started within ``[end_ts - lookback, end_ts]`` (milliseconds) and
    one span of ``service_name`` (any span when empty) satisfies each other criterion."""

    end_ts: int
    """Epoch milliseconds; the API fills in "now" when the client gives none."""
    lookback: int = DEFAULT_LOOKBACK_MS
    service_name: str = ""
    remote_service_name: str = ""
    span_name: str = ""
    annotation_query: Mapping[str, str] = field(default_factory=dict)
    """``key=value`` terms match a tag; bare words (value "") match an annotation or tag key."""
    min_duration: int | None = None
    max_duration: int | None = None
    limit: int = DEFAULT_LIMIT

    def matches(self, trace: list[Span]) -> bool:
        """Whether ``trace`` (all spans of one trace) satisfies this query."""
        start = _trace_start(trace)
        if start == 0 or not (self.end_ts - self.lookback) * 1000 <= start <= self.end_ts * 1000:
            return False
        need_service = bool(self.service_name)
        need_remote = bool(self.remote_service_name)
        need_name = bool(self.span_name)
        remaining = dict(self.annotation_query)
        duration_ok = self.min_duration is None and self.max_duration is None
        for span in trace:
            if self.service_name and span.service != self.service_name:
                continue
            need_service = False
            if need_remote and span.remote_service == self.remote_service_name:
                need_remote = False
            if need_name and span.name == self.span_name:
                need_name = False
            for a in span.annotations:
                if remaining.get(a.value) == "":
                    del remaining[a.value]
            for k, v in span.tags.items():
                if k in remaining and remaining[k] in ("", v):
                    del remaining[k]
            if not duration_ok and span.duration:
                lo = self.min_duration or 0
                hi = self.max_duration
                duration_ok = span.duration >= lo and (hi is None or span.duration <= hi)
        return not (need_service or need_remote or need_name or remaining) and duration_ok


def _trace_start(trace: list[Span]) -> int:
    """The root span's timestamp, else the earliest one (0 when no span has one)."""
    earliest = 0
    for s in trace:
        if not s.timestamp:
            continue
        if s.parent_id is None:
            return s.timestamp
        if earliest == 0 or s.timestamp < earliest:
            earliest = s.timestamp
    return earliest


class SpanStore:
    """The newest ``max_spans`` spans, indexed by trace id and service. Thread-safe.

    The dashboard calls :meth:`services`, :meth:`traces` and :meth:`trace` in process; the
    Zipkin API and the OTLP receiver call :meth:`add`.
    """

    def __init__(self, max_spans: int = DEFAULT_MAX_SPANS, strict_trace_id: bool = True):
        if max_spans < 1:
            raise ValueError("max_spans must be at least 1")
        self.max_spans = max_spans
        self.strict_trace_id = strict_trace_id
        self._lock = threading.Lock()
        self._spans: deque[Span] = deque()
        self._by_trace: dict[str, list[Span]] = {}
        # service -> trace key -> how many of its spans in that trace are stored
        self._service_traces: dict[str, Counter[str]] = {}
        self._span_names: dict[str, Counter[str]] = {}
        self._remote_services: dict[str, Counter[str]] = {}
        self.received = 0
        """Spans added since start (evicted ones included)."""

    def _key(self, trace_id: str) -> str:
        return trace_id if self.strict_trace_id else lower_64(trace_id)

    def add(self, spans: Iterable[Span]) -> None:
        """Store ``spans``, evicting the oldest beyond the bound."""
        with self._lock:
            for span in spans:
                self._spans.append(span)
                self._by_trace.setdefault(self._key(span.trace_id), []).append(span)
                _bump(self._service_traces, span.service, self._key(span.trace_id), 1)
                _bump(self._span_names, span.service, span.name, 1)
                _bump(self._remote_services, span.service, span.remote_service, 1)
                self.received += 1
                if len(self._spans) > self.max_spans:
                    self._evict(self._spans.popleft())

    def _evict(self, span: Span) -> None:
        key = self._key(span.trace_id)
        members = self._by_trace[key]
        if members[0] is span:  # the oldest span of its trace, nearly always
            members.pop(0)
        else:
            members.remove(span)
        if not members:
            del self._by_trace[key]
        _bump(self._service_traces, span.service, key, -1)
        _bump(self._span_names, span.service, span.name, -1)
        _bump(self._remote_services, span.service, span.remote_service, -1)

    def __len__(self) -> int:
        with self._lock:
            return len(self._spans)

    def services(self) -> list[str]:
        """Local service names of the stored spans, sorted."""
        with self._lock:
            return sorted(s for s in self._service_traces if s)

    def span_names(self, service: str) -> list[str]:
        """Span names recorded by ``service``, sorted."""
        with self._lock:
            return sorted(n for n in self._span_names.get(service, ()) if n)

    def remote_services(self, service: str) -> list[str]:
        """Remote service names seen by ``service``'s spans, sorted."""
        with self._lock:
            return sorted(n for n in self._remote_services.get(service, ()) if n)

    def trace(self, trace_id: str) -> list[Span]:
        """The spans of one trace, by timestamp; ``[]`` when unknown or malformed."""
        try:
            key = self._key(normalize_trace_id(trace_id))
        except ValueError:
            return []
        with self._lock:
            return _sorted(self._by_trace.get(key, ()))

    def traces(self, query: TraceQuery) -> list[list[Span]]:
        """Traces matching ``query``, newest first, at most ``query.limit``."""
        with self._lock:
            if query.service_name:
                keys: Iterable[str] = list(self._service_traces.get(query.service_name, ()))
            else:
                keys = list(self._by_trace)
            candidates = [list(self._by_trace[k]) for k in keys]
        # Newest first; among equal start times the trace stored last comes first.
        found = [t for t in reversed(candidates) if query.matches(t)]
        found.sort(key=_trace_start, reverse=True)
        return [_sorted(t) for t in found[: max(query.limit, 0)]]


def _sorted(spans: Iterable[Span]) -> list[Span]:
    return sorted(spans, key=lambda s: s.timestamp)


def _bump(index: dict[str, Counter[str]], service: str, key: str, by: int) -> None:
    counts = index.setdefault(service, Counter())
    counts[key] += by
    if counts[key] <= 0:
        del counts[key]
        if not counts:
            del index[service]
