"""A cap on the API's concurrent connections per client address.

aiohttp has no such limit: one client (a bug, a runaway script) could open thousands of idle
connections and use up the control plane's file descriptors while agents wait. The
:class:`LimitedSite` serves an aiohttp runner through :class:`ConnectionLimiter`, which wraps
aiohttp's protocol factory: a connection over the limit for its address is answered at once
with a JSON 503 that says why, and closed; every other client keeps being served.

Idle connections are aiohttp's business: its keep-alive timer (the runner's
``keepalive_timeout``) starts when a connection opens, so it also closes a connection that
never finishes sending its first request's headers.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable

from aiohttp import web


def refusal(address: str, limit: int) -> bytes:
    """The whole HTTP response a refused connection gets."""
    message = (
        f"too many connections from {address}: at most {limit} at once per client address; "
        "close idle connections (or reuse them) and retry"
    )
    body = json.dumps({"error": message, "errors": [message]}).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\n"
        "Content-Type: application/json; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Retry-After: 1\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


class ConnectionLimiter:
    """A protocol factory: aiohttp's protocol for connections within the per-address limit,
    an immediate 503 for the others."""

    def __init__(
        self,
        inner: Callable[[], asyncio.Protocol],
        per_client: int,
        refused_linger: float = 2.0,
    ) -> None:
        self.inner = inner
        self.per_client = per_client
        self.refused_linger = refused_linger
        """How long a refused connection may stay open for the client to read the 503."""
        self.open: Counter[str] = Counter()
        self._refused: set[asyncio.Transport] = set()

    def __call__(self) -> asyncio.Protocol:
        return _Gate(self)

    def close_refused(self) -> None:
        for transport in list(self._refused):
            transport.close()


class _Gate(asyncio.Protocol):
    """Either passes everything to aiohttp's protocol or answers 503 and closes."""

    def __init__(self, limiter: ConnectionLimiter) -> None:
        self.limiter = limiter
        self.address = ""
        self.inner: asyncio.Protocol | None = None
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        peer = transport.get_extra_info("peername")
        self.address = str(peer[0]) if isinstance(peer, tuple) and peer else str(peer or "")
        limiter = self.limiter
        if limiter.open[self.address] >= limiter.per_client:
            self._refuse(transport)
            return
        limiter.open[self.address] += 1
        self.inner = limiter.inner()
        self.inner.connection_made(transport)

    def _refuse(self, transport: asyncio.Transport) -> None:
        # Answer before the request arrives, then stop writing but keep reading (and
        # discarding) for a moment: closing at once could reset the connection before the
        # client has read why.
        self.transport = transport
        self.limiter._refused.add(transport)
        transport.write(refusal(self.address, self.limiter.per_client))
        if transport.can_write_eof():
            transport.write_eof()
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(self.limiter.refused_linger, transport.close)

    def data_received(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        if self.inner is not None:
            return self.inner.eof_received()
        return False  # refused: the client is done; close

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.inner is not None:
            limiter = self.limiter
            limiter.open[self.address] -= 1
            if limiter.open[self.address] <= 0:
                del limiter.open[self.address]
            self.inner.connection_lost(exc)
            self.inner = None
            return
        if self.timer is not None:
            self.timer.cancel()
        if self.transport is not None:
            self.limiter._refused.discard(self.transport)


class LimitedSite(web.BaseSite):
    """Like :class:`aiohttp.web.TCPSite`, with :class:`ConnectionLimiter` in front."""

    def __init__(
        self, runner: web.BaseRunner, host: str, port: int, per_client: int, backlog: int = 128
    ) -> None:
        super().__init__(runner, backlog=backlog)
        self._host = host
        self._port = port
        self._per_client = per_client
        self.limiter: ConnectionLimiter | None = None

    @property
    def name(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None, "call runner.setup() first"
        self.limiter = ConnectionLimiter(server, self._per_client)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self.limiter, self._host, self._port, backlog=self._backlog
        )

    async def stop(self) -> None:
        await super().stop()
        if self.limiter is not None:
            self.limiter.close_refused()
