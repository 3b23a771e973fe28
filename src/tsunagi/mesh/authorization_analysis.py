"""``apply``'s warning about AuthorizationPolicy principals that name nobody: a service
account no registered workload (nor WorkloadEntry) has, or another trust domain. Such a
rule matches no request: an ALLOW meant for that caller denies it, a DENY protects nothing.
A warning, not an error: the workload may simply not be running yet."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from tsunagi.api import AuthorizationPolicySpec, Resource, WorkloadEntrySpec
from tsunagi.mesh.world import Node, World, of_spec
from tsunagi.registry.instances import Instance


def identities(
    world: World, instances: Iterable[Instance], proxies: Iterable[Node] = ()
) -> set[tuple[str, str]]:
    """``(namespace, service account)`` of every registered instance (gateways included),
    connected proxy (a client need not register) and WorkloadEntry that names one. A
    WorkloadEntry without ``serviceAccount`` has no identity, as in Istio (which gives it
    no SPIFFE ID, so clients' SAN lists leave it out too)."""
    out = {(i.namespace, i.account) for i in instances}
    out |= {(n.namespace, n.service_account or n.service) for n in proxies}
    out |= {
        (we.namespace, we.spec.service_account)
        for we in of_spec(world.resources, WorkloadEntrySpec)
        if we.spec.service_account
    }
    return out


def _principals(spec: AuthorizationPolicySpec) -> Iterator[tuple[str, str]]:
    """``(field path, principal)`` of every exact principal a rule names."""
    for i, rule in enumerate(spec.rules):
        for j, rf in enumerate(rule.from_):
            src = rf.source
            if src is None:
                continue
            for field, values in (
                ("principals", src.principals),
                ("notPrincipals", src.not_principals),
            ):
                for k, v in enumerate(values):
                    yield f"spec.rules[{i}].from[{j}].source.{field}[{k}]", v
        for j, c in enumerate(rule.when):
            if c.key == "source.principal":
                for field, values in (("values", c.values), ("notValues", c.not_values)):
                    for k, v in enumerate(values):
                        yield f"spec.rules[{i}].when[{j}].{field}[{k}]", v


def principal_problems(
    world: World,
    resources: Iterable[Resource],
    instances: Iterable[Instance],
    proxies: Iterable[Node] = (),
) -> list[str]:
    """Warnings for principals in the AuthorizationPolicies of ``resources`` that name a
    service account no workload (registered ``instances``, connected ``proxies``) has, or
    a trust domain other than the mesh's."""
    policies = of_spec(resources, AuthorizationPolicySpec)
    if not policies:
        return []
    known = identities(world, instances, proxies)
    trust_domain = world.mesh_security.trust_domain
    out = []
    for p in policies:
        for at, value in _principals(p.spec):
            if "*" in value:
                continue  # a pattern: it may match workloads yet to come
            parts = value.split("/")
            if len(parts) != 5 or parts[1] != "ns" or parts[3] != "sa":
                out.append(
                    f"AuthorizationPolicy {p.namespace}/{p.name}: {at} {value!r} is not a "
                    "workload identity (TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT): no "
                    "peer certificate of this mesh carries it"
                )
            elif parts[0] != trust_domain:
                out.append(
                    f"AuthorizationPolicy {p.namespace}/{p.name}: {at} {value!r} names trust "
                    f"domain {parts[0]!r}, but this mesh's is {trust_domain!r} (tsunagi up "
                    "--trust-domain): no workload has it"
                )
            elif (parts[2], parts[4]) not in known:
                out.append(
                    f"AuthorizationPolicy {p.namespace}/{p.name}: {at} names service account "
                    f"{parts[4]!r} in namespace {parts[2]!r}, which no workload has: "
                    "the rule matches no request until one runs as it (tsunagi run "
                    f"--namespace {parts[2]} --service-account {parts[4]})"
                )
    return out
