"""PeerAuthentication: the mTLS mode of each inbound port, with Istio's precedence.

Istio's rules (``ComposePeerAuthentication`` and the policy index it reads):

- A policy without a selector (or with empty ``matchLabels``) in the root namespace
  (``tsunagi up --root-namespace``) is mesh-wide; elsewhere it covers its namespace. One
  with a selector covers the workloads whose labels include it, in its namespace only: in
  the root namespace it is ignored.
- The narrowest wins: workload over namespace over mesh. Where several compete at one
  level Istio takes the oldest; resources here have no creation time, so the first in
  ``(namespace, name)`` order wins (as Gateways and VirtualServices are ordered here).
- ``UNSET`` (or no ``mtls``) inherits from the level above; the mesh default is
  PERMISSIVE. ``portLevelMtls`` (selector policies only) overrides the workload's mode on
  its ports, an UNSET port inheriting the workload's mode.
- Istio keys ``portLevelMtls`` by the workload's port (a Kubernetes Service's
  ``targetPort``), not the Service's port. A workload here serves ``tsunagi run --port``:
  the same number is its service port and the port a ServiceEntry's ``targetPort`` selects
  it by, while the app's own port is allocated anew at each start. So the key is the
  ``--port`` number: what a Kubernetes user writes when port and targetPort agree.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

from tsunagi.api import PeerAuthenticationSpec, Resource
from tsunagi.mesh import selectors
from tsunagi.mesh.security import DEFAULT_ROOT_NAMESPACE

if TYPE_CHECKING:
    from tsunagi.mesh.world import Node, World

STRICT = "STRICT"
PERMISSIVE = "PERMISSIVE"
DISABLE = "DISABLE"
UNSET = "UNSET"
DEFAULT_MODE = PERMISSIVE
"""The mode of a workload no policy covers (Istio's)."""


@dataclass(frozen=True)
class PeerPolicy:
    """The merged PeerAuthentication of one workload."""

    mode: str = DEFAULT_MODE
    """``STRICT``, ``PERMISSIVE`` or ``DISABLE``: the mode of ports ``per_port`` omits."""
    per_port: tuple[tuple[int, str], ...] = ()
    """``(port, mode)`` from the workload policy's ``portLevelMtls``, UNSET resolved."""

    def mode_for(self, port: int) -> str:
        """The mode of workload ``port``."""
        return next((m for p, m in self.per_port if p == port), self.mode)


def _mode(spec: PeerAuthenticationSpec | None) -> str:
    return spec.mtls.mode if spec is not None and spec.mtls is not None else UNSET


@dataclass(frozen=True)
class PeerAuthentications:
    """A World's PeerAuthentications, indexed for :meth:`policy_for`."""

    root_namespace: str = DEFAULT_ROOT_NAMESPACE
    wide: Mapping[str, PeerAuthenticationSpec] = field(default_factory=lambda: MappingProxyType({}))
    """namespace → the policy without a selector that wins there (the root namespace's is
    the mesh's)."""
    selecting: Mapping[str, tuple[PeerAuthenticationSpec, ...]] = field(
        default_factory=lambda: MappingProxyType({})
    )
    """namespace → its policies with a selector, first one first (never the root's)."""

    @classmethod
    def of(cls, resources: Iterable[Resource], root_namespace: str) -> PeerAuthentications:
        """The index of the PeerAuthentications among ``resources``."""
        found = sorted(
            (r for r in resources if isinstance(r.spec, PeerAuthenticationSpec)),
            key=lambda r: (r.namespace, r.name),
        )
        wide: dict[str, PeerAuthenticationSpec] = {}
        selecting: dict[str, list[PeerAuthenticationSpec]] = {}
        for r in found:
            spec = r.spec
            assert isinstance(spec, PeerAuthenticationSpec)  # narrowed by the filter above
            if not selectors.narrows(spec.selector):
                wide.setdefault(r.namespace, spec)
            elif r.namespace != root_namespace:  # Istio ignores these
                selecting.setdefault(r.namespace, []).append(spec)
        return cls(
            root_namespace,
            MappingProxyType(wide),
            MappingProxyType({ns: tuple(specs) for ns, specs in selecting.items()}),
        )

    def policy_for(self, namespace: str, labels: Mapping[str, str]) -> PeerPolicy:
        """The merged policy of a workload in ``namespace`` with ``labels``."""
        mode = DEFAULT_MODE
        levels = [self.wide.get(self.root_namespace)]
        workload = None
        if namespace != self.root_namespace:
            levels.append(self.wide.get(namespace))
            workload = next(
                (
                    s
                    for s in self.selecting.get(namespace, ())
                    if selectors.selects(s.selector, labels)  # each narrows (see of)
                ),
                None,
            )
            levels.append(workload)
        for spec in levels:
            if _mode(spec) != UNSET:
                mode = _mode(spec)
        if workload is None or not workload.port_level_mtls:
            return PeerPolicy(mode)
        per_port = tuple(
            (port, mode if m.mode == UNSET else m.mode)
            for port, m in sorted(workload.port_level_mtls.items())
        )
        return PeerPolicy(mode, per_port)

    def accepts_mtls(self, namespace: str, labels: Mapping[str, str], port: int) -> bool:
        """Whether a sidecar in ``namespace`` with ``labels`` accepts mesh mTLS on ``port``
        (any mode but DISABLE): what tells clients to originate it (Istio's EDS check)."""
        return self.policy_for(namespace, labels).mode_for(port) != DISABLE


def mtls_modes(world: World, node: Node) -> tuple[tuple[int, str], ...]:
    """``(service port, mode)`` for each of ``node``'s inbound ports; none for a gateway,
    whose listeners are its Gateways' servers."""
    if node.is_gateway or not node.inbound:
        return ()
    policy = world.peer_authentications.policy_for(node.namespace, node.labels)
    return tuple((port, policy.mode_for(port)) for port in sorted(node.inbound))


def summary(modes: tuple[tuple[int, str], ...]) -> str:
    """``modes`` (:func:`mtls_modes`) in a word, as ``proxy-status`` shows them: the mode
    when all ports agree, else ``PORT:MODE`` pairs; ``-`` without inbound ports."""
    if not modes:
        return "-"
    if len({m for _, m in modes}) == 1:
        return modes[0][1]
    return ",".join(f"{p}:{m}" for p, m in modes)
