"""A gRPC test backend without generated code: one unary method, ``/tsunagi.test.Echo/Call``,
whose request and reply are JSON bytes.

The reply says who answered (service, version, instance name), which attempt this was for
the request's ``key``, and the metadata the call arrived with. A request with
``"fail_first": N`` is answered UNAVAILABLE for the first N attempts with its ``key``, so a
test can tell exactly how many attempts reached the server.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from collections import Counter
from concurrent import futures
from typing import Any

import grpc

ATTEMPTS: Counter[str] = Counter()
LOCK = threading.Lock()


def call(request: bytes, context: Any) -> bytes:
    asked = json.loads(request or b"{}")
    key = str(asked.get("key", ""))
    with LOCK:
        ATTEMPTS[key] += 1
        attempt = ATTEMPTS[key]
    if attempt <= int(asked.get("fail_first", 0)):
        context.abort(grpc.StatusCode.UNAVAILABLE, f"attempt {attempt} fails on purpose")
    reply = {
        "service": os.environ.get("SERVICE_NAME", ""),
        "version": os.environ.get("SERVICE_VERSION", ""),
        "name": os.environ.get("POD_NAME", ""),
        "attempt": attempt,
        "metadata": {k: v for k, v in context.invocation_metadata() if isinstance(v, str)},
    }
    return json.dumps(reply).encode()


def main() -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    # No (de)serializers: the handler sees and returns raw bytes.
    handler = grpc.method_handlers_generic_handler(
        "tsunagi.test.Echo", {"Call": grpc.unary_unary_rpc_method_handler(call)}
    )
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{os.environ['PORT']}")
    server.start()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    done.wait()
    server.stop(0).wait()
    sys.exit(0)


if __name__ == "__main__":
    main()
