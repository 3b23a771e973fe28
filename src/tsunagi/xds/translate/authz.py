"""AuthorizationPolicy → Envoy's RBAC filters (HTTP and network), one per action as Istio
generates them, in the order Envoy runs them: AUDIT (action LOG: marks the request for the
access log, decides nothing), then DENY, then ALLOW. A request any DENY rule matches gets
403 ``RBAC: access denied`` (Envoy's body); when some ALLOW policy selects the workload, a
request must match one of their rules or it is denied the same way. An ALLOW policy
without rules allows nothing; ``rules: [{}]`` allows everything.

Each rule becomes one RBAC policy named ``ns[NS]-policy[NAME]-rule[I]`` (:mod:`.authz_rules`
translates its fields). A policy annotated ``istio.io/dry-run: "true"`` goes into the
filter's shadow rules: evaluated and counted (``istio_dry_run_allow_``/``_deny_`` stats),
never enforced.

Gateways (``tsunagi gateway``) get the same HTTP filters on their HTTP and HTTPS servers
(:func:`gateway_filters`), and the network ones on their TCP and TLS servers
(:func:`gateway_network_filters`). CUSTOM policies become ext_authz filters in front of all
these (:mod:`.ext_authz`). A workload no policy selects gets no filter at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tsunagi.api import AuthorizationPolicySpec, Resource
from tsunagi.mesh import ClientScope, Node, World, authorization
from tsunagi.mesh import ext_authz as mesh_ext_authz
from tsunagi.mesh.security import WorkloadSecurity
from tsunagi.xds.translate import ext_authz
from tsunagi.xds.translate.authz_rules import Target, rbac_filter, rule_policies
from tsunagi.xds.translate.same import Same, same_all

ENVOY_ACTIONS = (("AUDIT", "LOG"), ("DENY", "DENY"), ("ALLOW", "ALLOW"))
"""Istio's action → Envoy's RBAC action, in the order the filters run."""
_SHADOW_PREFIX = {"ALLOW": "istio_dry_run_allow_", "DENY": "istio_dry_run_deny_"}


def _rules(policies: list[Resource], target: Target, envoy_action: str) -> dict[str, Any]:
    """Envoy's ``RBAC`` rules of ``policies`` (all of one action) at ``target``."""
    return {"action": envoy_action, "policies": rule_policies(policies, target)}


def _configs(policies: Sequence[Resource], port: int, tcp: bool) -> list[dict[str, Any]]:
    """The RBAC configs (rules, shadow rules) for each action some policy has, in order."""
    configs = []
    for action, envoy_action in ENVOY_ACTIONS:
        chosen = [p for p in policies if _action(p) == action]
        if not chosen:
            continue
        target = Target(action, port, tcp)
        enforced = [p for p in chosen if not authorization.dry_run(p)]
        shadow = [p for p in chosen if authorization.dry_run(p)]
        config: dict[str, Any] = {}
        if enforced:
            config["rules"] = _rules(enforced, target, envoy_action)
        if shadow:
            config["shadow_rules"] = _rules(shadow, target, envoy_action)
            if action in _SHADOW_PREFIX:
                config["shadow_rules_stat_prefix"] = _SHADOW_PREFIX[action]
        configs.append(config)
    return configs


def _action(policy: Resource) -> str:
    spec = policy.spec
    return spec.action if isinstance(spec, AuthorizationPolicySpec) else ""


def _filters(policies: Sequence[Resource], port: int, tcp: bool) -> tuple[dict[str, Any], ...]:
    return tuple(rbac_filter(config, tcp) for config in _configs(policies, port, tcp))


def http_filters(security: WorkloadSecurity, node: Node, port: int) -> tuple[dict[str, Any], ...]:
    """The CUSTOM (:mod:`.ext_authz`), then RBAC HTTP filters for inbound ``port``; none
    without policies."""
    return (
        *ext_authz.http_filters(security.custom, port),
        *_filters(security.authorization, port, tcp=False),
    )


def network_filters(
    security: WorkloadSecurity, node: Node, port: int
) -> tuple[dict[str, Any], ...]:
    """The CUSTOM, then RBAC network filters for inbound TCP ``port``; none without
    policies."""
    return (
        *ext_authz.network_filters(security.custom, port),
        *_filters(security.authorization, port, tcp=True),
    )


def _gateway_policies(
    world: World, scope: ClientScope
) -> tuple[tuple[Resource, ...], mesh_ext_authz.CustomAuthz | None]:
    """The policies selecting a gateway of ``scope`` (its labels in its namespace, or the
    root namespace), in evaluation order, and the authorizer their CUSTOM ones use."""
    policies = authorization.for_workload(world, scope.namespace, dict(scope.labels))
    return policies, mesh_ext_authz.resolve(world, policies)


def gateway_filters(world: World, scope: ClientScope, port: int) -> tuple[dict[str, Any], ...]:
    """The RBAC HTTP filters of a gateway's HTTP server ``port`` (``ports`` in rules name
    server ports), from the policies that select its labels in its namespace (or the root
    namespace); none without. CUSTOM ones first (:mod:`.ext_authz`)."""
    policies, custom = _gateway_policies(world, scope)
    return (*ext_authz.http_filters(custom, port), *_filters(policies, port, tcp=False))


def gateway_network_filters(
    world: World, scope: ClientScope, port: int
) -> tuple[dict[str, Any], ...]:
    """The RBAC network filters of a gateway's TCP and TLS servers on ``port`` (before their
    TCP proxy, as Istio's gateway puts them), judged as on a sidecar's TCP port: HTTP-only
    fields cannot match there (:mod:`.authz_rules`); none without policies."""
    policies, custom = _gateway_policies(world, scope)
    return (*ext_authz.network_filters(custom, port), *_filters(policies, port, tcp=True))


def gateway_key(world: World, scope: ClientScope) -> tuple[Same | str, ...]:
    """What :func:`gateway_filters` and :func:`gateway_network_filters` depend on, for a
    memo of a gateway's listeners: the selected policies, by identity (a changed one is a
    new object; see :mod:`.same`), empty when none, and whether their CUSTOM ones' provider
    could be used (its service may come or go; the mesh config is fixed for the process).
    Nothing is serialized per push."""
    policies, custom = _gateway_policies(world, scope)
    if custom is None:
        return same_all(policies)
    return (*same_all(policies), custom.error)
