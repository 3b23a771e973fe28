"""Free loopback ports for the many sidecars that share one host."""

from __future__ import annotations

import os
import socket
import threading
from collections import deque

from tsunagi.httpwire import connect

# Path strings and os.urandom, not pathlib and random: this module runs in every sidecar agent,
# whose memory counts (agent/workdir.py).
_EPHEMERAL_RANGE = "/proc/sys/net/ipv4/ip_local_port_range"
_LOWEST = 10000
"""Below this, ports are more often configured for well-known services."""


def _listen_range() -> range:
    """Ports to listen on: those below the kernel's ephemeral range.

    A port handed out by ``bind(0)`` comes from the ephemeral range, which every outgoing
    connection on the host also draws its source port from; between the moment we find such
    a port free and the moment Envoy or the app binds it, a busy host's clients can take it.
    Ports below the range are never chosen by the kernel, so only another listener can.
    """
    try:
        with open(_EPHEMERAL_RANGE) as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return range(0)
    return range(_LOWEST, low) if low - _LOWEST >= 1000 else range(0)


# Ports this process handed out lately. A port is free again once released, so a caller
# that asks for one port at a time (before anything binds the last) could get the same one
# twice: ``bind(0)`` rarely repeats itself, but random picks do (50 picks among 22,000
# ports repeat one in 20 times).
_recent: deque[int] = deque(maxlen=4096)
_recent_lock = threading.Lock()


def _bound(port: int) -> socket.socket | None:
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        s.close()
        return None
    return s


def _pick(candidates: range) -> int:
    return candidates[int.from_bytes(os.urandom(4), "little") % len(candidates)]


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports that were free a moment ago (held together, then released),
    outside the ephemeral range when the host has room for that."""
    socks: list[socket.socket] = []
    candidates = _listen_range()
    try:
        tries = 0
        with _recent_lock:
            while len(socks) < count:
                tries += 1
                port = _pick(candidates) if candidates and tries <= 50 * count else 0
                if port in _recent:
                    continue
                s = _bound(port)
                if s is not None:
                    socks.append(s)
            ports = [s.getsockname()[1] for s in socks]
            _recent.extend(ports)
        return ports
    finally:
        for s in socks:
            s.close()


def wait_listening(port: int) -> bool:
    """True when something accepts connections on 127.0.0.1:``port``."""
    try:
        with connect("127.0.0.1", port, 0.2):
            return True
    except OSError:
        return False
