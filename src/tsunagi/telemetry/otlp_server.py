"""OTLP/gRPC trace ingest: ``opentelemetry.proto.collector.trace.v1.TraceService/Export``.

Apps instrumented with the OpenTelemetry SDK point ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or their
exporter's ``endpoint``) at this port. Spans with malformed ids are refused one by one and
reported back through OTLP's partial success, as the protocol asks; the rest are stored.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from tsunagi.telemetry import otlp_spans
from tsunagi.telemetry.spans import Span

log = logging.getLogger("tsunagi.traces")

MAX_REQUEST_BYTES = 16 * 1024 * 1024
"""Largest Export request (the SDK's batches are far smaller)."""


class TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    """Converts each Export request and hands the spans to ``sink``."""

    def __init__(self, sink: Callable[[Iterable[Span]], None]) -> None:
        self.sink = sink

    async def Export(  # the RPC's name, as gRPC spells it
        self,
        request: trace_service_pb2.ExportTraceServiceRequest,
        context: grpc.aio.ServicerContext,
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        spans, errors = otlp_spans.from_request(request)
        self.sink(spans)
        response = trace_service_pb2.ExportTraceServiceResponse()
        if errors:
            response.partial_success.rejected_spans = len(errors)
            more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            response.partial_success.error_message = errors[0] + more
        return response


async def start_otlp(
    sink: Callable[[Iterable[Span]], None], host: str, port: int
) -> tuple[grpc.aio.Server, int]:
    """Serve OTLP/gRPC trace ingest on ``host:port`` (0: a free port); return the server
    (``await server.stop(grace)`` to stop) and the port."""
    options = [
        ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
        # gRPC sets SO_REUSEPORT by default: a second control plane would then share the port
        # (and half the spans) silently instead of failing to start.
        ("grpc.so_reuseport", 0),
    ]
    server = grpc.aio.server(options=options)
    add = trace_service_pb2_grpc.add_TraceServiceServicer_to_server
    add(TraceService(sink), server)  # type: ignore[no-untyped-call]
    bound = server.add_insecure_port(f"{host}:{port}")
    if not bound:  # older gRPC reports a failed bind this way, newer raises
        raise OSError(f"cannot listen for OTLP on {host}:{port}: address in use")
    await server.start()
    return server, bound
