"""The control plane's trace collector: the span store, its Zipkin and OTLP listeners and
the optional exporter, started and stopped together by ``tsunagi up``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass

import grpc
from aiohttp import web

from tsunagi.telemetry import zipkin_api
from tsunagi.telemetry.export import Exporter, make_exporter
from tsunagi.telemetry.listen import listen_error
from tsunagi.telemetry.otlp_server import start_otlp
from tsunagi.telemetry.spans import DEFAULT_MAX_SPANS, Span, SpanStore

log = logging.getLogger("tsunagi.traces")


@dataclass(frozen=True)
class CollectorSettings:
    """``tsunagi up``'s trace flags. A port of 0 lets the OS choose; ``None`` turns that
    listener off."""

    host: str = "127.0.0.1"
    zipkin_port: int | None = 9411
    otlp_port: int | None = 4317
    max_spans: int = DEFAULT_MAX_SPANS
    export: str = ""
    """``--trace-export`` URL, or "" (see :func:`tsunagi.telemetry.export.parse_target`)."""


class TraceCollector:
    """Receives spans (Zipkin HTTP, OTLP/gRPC), keeps them in :attr:`store` and forwards them
    to :attr:`exporter` when one is set. :attr:`zipkin_port` and :attr:`otlp_port` hold the
    bound ports once :meth:`start` returns."""

    def __init__(self, settings: CollectorSettings) -> None:
        self.settings = settings
        self.store = SpanStore(settings.max_spans)
        # Parsed now so a bad URL fails `tsunagi up` before anything listens.
        self.exporter: Exporter | None = make_exporter(settings.export) if settings.export else None
        self.zipkin_port = 0
        self.otlp_port = 0
        self._runner: web.AppRunner | None = None
        self._grpc: grpc.aio.Server | None = None
        self._export_task: asyncio.Task[None] | None = None

    def ingest(self, spans: Iterable[Span]) -> None:
        """Store ``spans`` and queue them for export; never waits."""
        batch = list(spans)
        self.store.add(batch)
        if self.exporter is not None:
            self.exporter.offer(batch)

    async def start(self) -> None:
        """Open the listeners and start the exporter. On failure nothing is left open."""
        s = self.settings
        try:
            if s.zipkin_port is not None:
                try:
                    runner, self.zipkin_port = await zipkin_api.serve(
                        self.store, self.ingest, s.host, s.zipkin_port
                    )
                except OSError as e:
                    raise listen_error(e, s.zipkin_port, "--zipkin-port") from e
                self._runner = runner
            if s.otlp_port is not None:
                try:
                    self._grpc, self.otlp_port = await start_otlp(self.ingest, s.host, s.otlp_port)
                except (OSError, RuntimeError) as e:
                    raise listen_error(e, s.otlp_port, "--otlp-port") from e
        except BaseException:
            await self.stop()
            raise
        if self.exporter is not None:
            self._export_task = asyncio.create_task(self.exporter.run())
        log.info(
            "trace collector: Zipkin http://%s:%d/api/v2, OTLP/gRPC %s:%d, newest %d spans kept%s",
            s.host,
            self.zipkin_port,
            s.host,
            self.otlp_port,
            s.max_spans,
            f", exporting to {self.exporter.target.address}" if self.exporter else "",
        )

    async def stop(self) -> None:
        """Close the listeners, then flush and stop the exporter."""
        if self._runner is not None:
            await self._runner.cleanup()
        self._runner = None
        if self._grpc is not None:
            await self._grpc.stop(grace=0.5)
            self._grpc = None
        if self._export_task is not None:
            self._export_task.cancel()
            await asyncio.gather(self._export_task, return_exceptions=True)
            self._export_task = None
