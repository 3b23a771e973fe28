"""AuthorizationPolicy → Envoy's RBAC filters (HTTP and network), CUSTOM → ext_authz."""

from __future__ import annotations

from typing import Any

from tsunagi.mesh import Node
from tsunagi.mesh.security import WorkloadSecurity


def http_filters(security: WorkloadSecurity, node: Node, port: int) -> tuple[dict[str, Any], ...]:
    """The RBAC (and ext_authz) HTTP filters for inbound ``port``; none without policies."""
    return ()


def network_filters(
    security: WorkloadSecurity, node: Node, port: int
) -> tuple[dict[str, Any], ...]:
    """The RBAC network filters for inbound TCP ``port``; none without policies."""
    return ()
