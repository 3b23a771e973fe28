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
(:func:`gateway_network_filters`). CUSTOM (ext_authz) is refused by validation
(``api/checks_authz.py``): no provider can be configured yet. A workload no policy selects
gets no filter at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as network_rbac_pb2

from tsunagi.api import AuthorizationPolicySpec, Resource
from tsunagi.mesh import ClientScope, Node, World, authorization
from tsunagi.mesh.security import WorkloadSecurity
from tsunagi.xds.translate.authz_rules import MATCH_NEVER, Target, rbac_policy
from tsunagi.xds.translate.same import Same, same_all

HTTP_RBAC_TYPE = "type.googleapis.com/" + http_rbac_pb2.RBAC.DESCRIPTOR.full_name
NETWORK_RBAC_TYPE = "type.googleapis.com/" + network_rbac_pb2.RBAC.DESCRIPTOR.full_name
HTTP_RBAC = "envoy.filters.http.rbac"
NETWORK_RBAC = "envoy.filters.network.rbac"
TCP_STAT_PREFIX = "tcp."
"""Istio's stat prefix of the network RBAC filter (``tcp.rbac.allowed``, ...)."""
DRY_RUN = "istio.io/dry-run"

ENVOY_ACTIONS = (("AUDIT", "LOG"), ("DENY", "DENY"), ("ALLOW", "ALLOW"))
"""Istio's action → Envoy's RBAC action, in the order the filters run."""
_SHADOW_PREFIX = {"ALLOW": "istio_dry_run_allow_", "DENY": "istio_dry_run_deny_"}


def dry_run(policy: Resource) -> bool:
    """Whether ``policy`` is annotated ``istio.io/dry-run`` true (Go's boolean spellings)."""
    return policy.annotations.get(DRY_RUN, "") in ("1", "t", "T", "true", "TRUE", "True")


def _policy_name(policy: Resource, index: int) -> str:
    return f"ns[{policy.namespace}]-policy[{policy.name}]-rule[{index}]"


def _rules(policies: list[Resource], target: Target, envoy_action: str) -> dict[str, Any]:
    """Envoy's ``RBAC`` rules of ``policies`` (all of one action) at ``target``."""
    out: dict[str, Any] = {}
    for p in policies:
        spec = p.spec
        assert isinstance(spec, AuthorizationPolicySpec)
        if not spec.rules:
            out[_policy_name(p, 0)] = MATCH_NEVER
        for i, rule in enumerate(spec.rules):
            generated = rbac_policy(rule, p.namespace, target)
            if generated is not None:
                out[_policy_name(p, i)] = generated
    return {"action": envoy_action, "policies": out}


def _configs(policies: Sequence[Resource], port: int, tcp: bool) -> list[dict[str, Any]]:
    """The RBAC configs (rules, shadow rules) for each action some policy has, in order."""
    configs = []
    for action, envoy_action in ENVOY_ACTIONS:
        chosen = [p for p in policies if _action(p) == action]
        if not chosen:
            continue
        target = Target(action, port, tcp)
        enforced = [p for p in chosen if not dry_run(p)]
        shadow = [p for p in chosen if dry_run(p)]
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


def _http(policies: Sequence[Resource], port: int) -> tuple[dict[str, Any], ...]:
    return tuple(
        {"name": HTTP_RBAC, "typed_config": {"@type": HTTP_RBAC_TYPE, **config}}
        for config in _configs(policies, port, tcp=False)
    )


def _network(policies: Sequence[Resource], port: int) -> tuple[dict[str, Any], ...]:
    return tuple(
        {
            "name": NETWORK_RBAC,
            "typed_config": {"@type": NETWORK_RBAC_TYPE, "stat_prefix": TCP_STAT_PREFIX, **config},
        }
        for config in _configs(policies, port, tcp=True)
    )


def http_filters(security: WorkloadSecurity, node: Node, port: int) -> tuple[dict[str, Any], ...]:
    """The RBAC HTTP filters for inbound ``port``; none without policies."""
    return _http(security.authorization, port)


def network_filters(
    security: WorkloadSecurity, node: Node, port: int
) -> tuple[dict[str, Any], ...]:
    """The RBAC network filters for inbound TCP ``port``; none without policies."""
    return _network(security.authorization, port)


def gateway_filters(world: World, scope: ClientScope, port: int) -> tuple[dict[str, Any], ...]:
    """The RBAC HTTP filters of a gateway's HTTP server ``port`` (``ports`` in rules name
    server ports), from the policies that select its labels in its namespace (or the root
    namespace); none without."""
    return _http(authorization.for_workload(world, scope.namespace, dict(scope.labels)), port)


def gateway_network_filters(
    world: World, scope: ClientScope, port: int
) -> tuple[dict[str, Any], ...]:
    """The RBAC network filters of a gateway's TCP and TLS servers on ``port`` (before their
    TCP proxy, as Istio's gateway puts them), judged as on a sidecar's TCP port: HTTP-only
    fields cannot match there (:mod:`.authz_rules`); none without policies."""
    return _network(authorization.for_workload(world, scope.namespace, dict(scope.labels)), port)


def gateway_key(world: World, scope: ClientScope) -> tuple[Same, ...]:
    """What :func:`gateway_filters` and :func:`gateway_network_filters` depend on, for a
    memo of a gateway's listeners: the selected policies, by identity (a changed one is a
    new object; see :mod:`.same`), empty when none. Nothing is serialized per push."""
    return same_all(authorization.for_workload(world, scope.namespace, dict(scope.labels)))
