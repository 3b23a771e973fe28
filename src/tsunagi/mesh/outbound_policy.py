"""The outbound traffic policy: what a sidecar does with a request for a host the mesh does
not know (no registered service, no ServiceEntry).

Istio's rules: the mesh-wide ``meshConfig.outboundTrafficPolicy.mode`` (here ``tsunagi up
--outbound-policy``; ``ALLOW_ANY`` by default) holds unless the workload's Sidecar resource
sets ``outboundTrafficPolicy``. A workload's Sidecar is, in its namespace, the first one
whose ``workloadSelector`` labels the workload has, else the namespace's Sidecar without a
selector; a namespace with neither falls back to the root namespace's Sidecar without a
selector. Among several candidates the first in (namespace, name) order wins (Istio takes the
oldest; the store keeps no creation time).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Final, Literal

from tsunagi.api import Resource, ResourceOf, SidecarSpec
from tsunagi.mesh.visibility import ROOT_NAMESPACE

if TYPE_CHECKING:
    from tsunagi.mesh.world import ClientScope, Node, World

Mode = Literal["ALLOW_ANY", "REGISTRY_ONLY"]
"""An outbound traffic policy mode."""

ALLOW_ANY: Final = "ALLOW_ANY"
"""Unknown hosts pass through to where their name resolves (Istio's PassthroughCluster)."""
REGISTRY_ONLY: Final = "REGISTRY_ONLY"
"""Unknown hosts get 502 from the sidecar (Istio's ``block_all`` route)."""
MODES: tuple[Mode, ...] = (ALLOW_ANY, REGISTRY_ONLY)
DEFAULT: Mode = ALLOW_ANY
"""Istio's default ``meshConfig.outboundTrafficPolicy.mode``."""

Sidecar = ResourceOf[SidecarSpec]


def sidecars(resources: Iterable[Resource]) -> tuple[Sidecar, ...]:
    """The Sidecar resources among ``resources``, in (namespace, name) order."""
    found = [r for r in resources if isinstance(r.spec, SidecarSpec)]
    found.sort(key=lambda r: (r.namespace, r.name))
    return tuple(found)  # type: ignore[arg-type]  # each spec's type was just checked


def sidecar_for(
    candidates: Sequence[Sidecar], namespace: str, labels: Mapping[str, str]
) -> Sidecar | None:
    """The Sidecar that applies to a workload of ``namespace`` with ``labels`` (Istio's
    selection, see the module docstring); None when none does."""
    own = [s for s in candidates if s.namespace == namespace]
    for s in own:
        sel = s.spec.workload_selector
        if sel is not None and all(labels.get(k) == v for k, v in sel.labels.items()):
            return s
    for s in own:
        if s.spec.workload_selector is None:
            return s
    return next(
        (
            s
            for s in candidates
            if s.namespace == ROOT_NAMESPACE and s.spec.workload_selector is None
        ),
        None,
    )


def selector_keys(candidates: Iterable[Sidecar]) -> frozenset[str]:
    """Label keys that the selectors of Sidecars read: a sidecar's outbound routes depend on
    its values of these keys. Every selector counts, with a policy or not: a selected
    Sidecar without one still wins over the namespace's (the mesh default then holds)."""
    return frozenset(
        k
        for s in candidates
        if s.spec.workload_selector is not None
        for k in s.spec.workload_selector.labels
    )


def policy_for(
    candidates: Sequence[Sidecar], mesh_default: Mode, namespace: str, labels: Mapping[str, str]
) -> Mode:
    """``ALLOW_ANY`` or ``REGISTRY_ONLY`` for a workload of ``namespace`` with ``labels``."""
    sidecar = sidecar_for(candidates, namespace, labels)
    if sidecar is None or sidecar.spec.outbound_traffic_policy is None:
        return mesh_default
    return sidecar.spec.outbound_traffic_policy.mode


def outbound_policy(world: World, who: ClientScope | Node) -> Mode:
    """``ALLOW_ANY`` or ``REGISTRY_ONLY``: what the sidecar of ``who`` (its node, or the
    :class:`~tsunagi.mesh.ClientScope` its outbound config is made for, whose labels keep
    every key a Sidecar selector reads) does with a request for an unknown host."""
    labels = dict(who.labels) if not isinstance(who.labels, Mapping) else who.labels
    return policy_for(world.sidecars, world.mesh_outbound_policy, who.namespace, labels)
