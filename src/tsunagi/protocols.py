"""Istio's port protocols: their names, and what each means for the proxy.

Like :mod:`tsunagi.proxy_contract`, this module imports nothing of tsunagi, so every part may
use it: the CLI parses ``tsunagi run --port 9080/grpc`` with it (without pulling the API
models into each sidecar's memory), the registry checks registrations, and translation
decides per port whether a cluster speaks HTTP/2 or a port gets HTTP routes at all.

Names and their classes follow Istio's ``pkg/config/protocol``: compared case-insensitively,
stored upper case.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

HTTP = "HTTP"
HTTP2 = "HTTP2"
GRPC = "GRPC"
GRPC_WEB = "GRPC-WEB"
HTTP_PROXY = "HTTP_PROXY"
HTTPS = "HTTPS"
TCP = "TCP"
TLS = "TLS"
MONGO = "MONGO"
MYSQL = "MYSQL"
REDIS = "REDIS"
UDP = "UDP"

PROTOCOLS = (HTTP, HTTP2, GRPC, GRPC_WEB, HTTP_PROXY, HTTPS, TCP, TLS, MONGO, MYSQL, REDIS, UDP)
"""Every protocol Istio names, in the order ``--help`` and error messages list them."""

DEFAULT = HTTP
"""A port registered without a protocol (``tsunagi run --port 9080``) carries HTTP/1.1."""

_HTTP = frozenset({HTTP, HTTP2, GRPC, GRPC_WEB, HTTP_PROXY})
_HTTP2 = frozenset({HTTP2, GRPC, GRPC_WEB})


def canonical(name: str) -> str:
    """``name`` as stored (``grpc`` → ``GRPC``); ValueError naming the accepted names."""
    upper = name.strip().upper()
    if upper not in PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}; use one of: {accepted()}")
    return upper


def accepted() -> str:
    """The accepted names, as a user types them."""
    return ", ".join(p.lower() for p in PROTOCOLS)


def is_http(protocol: str) -> bool:
    """Whether the port carries HTTP (any version, gRPC included): it gets HTTP routes."""
    return protocol in _HTTP


def is_http2(protocol: str) -> bool:
    """Whether upstream connections to the port must speak HTTP/2 (Istio's ``IsHTTP2``:
    HTTP2, GRPC and GRPC-WEB)."""
    return protocol in _HTTP2


def parse_port(text: str) -> tuple[int, str]:
    """``9080`` → ``(9080, "HTTP")``; ``9080/grpc`` → ``(9080, "GRPC")``. ValueError with a
    message fit for a usage error."""
    number, sep, name = text.partition("/")
    try:
        port = int(number)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise ValueError(f"expected PORT[/PROTOCOL] with PORT in 1..65535, got {text!r}")
    if not sep:
        return port, DEFAULT
    return port, canonical(name)


def pick(declared: Iterable[str]) -> tuple[str, bool]:
    """The protocol of a service port whose instances declared ``declared`` (one entry per
    instance), and whether they disagreed.

    Deterministic whatever the order: the protocol most instances declare; on a tie the one
    first in :data:`PROTOCOLS` (plain HTTP before HTTP/2 before TCP).
    """
    counts = Counter(declared)
    if not counts:
        return DEFAULT, False
    best = min(counts, key=lambda p: (-counts[p], PROTOCOLS.index(p)))
    return best, len(counts) > 1
