"""The DestinationRules a proxy applies on its own, apart from the rules its namespace shares:
those with a ``workloadSelector`` that select it, and, for a gateway, those that name a
``credentialName``; with the credentials those rules give it.

Istio's rules: ``credentialName`` in a DestinationRule's ``tls`` applies at gateways, and at
a sidecar only when the rule has a ``workloadSelector`` (that selects it); the Secret must be
in the proxy's own namespace. A proxy receives keys only when ``ClientScope.verified``: a
gateway's xDS certificate proved its namespace and carries the CA's gateway mark (it gets
every credential its Gateways name); a sidecar's proved its namespace (Istio's rule: a proxy
may read its own namespace's Secrets; the rule's author chose to hand that key to the
workloads of the namespace its selector picks, which a workload of the namespace could
also claim by its labels, as in Istio).

Most proxies have no such rule, and this costs them one set lookup: a sidecar's scope
carries the labels a selector reads only when some rule has one.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from tsunagi.api import DestinationRuleSpec, ResourceOf
from tsunagi.mesh import ClientScope, World
from tsunagi.mesh.credentials import Credential
from tsunagi.mesh.world import rule_credential_names
from tsunagi.xds.translate import secrets
from tsunagi.xds.translate.origination import Credentials

Rule = ResourceOf[DestinationRuleSpec]


def own_rules(world: World, scope: ClientScope) -> Mapping[str, Rule]:
    """Services whose clusters a proxy of ``scope`` builds apart from its namespace's, with
    the rule it applies to each: those a selector rule picks it for, and for a gateway also
    those whose rule names a ``credentialName``."""
    selected = world.selected_rules(scope.namespace, scope.labels)
    if not scope.gateway or not world.credential_rules:
        return selected
    out = dict(selected)
    for host in world.services:
        if host not in out:
            rule = world.destination_rule(host, scope.namespace)
            if rule is not None and rule_credential_names(rule.spec):
                out[host] = rule
    return MappingProxyType(out)


def rule_credentials(
    world: World, scope: ClientScope, rules: Mapping[str, Rule]
) -> tuple[Credential, ...]:
    """The credentials ``rules`` name that a proxy of ``scope`` gets: those in its own
    namespace, and none unless it may hold keys (``scope.verified``). Sorted by name."""
    if not scope.verified:
        return ()
    names = sorted({n for r in rules.values() for n in rule_credential_names(r.spec)})
    return secrets.existing(world, scope.namespace, names)


def delivered(credentials: tuple[Credential, ...]) -> Credentials:
    """What clusters need to know of ``credentials``: which exist, with a key, with a CA."""
    return Credentials(tuple((c.name, c.has_certificate, bool(c.ca)) for c in credentials))
