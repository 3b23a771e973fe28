"""A request aiohttp refuses as malformed is logged in one warning line, not a traceback."""

from __future__ import annotations

import asyncio
import logging

import pytest
from aiohttp import web

from tsunagi.controlplane.http_logs import quiet_malformed_requests


async def _send_raw(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    reply = await reader.read(200)
    writer.close()
    return reply


async def test_an_over_long_request_line_is_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    quiet_malformed_requests()
    quiet_malformed_requests()  # idempotent: one filter
    assert len(logging.getLogger("aiohttp.server").filters) == 1
    runner = web.AppRunner(web.Application(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        with caplog.at_level(logging.DEBUG, logger="aiohttp.server"):
            reply = await _send_raw(port, b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
            await asyncio.sleep(0.1)
    finally:
        await runner.cleanup()
    assert reply.split(b" ", 2)[1] == b"400", reply
    records = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert len(records) == 1, records
    assert records[0].levelno == logging.WARNING and records[0].exc_info is None
    assert "refused a malformed request (400)" in records[0].getMessage()
    assert "Traceback" not in caplog.text
