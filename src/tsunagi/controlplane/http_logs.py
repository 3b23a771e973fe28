"""One line, not a traceback, for a request so malformed that aiohttp refuses it itself.

aiohttp answers such a request 400 (a request line over 8 KiB, a broken header) and logs it
with a traceback, as if the server had failed. It did not: the client sent garbage, and an
operator reading the log needs to know who and why, nothing more.
"""

from __future__ import annotations

import logging

from aiohttp.http_exceptions import HttpProcessingError


class _MalformedRequests(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            reason = str(exc.message).splitlines()[0][:200]
            record.args = (record.getMessage(), reason)
            record.msg = "%s: refused a malformed request (400): %s"
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info = record.exc_text = None
        return True


def quiet_malformed_requests() -> None:
    """Log requests aiohttp refuses as malformed in one warning line (idempotent)."""
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, _MalformedRequests) for f in server_log.filters):
        server_log.addFilter(_MalformedRequests())
