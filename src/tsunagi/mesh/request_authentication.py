"""RequestAuthentication: which JWT rules apply to a workload (root namespace, its
namespace, ``selector``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tsunagi.api import Resource

if TYPE_CHECKING:
    from tsunagi.mesh.world import Node, World


def rules_for(world: World, node: Node) -> tuple[Resource, ...]:
    """The RequestAuthentications that apply to ``node``."""
    return ()
