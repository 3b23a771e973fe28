"""What the xDS server tells whoever watches it: connections, requests, responses.

The server knows nothing about what is done with it (metrics, in the control plane); it
calls a :class:`StreamObserver` at four points of a stream's life. Each call happens on the
event loop, in the stream's task, so an observer must return at once: count, observe one
histogram value, never wait.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from tsunagi.xds.cache import NodeEntry
from tsunagi.xds.protocol import Event


class StreamObserver(Protocol):
    """Hooks the ADS server calls; see :data:`NO_OBSERVER` for the do-nothing one."""

    def connected(self, entry: NodeEntry, client_version: str) -> None:
        """A proxy opened a stream; ``client_version`` is its build version ("" unknown)."""
        ...

    def disconnected(self, entry: NodeEntry) -> None:
        """The stream of ``entry`` ended."""
        ...

    def received(self, entry: NodeEntry, events: Sequence[Event]) -> None:
        """A request arrived and meant ``events`` (ACKs, NACKs, stale nonces...)."""
        ...

    def sent(self, entry: NodeEntry, type_url: str, seconds: float) -> None:
        """A response of ``type_url`` was built and written in ``seconds``."""
        ...


class _NoObserver:
    def connected(self, entry: NodeEntry, client_version: str) -> None:
        pass

    def disconnected(self, entry: NodeEntry) -> None:
        pass

    def received(self, entry: NodeEntry, events: Sequence[Event]) -> None:
        pass

    def sent(self, entry: NodeEntry, type_url: str, seconds: float) -> None:
        pass


NO_OBSERVER: StreamObserver = _NoObserver()
"""An observer that ignores everything (the server's default)."""
