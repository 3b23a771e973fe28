"""AuthorizationPolicy: which policies select a workload (root namespace, its namespace,
``selector``), in Istio's evaluation order."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tsunagi.api import Resource

if TYPE_CHECKING:
    from tsunagi.mesh.world import Node, World


def policies_for(world: World, node: Node) -> tuple[Resource, ...]:
    """The AuthorizationPolicies that apply to ``node``."""
    return ()
