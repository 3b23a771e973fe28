"""Bound tickets: which proxies may receive a gateway's private keys.

Until xDS is authenticated with mTLS (issue 10), anyone who reaches the xDS port could claim
to be a gateway. ``GET /v1/bootstrap`` (which needs the API token) hands an agent a ticket
bound to its node id and namespace: an HMAC-SHA256 with a key only the control plane holds.
Envoy sends it on its ADS stream as gRPC metadata (``proxy_contract.TICKET_METADATA``); the
server checks it once, when the stream opens, and only a gateway whose ticket matched gets
Secrets.

The key is the control plane's (``controlplane.auth.ensure_ticket_key``: made once in the
state directory, so tickets stay valid across restarts and Envoy's reconnects).
"""

from __future__ import annotations

import hashlib
import hmac


def bindable(text: str) -> bool:
    """Whether ``text`` may be bound into a ticket: no NUL or other control character."""
    return text.isprintable()


def ticket(key: bytes, node_id: str, namespace: str) -> str:
    """The ticket of the proxy ``node_id`` in ``namespace`` (hex).

    Raises ``ValueError`` if either holds a control character: a NUL separates the two in
    the signed message, so allowing one would make ("x\\0ns2", "y") sign as ("x", "ns2\\0y").
    """
    for what, text in (("node id", node_id), ("namespace", namespace)):
        if not bindable(text):
            raise ValueError(f"the {what} {text!r} holds a control character")
    message = f"tsunagi-xds-ticket-v1\0{node_id}\0{namespace}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def matches(key: bytes, presented: str | None, node_id: str, namespace: str) -> bool:
    """Whether ``presented`` is the ticket of ``node_id`` in ``namespace`` (constant time).

    A node id or namespace with a control character never matches (no ticket is made for one).
    """
    if not presented or not bindable(node_id) or not bindable(namespace):
        return False
    return hmac.compare_digest(presented.encode(), ticket(key, node_id, namespace).encode())
