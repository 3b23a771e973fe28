"""PeerAuthentication: the mTLS mode of each inbound port, with Istio's precedence
(workload selector over namespace over the root namespace; ``portLevelMtls`` over the
workload's mode; UNSET inherits)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tsunagi.mesh.world import Node, World


def mtls_modes(world: World, node: Node) -> tuple[tuple[int, str], ...]:
    """``(service port, mode)`` for each of ``node``'s inbound ports."""
    return ()
