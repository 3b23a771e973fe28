"""Host name helpers: Istio's short-name rule."""

from __future__ import annotations

DEFAULT_DOMAIN_SUFFIX = "cluster.local"


def fqdn(host: str, namespace: str, suffix: str = DEFAULT_DOMAIN_SUFFIX) -> str:
    """Resolve a host as Istio does for VirtualService/DestinationRule hosts.

    A host without a dot (``reviews``) is a short name relative to ``namespace``
    and becomes ``reviews.<namespace>.svc.<suffix>``. Hosts containing a dot or
    a ``*`` wildcard are kept as written. The result is lowercased because DNS
    names are case-insensitive.
    """
    h = host.strip().lower()
    if "." in h or "*" in h or not h:
        return h
    return f"{h}.{namespace.lower()}.svc.{suffix}"
