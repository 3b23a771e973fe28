"""The demo's external authorizer: ``python -m tsunagi.demo.ext_authz``.

It answers Envoy's HTTP ext_authz checks the way Istio's sample authorizer
(``samples/extauthz``, the HTTP side) does, so Istio's "External Authorization" task reads
the same on the demo. A check whose ``x-ext-authz`` header is ``allow`` is allowed (200);
any other is denied: 403 with :data:`DENIED_BODY`. Both answers carry
``x-ext-authz-check-result`` (``allowed`` / ``denied``) and ``x-ext-authz-check-received``,
a one-line summary of the check Envoy sent (method, path, headers), so ``curl -i`` shows
what the authorizer was told. Every method and path is a check: Envoy sends the original
request's method and path (after the provider's ``pathPrefix``).

Environment: ``PORT`` (required; ``tsunagi run`` sets it), where it listens on 127.0.0.1.
Each decision is logged to stderr, one line, so the demo's terminal shows it.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CHECK_HEADER = "x-ext-authz"
ALLOWED_VALUE = "allow"
RESULT_HEADER = "x-ext-authz-check-result"
RECEIVED_HEADER = "x-ext-authz-check-received"
DENIED_BODY = (
    f"denied by ext_authz for not found header `{CHECK_HEADER}: {ALLOWED_VALUE}` in the request"
)
"""The body of every denial, word for word Istio's sample's (the task tells users to look
for it)."""
MAX_RECEIVED = 4096
"""Longest ``x-ext-authz-check-received`` value: Envoy refuses responses whose headers are
too large, and a summary is not worth a failed check."""


def allowed(headers: Mapping[str, str]) -> bool:
    """Whether a check with these request headers (names in lower case) is allowed."""
    return headers.get(CHECK_HEADER) == ALLOWED_VALUE


def received(method: str, path: str, headers: Mapping[str, str]) -> str:
    """What Envoy sent, as one header-safe line (JSON, ASCII only), cut at ``MAX_RECEIVED``."""
    text = json.dumps({"method": method, "path": path, "headers": dict(headers)})
    return text if len(text) <= MAX_RECEIVED else text[: MAX_RECEIVED - 3] + "..."


class Handler(BaseHTTPRequestHandler):
    """Every request is a check: allow or deny it, as Istio's sample does."""

    protocol_version = "HTTP/1.1"  # keep-alive: Envoy reuses its connections to us

    def _check(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if length:  # a body only with includeRequestBodyInCheck; not part of the decision
            self.rfile.read(length)
        headers = {k.lower(): v for k, v in self.headers.items()}
        ok = allowed(headers)
        body = b"" if ok else DENIED_BODY.encode()
        self.send_response(200 if ok else 403)
        self.send_header(RESULT_HEADER, "allowed" if ok else "denied")
        self.send_header(RECEIVED_HEADER, received(self.command, self.path, headers))
        if body:
            self.send_header("content-type", "text/plain; charset=utf-8")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        print(
            f"ext-authz: {'allowed' if ok else 'denied'} {self.command} {self.path} "
            f"({CHECK_HEADER}: {headers.get(CHECK_HEADER, '(none)')})",
            file=sys.stderr,
            flush=True,
        )

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _check

    def log_message(self, format: str, *args: object) -> None:
        """Silence the default per-request line: :meth:`_check` logs the decision instead."""


def main() -> int:
    """Serve checks on 127.0.0.1:$PORT until SIGTERM or Ctrl-C; return the exit code."""
    raw = os.environ.get("PORT", "")
    if not raw.isdigit():
        print("ext-authz: set PORT to the port to listen on (tsunagi run sets it)", file=sys.stderr)
        return 2
    try:
        server = ThreadingHTTPServer(("127.0.0.1", int(raw)), Handler)
    except OSError as e:  # typically "address already in use"
        print(f"ext-authz: cannot listen on 127.0.0.1:{raw}: {e}", file=sys.stderr)
        return 1
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"ext-authz: listening on http://127.0.0.1:{raw}", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
