"""The last workload certificate the CA issued to each proxy, so ``tsunagi proxy-config
secret`` can show a proxy's own certificate (``default``) beside the Secrets the control
plane pushed, as ``istioctl proxy-config secret`` does.

Why here and not from the agent: the CA signed the certificate, so it knows its exact
serial and dates without trusting anyone's report, and the agent needs no new message. The
agent names its proxy in ``POST /v1/certificates`` (``proxy``: its node id), which the API
checks is ``NAME.NAMESPACE`` of the identity's namespace.

Memory only (a restart forgets; the next renewal records again), and bounded: at most
:data:`MAX_RECORDS` proxies. When full, the record dropped is the oldest of a proxy that is
not connected to xDS, else the oldest of all; so a workload making up proxy names cannot
push out the records of proxies that are running.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

MAX_RECORDS = 4096
"""Proxies remembered; each record is a PEM chain of a few KiB."""


@dataclass(frozen=True)
class IssuedRecord:
    """A certificate as issued: the chain (leaf first) and the trust bundle given with it."""

    chain: bytes
    roots: bytes


class IssuedCertificates:
    """Node id → the last certificate issued for it, bounded (see the module's notes)."""

    def __init__(self, connected: Callable[[str], bool], limit: int = MAX_RECORDS) -> None:
        """``connected(node_id)``: whether that proxy has an xDS stream now."""
        self._records: OrderedDict[str, IssuedRecord] = OrderedDict()
        self._connected = connected
        self._limit = limit

    def record(self, node_id: str, issued: IssuedRecord) -> None:
        """Remember ``issued`` as ``node_id``'s current certificate."""
        self._records.pop(node_id, None)
        self._records[node_id] = issued  # newest last
        while len(self._records) > self._limit:
            gone = next((n for n in self._records if not self._connected(n)), None)
            if gone is None:
                self._records.popitem(last=False)
            else:
                del self._records[gone]

    def get(self, node_id: str) -> IssuedRecord | None:
        """The last certificate issued for ``node_id``, if it is remembered."""
        return self._records.get(node_id)

    def __len__(self) -> int:
        return len(self._records)
