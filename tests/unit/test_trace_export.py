"""The exporter's queue: never blocks ingest, drops what does not fit, batches, survives a
failing target."""

from __future__ import annotations

import asyncio
import logging

import pytest

from tsunagi.telemetry.export import Exporter, Target
from tsunagi.telemetry.spans import Span


def spans(n: int, start: int = 1) -> list[Span]:
    return [Span(trace_id=f"{i:016x}", id=f"{i:016x}") for i in range(start, start + n)]


async def test_offer_drops_beyond_the_queue_and_batches_the_rest() -> None:
    batches: list[list[Span]] = []

    async def send(batch: list[Span]) -> None:
        batches.append(batch)

    exporter = Exporter(Target("zipkin", "x"), send, queue_size=5, batch_size=2, batch_delay=5)
    exporter.offer(spans(7))
    assert exporter.dropped == 2
    task = asyncio.create_task(exporter.run())
    async with asyncio.timeout(10):
        while exporter.sent < 5:
            await asyncio.sleep(0.01)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert [len(b) for b in batches] == [2, 2, 1]
    assert [s.trace_id for b in batches for s in b] == [s.trace_id for s in spans(5)]


async def test_failures_are_counted_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    async def send(batch: list[Span]) -> None:
        raise ConnectionRefusedError("nobody there")

    exporter = Exporter(Target("zipkin", "http://far"), send, batch_size=1, batch_delay=0.01)
    task = asyncio.create_task(exporter.run())
    with caplog.at_level(logging.WARNING, logger="tsunagi.traces"):
        exporter.offer(spans(3))
        async with asyncio.timeout(10):
            while exporter.failed < 3:
                await asyncio.sleep(0.01)
        exporter.offer(spans(1, start=9))  # ingest still works while the target is down
        async with asyncio.timeout(10):
            while exporter.failed < 4:
                await asyncio.sleep(0.01)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    messages = [r.getMessage() for r in caplog.records if "trace export" in r.getMessage()]
    assert len(messages) == 1
    assert "http://far" in messages[0] and "nobody there" in messages[0]


async def test_stopping_flushes_what_is_queued() -> None:
    got: list[Span] = []

    async def send(batch: list[Span]) -> None:
        got.extend(batch)

    exporter = Exporter(Target("zipkin", "x"), send, batch_size=100, batch_delay=60)
    task = asyncio.create_task(exporter.run())
    await asyncio.sleep(0.05)
    exporter.offer(spans(3))
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert len(got) == 3
