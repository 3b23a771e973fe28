"""Command line: ``python -m tsunagi.demo.bookinfo SERVICE``.

Environment: ``PORT`` (required), ``SERVICE_VERSION`` (default ``v1``), ``POD_NAME``,
``DOWNSTREAM_TIMEOUT`` (seconds; overrides Istio's per-call timeouts), ``HTTP_PROXY`` (the
sidecar); ratings also reads ``RATINGS_DELAY``, ``RATINGS_DELAY_PERCENT`` and
``RATINGS_FAIL_PERCENT`` (see :mod:`.ratings`).
"""

from __future__ import annotations

import asyncio
import logging
import sys

from . import SERVICES
from .common import ServiceConfig, serve


def main(argv: list[str] | None = None) -> int:
    """Run one service until SIGTERM/SIGINT; return the process exit code."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] not in SERVICES:
        print(
            f"usage: python -m tsunagi.demo.bookinfo {{{','.join(SERVICES)}}}",
            file=sys.stderr,
        )
        return 2
    name = args[0]
    try:
        config = ServiceConfig.from_env(name)
        app = SERVICES[name](config)
    except ValueError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s {config.served_by} %(levelname)s %(message)s",
    )
    try:
        asyncio.run(serve(app, config))
    except OSError as exc:  # typically "address already in use"
        print(f"{name}: cannot listen on 127.0.0.1:{config.port}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
