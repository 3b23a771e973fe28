"""A test HTTP external authorizer, behaving like Istio's sample ext-authz server.

Envoy's ext_authz filter sends it each checked request's method, path (after the
provider's ``pathPrefix``, ``/check`` in the tests) and allowed headers. A request carrying
``x-ext-authz: allow`` is allowed: 200 with ``x-ext-authz-check-result: allowed``, a header
the provider config passes on to the app. Any other is denied: 403, a text body and
``x-ext-authz-check-result: denied``, which reach the client.

``GET /_checks`` (no ``/check`` prefix, so never a check itself) lists the checks it got, each
as the path it was asked about (prefix included) and the headers Envoy sent, so a test can
tell which requests reached the authorizer and what it saw of them.
"""

from __future__ import annotations

import json
import threading

from _serve import QuietHandler, serve

DENIED_BODY = b"denied by ext_authz for not found header `x-ext-authz: allow` in the request"
CHECKS: list[dict[str, object]] = []
LOCK = threading.Lock()


class Handler(QuietHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        if self.path == "/_checks":
            with LOCK:
                body = json.dumps({"checks": list(CHECKS)}).encode()
            self.send_json(body)
            return
        seen = {"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}}
        with LOCK:
            CHECKS.append(seen)
        if self.headers.get("x-ext-authz", "") == "allow":
            self.send_response(200)
            self.send_header("x-ext-authz-check-result", "allowed")
            self.send_header("content-length", "0")
            self.end_headers()
            return
        self.send_response(403)
        self.send_header("x-ext-authz-check-result", "denied")
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(DENIED_BODY)))
        self.end_headers()
        self.wfile.write(DENIED_BODY)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _answer


def main() -> None:
    serve(Handler)


if __name__ == "__main__":
    main()
