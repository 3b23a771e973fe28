"""Virtual IPs: one stable IPv4 address per mesh service host, for intercepting sidecars.

An app behind ``tsunagi run --intercept`` resolves ``reviews`` in DNS (its sidecar answers,
see ``xds/translate/dns_table.py``) and connects to the address it got; the sidecar's capture
listener knows which service that address stands for. Like Istio's automatic address
allocation, addresses come from ``240.240.0.0/16`` (reserved, never routed on the internet)
and go to the hosts that have none of their own: registered services, and ServiceEntries
without ``addresses``. Wildcard hosts get none (no single name to answer), nor do
ServiceEntries with ``resolution: NONE`` (their clients must reach the address the name
really has: Istio's original destination).

The rule, so that an address stays with its host across pushes and control-plane restarts
without any stored state: a host's preferred address is a hash of its name (BLAKE2b, the
first four bytes modulo the 65,534 usable addresses, skipping ``.0.0`` and ``.255.255``);
hosts are taken in sorted order, and a host whose preferred address an earlier host already
holds takes the next free one after it (wrapping around). A host therefore keeps its
address unless a host sorting before it arrives whose own hash collides with it, which at a
few hundred services is rare (and then only the later hosts of that chain move).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

BASE = (240 << 24) | (240 << 16)
"""240.240.0.0, the start of the range."""
SIZE = 1 << 16
USABLE = SIZE - 2
"""240.240.0.1 .. 240.240.255.254."""


def _address(offset: int) -> str:
    n = BASE + offset
    return f"{n >> 24}.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"


def preferred_offset(host: str) -> int:
    """Where ``host`` would like to live in the range (1 .. 65534), from its name alone."""
    digest = hashlib.blake2b(host.encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big") % USABLE + 1


def allocate(hosts: Iterable[str]) -> dict[str, str]:
    """An address for each of ``hosts`` (the rule in the module doc), by host name.

    Raises ValueError when there are more hosts than addresses (65,534)."""
    wanted = sorted(set(hosts))
    if len(wanted) > USABLE:
        raise ValueError(f"{len(wanted)} services need virtual IPs; 240.240.0.0/16 holds {USABLE}")
    taken: set[int] = set()
    out: dict[str, str] = {}
    for host in wanted:
        offset = preferred_offset(host)
        while offset in taken:
            offset = offset % USABLE + 1  # the next one, wrapping past .255.254 to .0.1
        taken.add(offset)
        out[host] = _address(offset)
    return out


def wants_virtual_ip(host: str, addresses: tuple[str, ...], passthrough: bool) -> bool:
    """Whether a service host gets an allocated address (see the module doc)."""
    return not addresses and not passthrough and "*" not in host


def single_addresses(addresses: Iterable[str]) -> list[str]:
    """The single IPv4 addresses among ServiceEntry ``addresses`` (``1.2.3.4`` or
    ``1.2.3.4/32``); ranges and IPv6 are left out (a DNS A answer holds one address)."""
    out = []
    for a in addresses:
        ip, _, length = a.partition("/")
        if ":" not in ip and length in ("", "32"):
            out.append(ip)
    return out


def service_addresses(
    services: Mapping[str, tuple[tuple[str, ...], bool]],
) -> dict[str, tuple[str, ...]]:
    """host → the IPv4 addresses an intercepting client may reach it at: its own single
    ServiceEntry ``addresses``, else its allocated one. ``services``: host → (its
    ``addresses``, whether it is ``resolution: NONE``). Hosts with neither are left out."""
    allocated = allocate(h for h, (a, p) in services.items() if wants_virtual_ip(h, a, p))
    out: dict[str, tuple[str, ...]] = {}
    for host, (addresses, _passthrough) in services.items():
        own = single_addresses(addresses)
        if own:
            out[host] = tuple(own)
        elif host in allocated:
            out[host] = (allocated[host],)
    return out
