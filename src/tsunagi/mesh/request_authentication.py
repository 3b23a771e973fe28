"""RequestAuthentication: which JWT rules apply to a workload (root namespace, its
namespace, ``selector``), and where each rule's keys come from.

Istio's selection: the RequestAuthentications of the workload's namespace and of the root
namespace, those without a selector for every workload there, those with one for the
workloads whose labels it matches. One with a ``targetRef`` attaches to a Kubernetes
Gateway API gateway, which Tsunagi has none of, so it selects nothing (``apply`` warns).

Keys: a rule's inline ``jwks``; else the document at its ``jwksUri``; else the one its
issuer's OpenID discovery document names. The control plane fetches those
(:mod:`tsunagi.controlplane.jwks`) and hands them to the World (:attr:`World.jwks`), keyed
by :func:`jwks_key`, so that proxies never reach the issuer themselves.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from tsunagi.api import JWTRule, RequestAuthenticationSpec, Resource, ResourceOf
from tsunagi.mesh import selectors

if TYPE_CHECKING:
    from tsunagi.mesh.world import Node, World

OPENID_DISCOVERY = "/.well-known/openid-configuration"
"""Where an issuer publishes its OpenID configuration (its ``jwks_uri`` among it)."""


def index(
    resources: Iterable[Resource],
) -> dict[str, tuple[ResourceOf[RequestAuthenticationSpec], ...]]:
    """Namespace → its RequestAuthentications that can select a workload (no
    ``targetRef``) in name order (Istio orders by creation time, which a store without one
    cannot)."""
    by_ns: dict[str, list[ResourceOf[RequestAuthenticationSpec]]] = {}
    for r in sorted(resources, key=lambda r: (r.namespace, r.name)):
        spec = r.spec
        if isinstance(spec, RequestAuthenticationSpec) and not (
            spec.target_ref or spec.target_refs
        ):
            by_ns.setdefault(r.namespace, []).append(r)  # type: ignore[arg-type]
    return {ns: tuple(rs) for ns, rs in by_ns.items()}


def for_workload(
    world: World, namespace: str, labels: Mapping[str, str]
) -> tuple[ResourceOf[RequestAuthenticationSpec], ...]:
    """The RequestAuthentications that apply to a workload (or gateway) in ``namespace``
    with ``labels``: its namespace's, then the root namespace's."""
    root = world.mesh_security.root_namespace
    candidates = selectors.own_then_root(world.request_authentications, namespace, root)
    return tuple(ra for ra in candidates if selectors.selects(ra.spec.selector, labels))


def rules_for(world: World, node: Node) -> tuple[Resource, ...]:
    """The RequestAuthentications that apply to ``node``."""
    return for_workload(world, node.namespace, node.labels)  # type: ignore[return-value]


def jwks_key(rule: JWTRule) -> str | None:
    """Where ``rule``'s keys are fetched from: its ``jwksUri``, else its issuer's OpenID
    discovery URL; None when they are inline (``jwks``)."""
    if rule.jwks:
        return None
    if rule.jwks_uri:
        return rule.jwks_uri
    return rule.issuer.rstrip("/") + OPENID_DISCOVERY


def fetched_keys(resources: Iterable[ResourceOf[RequestAuthenticationSpec]]) -> set[str]:
    """Every :func:`jwks_key` the rules of ``resources`` need fetched."""
    return {
        key for ra in resources for rule in ra.spec.jwt_rules if (key := jwks_key(rule)) is not None
    }


def jwks_of(
    world: World, applied: Iterable[ResourceOf[RequestAuthenticationSpec]]
) -> tuple[tuple[str, str], ...]:
    """``(jwks_key, document)`` the control plane has fetched for ``applied``'s rules,
    sorted (a key not fetched yet is left out: translation stands in a set that fails every
    token, as Istio does)."""
    return tuple(sorted((k, world.jwks[k]) for k in fetched_keys(applied) if k in world.jwks))
