"""AuthorizationPolicy ``action: CUSTOM``: which external authorizer (a MeshConfig
``extensionProviders`` entry, ``tsunagi up --mesh-config``) a workload's CUSTOM policies
send their requests to, resolved the way istiod resolves it.

- All the CUSTOM policies of one workload must name the same provider; with several,
  istiod (without its multi-provider feature flag) sends nothing to any of them and
  denies every request their rules match. So does tsunagi.
- A provider name the mesh config does not define, or a provider whose ``service`` is no
  host the mesh knows, fails the same way: closed, for the requests the rules match.
- ``service`` is a hostname exactly as the mesh knows it (``ext-authz.foo.svc.cluster.local``;
  a short name is not expanded, as in istiod), or ``NAMESPACE/HOSTNAME``; the proxy reaches
  it through its outbound cluster for that host and ``port``.

``apply`` reports each failure as a warning (:func:`problems`), ``tsunagi up`` logs the
stored policies whose provider its mesh config lacks (:func:`undefined_providers`); the
translation (:mod:`tsunagi.xds.translate.ext_authz`) renders the result. A workload without
CUSTOM policies costs one comparison (:func:`resolve`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import takewhile
from typing import TYPE_CHECKING

from tsunagi.api import AuthorizationPolicySpec, Resource
from tsunagi.api.mesh_config import ExtensionProvider, service_host
from tsunagi.mesh import authorization

if TYPE_CHECKING:
    from tsunagi.mesh.world import World

CUSTOM = "CUSTOM"


@dataclass(frozen=True)
class CustomAuthz:
    """The CUSTOM policies of one workload and the authorizer they use."""

    policies: tuple[Resource, ...]
    """The CUSTOM policies selecting the workload, in evaluation order."""
    provider: ExtensionProvider | None = None
    """The provider to ask; None when :attr:`error` says why there is none."""
    error: str = ""
    """Why the policies cannot be sent anywhere: their rules then deny (Istio's)."""


def _is_custom(policy: Resource) -> bool:
    return isinstance(policy.spec, AuthorizationPolicySpec) and policy.spec.action == CUSTOM


def custom_policies(policies: Iterable[Resource]) -> tuple[Resource, ...]:
    """The CUSTOM ones among ``policies`` (order kept)."""
    return tuple(p for p in policies if _is_custom(p))


def _provider_name(policy: Resource) -> str:
    spec = policy.spec
    assert isinstance(spec, AuthorizationPolicySpec) and spec.provider is not None
    return spec.provider.name


def _provider_names(policies: Iterable[Resource]) -> list[str]:
    """The providers CUSTOM ``policies`` name, sorted (more than one: none is used)."""
    return sorted({_provider_name(p) for p in policies})


def service_problem(world: World, provider: ExtensionProvider) -> str:
    """Why the proxies cannot reach ``provider`` ('' when they can): its ``service`` must be
    a host of the mesh (in ``NAMESPACE`` when given) with its ``port``."""
    namespace, host = service_host(provider.config.service)
    svc = world.services.get(host)
    if svc is None:
        return (
            f"could not find hostname {host!r} among the mesh's services (give the full "
            "hostname, e.g. NAME.NAMESPACE.svc.cluster.local)"
        )
    if namespace and svc.namespace != namespace:
        return f"could not find service {host!r} in namespace {namespace!r}"
    if provider.config.port not in svc.ports:
        # No such outbound cluster: Envoy would refuse the whole listener update for it.
        return f"service {host!r} has no port {provider.config.port} (its ports: {list(svc.ports)})"
    return ""


def resolve(world: World, policies: Sequence[Resource]) -> CustomAuthz | None:
    """What the CUSTOM ones among ``policies`` (one workload's, in evaluation order, so
    CUSTOM ones first) ask; None without any, after looking at the first policy only."""
    custom = tuple(takewhile(_is_custom, policies))
    if not custom:
        return None
    names = _provider_names(custom)
    if len(names) > 1:
        return CustomAuthz(
            custom,
            error=f"only 1 provider can be used per workload, found multiple providers: {names}",
        )
    provider = world.mesh_security.mesh_config.provider(names[0])
    if provider is None:
        available = [p.name for p in world.mesh_security.mesh_config.extension_providers]
        return CustomAuthz(
            custom,
            error=f"provider {names[0]!r} is not defined; available providers: {available} "
            "(define it in the file given to tsunagi up --mesh-config)",
        )
    why = service_problem(world, provider)
    if why:
        return CustomAuthz(custom, error=f"provider {provider.name!r}: {why}")
    return CustomAuthz(custom, provider)


def problems(
    world: World, resources: Iterable[Resource], workloads: Iterable[tuple[str, Mapping[str, str]]]
) -> list[str]:
    """``apply``'s warnings about the CUSTOM policies among ``resources``: a provider that
    cannot be used (judged per policy), and registered ``workloads`` (``(namespace, labels)``)
    whose CUSTOM policies name several providers. Either way the rules deny what they match."""
    out: list[str] = []
    applied = custom_policies(resources)
    if not applied:
        return out  # nothing to judge: no pass over the workloads
    for policy in applied:
        if authorization.dry_run(policy):
            out.append(
                f"{policy.kind} {policy.namespace}/{policy.name}: istio.io/dry-run on a CUSTOM "
                "policy: the policy is left out, its requests are not sent to the authorizer "
                "(Istio still sends them); remove the annotation to enforce it"
            )
        found = resolve(world, (policy,))
        if found is not None and found.error:
            out.append(
                f"{policy.kind} {policy.namespace}/{policy.name}: spec.provider: {found.error}; "
                "requests its rules match are denied (403) until the provider can be used"
            )
    keys = {p.key for p in applied}
    seen: set[tuple[str, ...]] = set()
    for namespace, labels in workloads:
        found = resolve(world, authorization.for_workload(world, namespace, labels))
        if found is None or len(_provider_names(found.policies)) < 2:
            continue
        names = tuple(f"{p.namespace}/{p.name}" for p in found.policies)
        if names in seen or not any(p.key in keys for p in found.policies):
            continue
        seen.add(names)
        out.append(
            f"AuthorizationPolicy {', '.join(names)}: select the same workload in namespace "
            f"{namespace} ({found.error}): requests their rules match are denied (403); "
            "use one provider per workload"
        )
    return out


def undefined_providers(world: World) -> list[str]:
    """For ``tsunagi up``'s log: the stored CUSTOM policies whose provider the mesh config
    does not define (it may have been started with another ``--mesh-config``). Their rules
    deny what they match until it does."""
    config = world.mesh_security.mesh_config
    defined = [p.name for p in config.extension_providers]
    return [
        f"{p.kind} {p.namespace}/{p.name}: spec.provider: provider {_provider_name(p)!r} is "
        f"not defined by --mesh-config (defined: {defined}); requests its rules match are "
        "denied (403) until it is: restart with a mesh config that defines it, or change "
        "the policy"
        for p in custom_policies(world.resources)
        if config.provider(_provider_name(p)) is None
    ]
