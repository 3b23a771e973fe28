"""A test app for one hop of a traced chain, as Bookinfo's apps do it: it calls the next
service through its sidecar (``HTTP_PROXY``), passing on the trace headers it received (B3,
W3C ``traceparent``, ``x-request-id``), and answers JSON: its service, the trace headers it
saw, and the next hop's answer.

``TRACE_HOPS`` maps a service (``SERVICE_NAME``, set by ``tsunagi run``) to the next one's
host (JSON: ``{"a": "b:9080"}``; absent: the end of the chain). A service listed in
``TRACE_OTEL_SERVICES`` (comma-separated) also records a span of its own with the
OpenTelemetry SDK, continuing the incoming W3C context, exported over OTLP/gRPC to
``TRACE_OTLP_ENDPOINT``; it says the span's id (``app_span``).
"""

from __future__ import annotations

import http.client
import json
import os
from typing import Any
from urllib.parse import urlsplit

from _serve import QuietHandler, serve

PROPAGATED = (
    "x-request-id",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "b3",
    "traceparent",
    "tracestate",
    "x-user",
)

SERVICE = os.environ.get("SERVICE_NAME", "")
NEXT_HOP = json.loads(os.environ.get("TRACE_HOPS") or "{}").get(SERVICE, "")
tracer: Any = None
provider: Any = None
if SERVICE in os.environ.get("TRACE_OTEL_SERVICES", "").split(","):
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": SERVICE + "-app"}))
    # Simple processing: each span leaves as it ends, so a test need not wait for a batch.
    exporter = OTLPSpanExporter(endpoint=os.environ["TRACE_OTLP_ENDPOINT"], insecure=True)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("trace_hop", "1.0")


def call_next(headers: dict[str, str]) -> Any:
    if not NEXT_HOP:
        return None
    proxy = urlsplit(os.environ["HTTP_PROXY"])
    conn = http.client.HTTPConnection(proxy.hostname or "127.0.0.1", proxy.port, timeout=10)
    try:
        conn.request("GET", "/", headers={"Host": NEXT_HOP, **headers})
        resp = conn.getresponse()
        raw = resp.read().decode(errors="replace")
        try:
            return {"status": resp.status, "body": json.loads(raw)}
        except ValueError:
            return {"status": resp.status, "body": raw}
    finally:
        conn.close()


class Handler(QuietHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        seen = {k.lower(): v for k, v in self.headers.items() if k.lower() in PROPAGATED}
        answer: dict[str, Any] = {"service": SERVICE, "seen": seen}
        if tracer is not None:
            from opentelemetry.propagate import extract
            from opentelemetry.trace import SpanKind

            context = extract({"traceparent": seen.get("traceparent", "")})
            with tracer.start_as_current_span(
                "work", context=context, kind=SpanKind.INTERNAL
            ) as span:
                answer["next"] = call_next(seen)
            answer["app_span"] = format(span.get_span_context().span_id, "016x")
        else:
            answer["next"] = call_next(seen)
        body = json.dumps(answer).encode()
        self.send_json(body)


def _shutdown() -> None:
    if provider is not None:
        provider.shutdown()


def main() -> None:
    serve(Handler, on_exit=_shutdown)


if __name__ == "__main__":
    main()
