"""A gRPC client app in the mesh: calls ``greeter:9090`` twice, prints each outcome as a JSON
line on stdout, then idles until stopped.

``outbound``: as the README says, through ``TSUNAGI_OUTBOUND`` with the service as
``:authority``. ``by-name``: to ``greeter:9090`` directly, as an app unaware of the mesh
would; the environment ``tsunagi run`` set decides whether gRPC tries to tunnel through the
sidecar with CONNECT or resolves the name itself.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from typing import Any

import grpc

METHOD = "/tsunagi.test.Echo/Call"
SERVICE = "greeter:9090"


def attempt(how: str, target: str, options: list[tuple[str, Any]]) -> dict[str, Any]:
    try:
        with grpc.insecure_channel(target, options=options) as channel:
            reply = json.loads(channel.unary_unary(METHOD)(b"{}", timeout=5))
        return {"how": how, "status": "OK", "name": reply["name"]}
    except grpc.RpcError as e:
        return {"how": how, "status": e.code().name, "details": e.details()}


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    outbound = os.environ["TSUNAGI_OUTBOUND"]
    for result in (
        attempt("outbound", outbound, [("grpc.default_authority", SERVICE)]),
        attempt("by-name", SERVICE, []),
    ):
        print(json.dumps(result), flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
