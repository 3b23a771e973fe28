"""AuthorizationPolicy: which policies select a workload (root namespace, its namespace,
``selector``), in Istio's evaluation order.

Istio's scoping rules, as its docs have them:

- a policy in the root namespace (``tsunagi up --root-namespace``, ``istio-system`` by
  default) applies to every workload of the mesh, a policy in another namespace to the
  workloads of that namespace;
- ``selector.matchLabels`` narrows either to the workloads whose labels include them (in
  the root namespace: in any namespace); no selector, or an empty one, selects them all;
- ``targetRef``/``targetRefs`` attach a policy to Gateway API gateways and waypoints, never
  to sidecars: tsunagi runs neither, so such a policy selects nothing here (``apply`` says
  so: :func:`target_ref_warnings`). Refusing it would break files written for a cluster
  that has both kinds of proxies.

A workload runs the policies in the order CUSTOM, DENY, ALLOW (AUDIT only logs); within an
action, by namespace then name, so the result (and the proxy's config) is deterministic.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from tsunagi.api import AuthorizationPolicySpec, Resource, ResourceOf
from tsunagi.mesh import selectors

if TYPE_CHECKING:
    from tsunagi.mesh.world import Node, World

DRY_RUN = "istio.io/dry-run"
"""The annotation that makes a policy's rules evaluated and counted, never enforced."""


def dry_run(policy: Resource) -> bool:
    """Whether ``policy`` is annotated ``istio.io/dry-run`` true (Go's boolean spellings)."""
    return policy.annotations.get(DRY_RUN, "") in ("1", "t", "T", "true", "TRUE", "True")


ACTION_ORDER = ("CUSTOM", "DENY", "ALLOW", "AUDIT")
"""Istio's evaluation order of the actions (AUDIT decides nothing)."""

Policy = ResourceOf[AuthorizationPolicySpec]


def _order(p: Policy) -> tuple[int, str, str]:
    return (ACTION_ORDER.index(p.spec.action), p.namespace, p.name)


def index(resources: Iterable[Resource]) -> Mapping[str, tuple[Policy, ...]]:
    """The AuthorizationPolicies that can select a sidecar (no ``targetRef``), by namespace,
    each namespace's in evaluation order (see :func:`policies_for`)."""
    by_ns: dict[str, list[Policy]] = {}
    for r in resources:
        spec = r.spec
        if type(spec) is AuthorizationPolicySpec and not (spec.target_ref or spec.target_refs):
            by_ns.setdefault(r.namespace, []).append(r)  # type: ignore[arg-type]
    return {ns: tuple(sorted(ps, key=_order)) for ns, ps in by_ns.items()}


def for_workload(world: World, namespace: str, labels: Mapping[str, str]) -> tuple[Resource, ...]:
    """The AuthorizationPolicies that apply to a workload (a sidecar's, or a gateway's) in
    ``namespace`` with ``labels``: the root namespace's and its own namespace's whose
    selector picks its labels, in evaluation order."""
    root = world.mesh_security.root_namespace
    candidates = selectors.own_then_root(world.authorization_policies, namespace, root)
    chosen = [p for p in candidates if selectors.selects(p.spec.selector, labels)]
    return tuple(sorted(chosen, key=_order))  # type: ignore[arg-type]


def policies_for(world: World, node: Node) -> tuple[Resource, ...]:
    """The AuthorizationPolicies that apply to ``node`` (see :func:`for_workload`)."""
    return for_workload(world, node.namespace, node.labels)


def target_ref_warnings(where: str, spec: AuthorizationPolicySpec) -> list[str]:
    """``apply``'s word on a policy that attaches by ``targetRef(s)``: it is stored and
    selects no sidecar, as in Istio."""
    if not (spec.target_ref or spec.target_refs):
        return []
    field = "targetRef" if spec.target_ref is not None else "targetRefs"
    return [
        f"{where}: spec.{field} attaches the policy to Gateway API gateways or waypoints, "
        "which tsunagi does not run: it applies to no workload (sidecars ignore targetRef "
        "policies in Istio too). Use spec.selector.matchLabels to select workloads"
    ]
