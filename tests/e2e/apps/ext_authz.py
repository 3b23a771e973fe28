"""The demo's external authorizer (:mod:`tsunagi.demo.ext_authz`, answering as Istio's
sample does), recording the checks it gets, so the tests exercise the authorizer users run.

Envoy's ext_authz filter sends it each checked request's method, path (after the
provider's ``pathPrefix``, ``/check`` in the tests) and allowed headers. A request carrying
``x-ext-authz: allow`` is allowed: 200 with ``x-ext-authz-check-result: allowed``, a header
the provider config passes on to the app. Any other is denied: 403, a text body and
``x-ext-authz-check-result: denied``, which reach the client.

``GET /_checks`` (no ``/check`` prefix, so never a check itself) lists the checks it got, each
as the path it was asked about (prefix included) and the headers Envoy sent, so a test can
tell which requests reached the authorizer and what it saw of them. Only here: the demo's
authorizer has no such endpoint, which would show anyone in the mesh others' headers.
"""

from __future__ import annotations

import json
import threading

from _serve import QuietHandler, serve

from tsunagi.demo import ext_authz

CHECKS: list[dict[str, object]] = []
LOCK = threading.Lock()


class Handler(ext_authz.Handler, QuietHandler):
    def _recorded(self) -> None:
        if self.path == "/_checks":
            with LOCK:
                body = json.dumps({"checks": list(CHECKS)}).encode()
            self.send_json(body)
            return
        seen = {"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}}
        with LOCK:
            CHECKS.append(seen)
        self._check()

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _recorded


def main() -> None:
    serve(Handler)


if __name__ == "__main__":
    main()
