"""A test backend: answers every request with JSON saying who it is and what it received.

``/status/NNN`` answers with status NNN; ``GET /metrics`` is Prometheus text (how many
requests it received); ``GET /_seen`` lists the requests it received
(method, path, headers; the last 1000, not counting ``/_seen`` itself). A ``sleep=SECONDS``
query parameter (at most 10) delays the answer, to keep requests in flight; ``fail=VERSION``
makes the instances of that version answer 503.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import deque
from typing import Any
from urllib.parse import parse_qs, urlsplit

from _serve import QuietHandler, serve

SEEN: deque[dict[str, Any]] = deque(maxlen=1000)
SEEN_LOCK = threading.Lock()


class Handler(QuietHandler):
    protocol_version = "HTTP/1.1"
    # One write per response and no Nagle: otherwise headers and body leave in two packets
    # and delayed ACKs add ~40 ms to every keep-alive request.
    wbufsize = 64 * 1024
    disable_nagle_algorithm = True

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        received = {
            "method": self.command,
            "path": self.path,
            "headers": {k.lower(): v for k, v in self.headers.items()},
        }
        status = 200
        if self.path == "/metrics":  # its own Prometheus metrics (tsunagi run --app-metrics)
            with SEEN_LOCK:
                text = f"# TYPE echo_requests_total counter\necho_requests_total {len(SEEN)}\n"
            self.send_response(200)
            self.send_header("content-type", "text/plain; version=0.0.4")
            self.send_header("content-length", str(len(text)))
            self.end_headers()
            self.wfile.write(text.encode())
            return
        if self.path == "/_seen":
            with SEEN_LOCK:
                received["requests"] = list(SEEN)
        else:
            with SEEN_LOCK:
                SEEN.append(received)
            parts = self.path.split("/")
            if len(parts) > 2 and parts[1] == "status" and parts[2].isdigit():
                status = int(parts[2])
            query = parse_qs(urlsplit(self.path).query)
            if sleep := query.get("sleep"):
                time.sleep(min(float(sleep[0]), 10.0))
            if os.environ.get("SERVICE_VERSION", "") in query.get("fail", ()):
                status = 503
        body = json.dumps(
            {
                "service": os.environ.get("SERVICE_NAME", ""),
                "version": os.environ.get("SERVICE_VERSION", ""),
                "name": os.environ.get("POD_NAME", ""),
                **received,
            }
        ).encode()
        self.send_json(body, status)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _answer


def main() -> None:
    serve(Handler)


if __name__ == "__main__":
    main()
