"""The filters a workload's security config puts in front of its inbound listeners: JWT
validation (:mod:`.jwt_authn`), then authorization (:mod:`.authz`), as Istio orders them.
A workload that no policy selects gets none, so it pays nothing per request."""

from __future__ import annotations

from typing import Any

from tsunagi.mesh import Node
from tsunagi.mesh.security import WorkloadSecurity
from tsunagi.xds.translate import authz, jwt_authn


def http_filters(security: WorkloadSecurity, node: Node, port: int) -> tuple[dict[str, Any], ...]:
    """HTTP filters for inbound service ``port``, before the router."""
    return (
        *jwt_authn.http_filters(security, node, port),
        *authz.http_filters(security, node, port),
    )


def network_filters(
    security: WorkloadSecurity, node: Node, port: int
) -> tuple[dict[str, Any], ...]:
    """Network filters for inbound TCP service ``port``, before the TCP proxy."""
    return authz.network_filters(security, node, port)
