"""What every test app shares: serve a handler on ``$PORT`` (as ``tsunagi run`` sets it)
until SIGTERM, quietly. The apps run as scripts, so this folder is on their ``sys.path``."""

from __future__ import annotations

import os
import signal
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


def serve(handler: type[BaseHTTPRequestHandler], on_exit: Callable[[], None] | None = None) -> None:
    """Serve ``handler`` on 127.0.0.1:$PORT until SIGTERM; then ``on_exit``."""
    server = ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), handler)
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        server.serve_forever()
    finally:
        server.server_close()
        if on_exit is not None:
            on_exit()
