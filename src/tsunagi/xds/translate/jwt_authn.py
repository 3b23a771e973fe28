"""RequestAuthentication → Envoy's JWT authentication filter."""

from __future__ import annotations

from typing import Any

from tsunagi.mesh import Node
from tsunagi.mesh.security import WorkloadSecurity


def http_filters(security: WorkloadSecurity, node: Node, port: int) -> tuple[dict[str, Any], ...]:
    """The ``jwt_authn`` filter for inbound ``port``; none without RequestAuthentication."""
    return ()
