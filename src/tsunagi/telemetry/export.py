"""``--trace-export URL``: forward every span received to another collector.

The URL says where and how, by its scheme:

- ``http://host:9411/api/v2/spans`` (or ``https://``): a Zipkin collector, sent Zipkin v2
  JSON by POST. A URL with no path gets Zipkin's ``/api/v2/spans``.
- ``otlp://host:4317`` or ``grpc://host:4317``: an OpenTelemetry collector (or Jaeger, or
  anything speaking OTLP/gRPC), sent ``TraceService/Export`` without TLS.

Ingest never waits for the exporter: spans go into a bounded queue; when it is full new
spans are dropped and counted. A worker sends them in batches. Failures are logged at most
once a minute, with how many batches and spans failed since the last message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from tsunagi.telemetry.spans import Span

log = logging.getLogger("tsunagi.traces")

Send = Callable[[list[Span]], Awaitable[None]]

QUEUE_SIZE = 10_000
BATCH_SIZE = 500
BATCH_DELAY = 1.0
"""Seconds a partial batch waits for company before it is sent."""
SEND_TIMEOUT = 10.0
ERROR_LOG_INTERVAL = 60.0


@dataclass(frozen=True)
class Target:
    """Where to export: ``protocol`` is ``"zipkin"`` (``address`` a URL) or ``"otlp"``
    (``address`` is ``host:port``)."""

    protocol: str
    address: str


def parse_target(url: str) -> Target:
    """Read a ``--trace-export`` URL. Raises ``ValueError`` saying which forms are known."""
    parts = urlsplit(url)
    if parts.scheme in ("http", "https") and parts.hostname:
        path = parts.path if parts.path not in ("", "/") else "/api/v2/spans"
        return Target("zipkin", f"{parts.scheme}://{parts.netloc}{path}")
    if parts.scheme in ("otlp", "grpc") and parts.hostname:
        return Target("otlp", f"{parts.hostname}:{parts.port or 4317}")
    raise ValueError(
        f"--trace-export {url!r}: give a Zipkin URL (http://HOST:9411/api/v2/spans) or an "
        "OTLP/gRPC endpoint (otlp://HOST:4317)"
    )


class Exporter:
    """A bounded queue of spans and the task that sends them with ``send``."""

    def __init__(
        self,
        target: Target,
        send: Send,
        queue_size: int = QUEUE_SIZE,
        batch_size: int = BATCH_SIZE,
        batch_delay: float = BATCH_DELAY,
        close: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.target = target
        self._send = send
        self._close = close
        self._queue: deque[Span] = deque()
        self.queue_size = queue_size
        self.batch_size = batch_size
        self.batch_delay = batch_delay
        self._wake = asyncio.Event()
        self.sent = 0
        self.dropped = 0
        """Spans dropped because the queue was full."""
        self.failed = 0
        """Spans in batches the target did not accept."""
        self._unlogged: tuple[int, int, str] = (0, 0, "")
        self._last_log = -ERROR_LOG_INTERVAL

    def offer(self, spans: Iterable[Span]) -> None:
        """Queue ``spans`` for export without waiting; what does not fit is dropped."""
        for span in spans:
            if len(self._queue) >= self.queue_size:
                self.dropped += 1
            else:
                self._queue.append(span)
        if len(self._queue) >= self.batch_size:
            self._wake.set()

    async def run(self) -> None:
        """Send batches until cancelled; then send what is queued once more and close."""
        try:
            while True:
                if len(self._queue) < self.batch_size:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), self.batch_delay)
                self._wake.clear()
                while self._queue:
                    await self._send_batch()
        finally:
            await self._final_flush()

    async def _final_flush(self) -> None:
        with contextlib.suppress(Exception, asyncio.CancelledError):
            async with asyncio.timeout(2.0):
                while self._queue:
                    await self._send_batch()
        if self._close is not None:
            with contextlib.suppress(Exception):
                await self._close()

    async def _send_batch(self) -> None:
        batch = [self._queue.popleft() for _ in range(min(self.batch_size, len(self._queue)))]
        try:
            async with asyncio.timeout(SEND_TIMEOUT):
                await self._send(batch)
            self.sent += len(batch)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # any failure of the far side: count it, log it now and then
            self.failed += len(batch)
            self._note_failure(len(batch), f"{type(e).__name__}: {e}")

    def _note_failure(self, spans: int, error: str) -> None:
        batches, lost, _ = self._unlogged
        self._unlogged = (batches + 1, lost + spans, error)
        now = time.monotonic()
        if now - self._last_log >= ERROR_LOG_INTERVAL:
            batches, lost, error = self._unlogged
            log.warning(
                "trace export to %s failed: %d batch(es), %d span(s) lost since the last "
                "message (%d dropped on a full queue in all); last error: %s",
                self.target.address,
                batches,
                lost,
                self.dropped,
                error,
            )
            self._unlogged = (0, 0, "")
            self._last_log = now


def make_exporter(url: str) -> Exporter:
    """An :class:`Exporter` for a ``--trace-export`` URL (see :func:`parse_target`)."""
    target = parse_target(url)
    if target.protocol == "zipkin":
        return _zipkin_exporter(target)
    return _otlp_exporter(target)


def _zipkin_exporter(target: Target) -> Exporter:
    import aiohttp

    from tsunagi.telemetry import zipkin_json

    session: aiohttp.ClientSession | None = None

    async def send(batch: list[Span]) -> None:
        nonlocal session
        if session is None:
            session = aiohttp.ClientSession()
        async with session.post(
            target.address,
            data=zipkin_json.encode(batch),
            headers={"Content-Type": "application/json"},
        ) as response:
            if response.status >= 300:
                text = (await response.text())[:200]
                raise RuntimeError(f"HTTP {response.status}: {text.strip()}")

    async def close() -> None:
        if session is not None:
            await session.close()

    return Exporter(target, send, close=close)


def _otlp_exporter(target: Target) -> Exporter:
    import grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

    from tsunagi.telemetry import otlp_spans

    channel = None
    stub = None

    async def send(batch: list[Span]) -> None:
        nonlocal channel, stub
        if stub is None:
            channel = grpc.aio.insecure_channel(target.address)
            stub = trace_service_pb2_grpc.TraceServiceStub(channel)  # type: ignore[no-untyped-call]
        response = await stub.Export(otlp_spans.to_request(batch), timeout=SEND_TIMEOUT)
        if response.partial_success.rejected_spans:
            raise RuntimeError(
                f"{response.partial_success.rejected_spans} span(s) rejected: "
                f"{response.partial_success.error_message}"
            )

    async def close() -> None:
        if channel is not None:
            await channel.close()

    return Exporter(target, send, close=close)
