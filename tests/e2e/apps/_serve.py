"""What every test app shares: serve a handler on ``$PORT`` (as ``tsunagi run`` sets it)
until SIGTERM, quietly. The apps run as scripts, so this folder is on their ``sys.path``."""

from __future__ import annotations

import os
import signal
import socketserver
import sys
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class QuietHandler(BaseHTTPRequestHandler):
    """A handler that does not log each request to stderr."""

    def log_message(self, format: str, *args: object) -> None:
        pass

    def send_json(self, body: bytes, status: int = 200) -> None:
        """Answer ``body`` as JSON."""
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _TCPServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True  # as HTTPServer: a restarted app rebinds at once


def serve(
    handler: type[socketserver.BaseRequestHandler],
    on_exit: Callable[[], None] | None = None,
    http: bool = True,
) -> None:
    """Serve ``handler`` on 127.0.0.1:$PORT until SIGTERM; then ``on_exit``. ``http=False``
    serves raw TCP connections (a ``socketserver`` stream handler)."""
    server_type = ThreadingHTTPServer if http else _TCPServer
    server = server_type(("127.0.0.1", int(os.environ["PORT"])), handler)
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        server.serve_forever()
    finally:
        server.server_close()
        if on_exit is not None:
            on_exit()
