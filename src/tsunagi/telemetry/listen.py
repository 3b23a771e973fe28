"""Errors for listening ports that a ``tsunagi up`` flag chose, worded the same everywhere."""

from __future__ import annotations

import errno


def port_in_use(port: int, flag: str) -> str:
    """The error for a listening port that another process holds."""
    return f"port {port} is in use: choose another {flag} (0 lets the OS choose)"


def listen_error(e: BaseException, port: int, flag: str) -> OSError:
    """``e`` (a failed bind on ``port``) as an error naming ``flag``. A bind failure without
    an errno (gRPC reports it as a bare RuntimeError) is taken as "in use", its usual cause."""
    code = getattr(e, "errno", None)
    if code in (None, errno.EADDRINUSE):
        return OSError(port_in_use(port, flag))
    return OSError(f"cannot listen on port {port} ({e}): choose another {flag}")
