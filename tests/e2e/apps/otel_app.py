"""A test app instrumented with the real OpenTelemetry SDK, exporting over OTLP/gRPC.

It continues the caller's W3C ``traceparent`` (what a sidecar passes on), records a SERVER
span for each request and an INTERNAL child span for its work (an error status on
``/fail``), and answers JSON with its span ids (``/healthz`` records nothing). ``PORT`` is
where it listens; ``OTEL_EXPORTER_OTLP_ENDPOINT`` and ``OTEL_SERVICE_NAME`` are the SDK's
own settings.
"""

from __future__ import annotations

import json

from _serve import QuietHandler, serve
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.propagate import extract
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode

provider = TracerProvider(resource=Resource.create({}))  # service.name from OTEL_SERVICE_NAME
# Simple (not batch) processing: each span is exported as it ends, so the test need not wait.
provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(insecure=True)))
tracer = provider.get_tracer("otel_app", "1.0")


class Handler(QuietHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        if self.path == "/healthz":  # readiness probe: no span
            self._answer(b"{}")
            return
        context = extract(dict(self.headers.items()))
        with tracer.start_as_current_span(
            "GET " + self.path, context=context, kind=SpanKind.SERVER
        ) as server:
            server.set_attribute("http.method", "GET")
            with tracer.start_as_current_span("work") as work:
                work.set_attribute("items", 3)
                if self.path == "/fail":
                    work.set_status(Status(StatusCode.ERROR, "out of stock"))
        body = json.dumps(
            {
                "trace_id": format(server.get_span_context().trace_id, "032x"),
                "server_span": format(server.get_span_context().span_id, "016x"),
                "work_span": format(work.get_span_context().span_id, "016x"),
            }
        ).encode()
        self._answer(body)

    def _answer(self, body: bytes) -> None:
        self.send_json(body)


def main() -> None:
    serve(Handler, on_exit=provider.shutdown)


if __name__ == "__main__":
    main()
