"""Pure translation from the mesh World to Envoy resources for one node.

No sockets, clocks or globals: every input is an argument. The work is split by what it
depends on, so a push does each part once and only where its inputs changed:

- per service (clusters and endpoint assignments): the service, its subsets, its endpoints;
- per client namespace: the few services whose DestinationRule differs there, or that are
  not exported there (Istio's lookup starts in the client's namespace);
- per client scope (:class:`~tsunagi.mesh.ClientScope`): the outbound route configuration
  (namespace and the labels ``sourceLabels`` reads) and the endpoint assignments that
  locality load balancing makes relative to the client;
- per node (listeners, inbound clusters): the node alone.

A :class:`Memo` passed in by the caller remembers packed resources by those inputs; it only
saves work — the output is the same with a fresh memo.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from types import MappingProxyType
from typing import Any, TypeVar

from tsunagi.api import DestinationRuleSpec
from tsunagi.mesh import ClientScope, Endpoint, Node, Service, World
from tsunagi.mesh.credentials import Credential
from tsunagi.mesh.outbound_policy import outbound_policy
from tsunagi.mesh.security import WorkloadSecurity
from tsunagi.mesh.telemetry import ProxyTelemetry
from tsunagi.mesh.visibility import subset_definitions
from tsunagi.xds import resources as rs
from tsunagi.xds.resources import Resource, Snapshot
from tsunagi.xds.translate import (
    accesslog,
    authz,
    capture,
    dns_table,
    gateway,
    gateway_telemetry,
    jwt_authn,
    locality,
    scoped_rules,
    secrets,
    tracing,
)
from tsunagi.xds.translate.clusters import (
    PASSTHROUGH,
    dns_cluster,
    inbound_clusters,
    service_clusters,
    with_policy,
)
from tsunagi.xds.translate.connect_listeners import (
    connect_listener_docs,
    internal_clusters,
    sni_routed_ports,
    with_loggers,
)
from tsunagi.xds.translate.endpoints import Subsets, service_load_assignments
from tsunagi.xds.translate.envoyfilter import Parts, Patched, patch_parts
from tsunagi.xds.translate.isolation import LastGood, ResourceKey, TranslationError, isolated
from tsunagi.xds.translate.layers import Layered
from tsunagi.xds.translate.listeners import build_listener, inbound_listeners, outbound_listener
from tsunagi.xds.translate.mesh_tls import Peers, peers_of
from tsunagi.xds.translate.origination import Credentials
from tsunagi.xds.translate.passthrough import PASSTHROUGH_CLUSTER
from tsunagi.xds.translate.policy import ClusterPolicy, cluster_policy, policy_key
from tsunagi.xds.translate.protos import (
    Cluster,
    ClusterLoadAssignment,
    Listener,
    RouteConfiguration,
    build,
)
from tsunagi.xds.translate.routes import outbound_route_configuration
from tsunagi.xds.translate.upstream_listeners import upstream_key, upstream_listeners

__all__ = [
    "Local",
    "Memo",
    "Outbound",
    "Patched",
    "Shared",
    "TranslationError",
    "assemble",
    "assemble_patched",
    "translate",
    "translate_local",
    "translate_outbound",
    "translate_shared",
]

T = TypeVar("T")


class Memo:
    """Results by input key, kept for one generation: what the last push did not use is
    dropped at the next :meth:`rotate`, so the memo never outgrows the mesh."""

    def __init__(self, last_good: LastGood | None = None) -> None:
        self._live: dict[Hashable, Any] = {}
        self._next: dict[Hashable, Any] = {}
        self.last_good = last_good if last_good is not None else LastGood()
        """Each piece's last successful output, for when translating it fails (see
        :mod:`.isolation`); unlike memoized results, kept while its owner exists. A memo is
        used by one thread at a time; its ``last_good`` may be shared (it locks)."""

    def get(self, key: Hashable, make: Callable[..., T], *args: Any) -> T:
        """The value for ``key``, made by ``make(*args)`` only when not remembered."""
        if key in self._next:
            value: T = self._next[key]
            return value
        value = self._live[key] if key in self._live else make(*args)
        self._next[key] = value
        return value

    def rotate(self) -> None:
        self._live, self._next = self._next, {}

    def made(self) -> dict[Hashable, Any]:
        """What this memo holds for the current generation, to hand to another memo."""
        return dict(self._next)

    def adopt(self, entries: Mapping[Hashable, Any]) -> None:
        """Remember results another memo made (from the same pure functions), so work done
        elsewhere — say, for a proxy that connected between two pushes — is not done again."""
        for key, value in entries.items():
            self._next.setdefault(key, value)


class _Overlay(Mapping[str, Resource]):
    """A shared mapping plus a few resources of one node's own, without copying the first."""

    __slots__ = ("_base", "_extra")

    def __init__(self, base: Mapping[str, Resource], extra: Mapping[str, Resource]) -> None:
        self._base, self._extra = base, extra

    def __getitem__(self, name: str) -> Resource:
        if name in self._extra:
            return self._extra[name]
        return self._base[name]

    def __iter__(self) -> Iterator[str]:
        yield from self._base
        yield from (n for n in self._extra if n not in self._base)

    def __len__(self) -> int:
        return len(self._base) + sum(1 for n in self._extra if n not in self._base)

    def layered_version(self) -> str:
        """The version, without walking the shared mapping (see :func:`layered_version`)."""
        return rs.layered_version(self._base, self._extra)

    def layers(self) -> tuple[Mapping[str, Resource], Mapping[str, Resource]] | None:
        """``(shared, own)`` when none of the node's own replaces a shared one (then a
        response holding all of them is the shared mapping's bytes plus its own's)."""
        if any(n in self._base for n in self._extra):
            return None
        return self._base, self._extra


@dataclass(frozen=True)
class Shared:
    """Clusters and endpoint assignments: the same for every sidecar."""

    clusters: Mapping[str, Resource]
    endpoints: Mapping[str, Resource]
    errors: tuple[TranslationError, ...] = ()
    """Services whose clusters or endpoints could not be translated."""


@dataclass(frozen=True)
class Outbound:
    """The parts of a sidecar's config shared by every sidecar of a namespace."""

    clusters: Mapping[str, Resource]
    endpoints: Mapping[str, Resource]
    routes: Mapping[str, Resource]
    errors: tuple[TranslationError, ...] = ()
    """Routes that could not be translated for this namespace (the shared parts' failures
    are in :attr:`Shared.errors`)."""
    listeners: Mapping[str, Resource] = field(default_factory=lambda: MappingProxyType({}))
    """A gateway's listeners (one per Gateway server port): like its routes, they depend on
    the Gateways, which a gateway's labels select. Sidecars' listeners are their own."""
    secrets: Mapping[str, Resource] = field(default_factory=lambda: MappingProxyType({}))
    """SDS secrets: a gateway's, the credentials its servers name (:mod:`.secrets`), and
    for any proxy those its own DestinationRules' ``credentialName`` name
    (:mod:`.scoped_rules`). Empty for most sidecars, and for a proxy not allowed keys
    (``ClientScope.verified``)."""


@dataclass(frozen=True)
class Local:
    """The parts of a sidecar's config that depend only on the node itself."""

    clusters: Mapping[str, Resource]
    listeners: Mapping[str, Resource]


def _pack_all(message_type: Any, docs: list[dict[str, Any]], name_key: str) -> list[Resource]:
    return [Resource.pack(d[name_key], build(message_type, d)) for d in docs]


def _endpoint_key(endpoints: Sequence[Endpoint]) -> tuple[Any, ...]:
    return tuple(
        (
            e.address,
            e.port,
            tuple(sorted(e.labels.items())),
            e.locality,
            e.healthy,
            e.weight,
            e.tls_mode,
        )
        for e in endpoints
    )


def _clusters_of(
    svc: Service,
    subsets: tuple[str, ...],
    dr: DestinationRuleSpec | None,
    peers: Peers,
    credentials: Credentials | None = None,
) -> list[Resource]:
    return _pack_all(Cluster, service_clusters(svc, subsets, dr, peers, credentials), "name")


def _dns_clusters_of(
    svc: Service,
    port: int,
    endpoints: Sequence[Endpoint],
    subsets: Subsets,
    dr: DestinationRuleSpec | None,
    peers: Peers,
    credentials: Credentials | None = None,
) -> list[Resource]:
    docs = service_load_assignments(svc.hostname, port, endpoints, subsets)
    clusters = []
    for d in docs:
        subset = d["cluster_name"].split("|")[2]
        policy = cluster_policy(dr, port, subset)
        cluster = dns_cluster(d["cluster_name"], d, svc.resolution)
        clusters.append(with_policy(cluster, svc, port, policy, peers, subset, credentials))
    return _pack_all(Cluster, clusters, "name")


def _peers_of(world: World, svc: Service) -> Peers:
    """Whom ``svc``'s clusters speak mesh mTLS to (:mod:`.mesh_tls`), from the service
    alone: changes only when a service account comes or goes, so an endpoint change
    re-packs no cluster."""
    return peers_of(svc, world.mesh_security.trust_domain)


def _assignments_of(
    host: str,
    port: int,
    endpoints: Sequence[Endpoint],
    subsets: Subsets,
    dr: DestinationRuleSpec | None = None,
) -> list[Resource]:
    if dr is None:
        docs = service_load_assignments(host, port, endpoints, subsets)
    else:  # locality load balancing may set priorities and weights
        docs = locality.service_assignments(host, port, endpoints, subsets, dr)
    return _pack_all(ClusterLoadAssignment, docs, "cluster_name")


def _folded(cla: Resource, cluster: Resource | None) -> Resource:
    """``cla`` with its ``cluster``'s version folded into its own: when a cluster changes,
    Envoy needs its endpoints again to finish warming it, and an unchanged version would
    never be re-sent."""
    if cluster is None:
        return cla
    return Resource(cla.name, cla.body, f"{cla.version}.{cluster.version}")


def _client_assignment(
    name: str,
    endpoints: Sequence[Endpoint],
    policy: ClusterPolicy,
    client: locality.Client,
    cluster: Resource,
) -> Resource:
    doc = locality.localize(name, endpoints, policy, client)
    return _folded(Resource.pack(name, build(ClusterLoadAssignment, doc)), cluster)


def _client_endpoints(
    world: World, scope: ClientScope, memo: Memo, shared: Shared
) -> Mapping[str, Resource]:
    """The shared endpoint assignments, with those that depend on the client's locality
    (or labels, for ``failoverPriority``) made for this scope's client; each memoized by
    its cluster's inputs and the part of the client it reads."""
    own: dict[str, Resource] = {}
    labels = dict(scope.labels)
    # Only the few services some locality rule may reach: this runs once per client scope.
    for host in sorted(world.locality_hosts):
        svc = world.services[host]
        # The rule the clusters were made under: a selector rule that picks it comes first.
        dr = world.destination_rule(svc.hostname, scope.namespace, scope.labels)
        if dr is None or svc.resolution:
            continue
        subsets = subset_definitions(dr.spec)
        policies = memo.get(("policy", id(dr)), _policy_key_of, dr)[1]
        for port in svc.ports:
            eps = world.endpoints.get((svc.hostname, port), ())
            for name, policy, chosen in locality.client_dependent(
                svc.hostname, port, eps, subsets, dr.spec
            ):
                if name not in shared.endpoints or name not in shared.clusters:  # failed
                    continue
                client = locality.client_of(policy, scope.locality, labels)
                if client == locality.NEUTRAL:  # the shared assignment is made for it
                    continue
                cluster = shared.clusters[name]
                key = ("eds-client", name, policies, _endpoint_key(chosen), client, cluster.version)
                own[name] = memo.get(key, _client_assignment, name, chosen, policy, client, cluster)
    return _Overlay(shared.endpoints, own) if own else shared.endpoints


def _policy_key_of(dr: Any) -> tuple[Any, str]:
    return dr, policy_key(dr.spec)


def _service_parts(
    world: World,
    svc: Service,
    memo: Memo,
    namespace: str | None = None,
    own: scoped_rules.Rule | None = None,
    credentials: Credentials | None = None,
) -> tuple[list[Resource], list[Resource]]:
    """One service's clusters and endpoint assignments (memoized by their inputs), as every
    sidecar sees them, or (``namespace``) as sidecars of a namespace whose DestinationRule
    for it differs (see :func:`_namespace_view`), or under a proxy's ``own`` rule with the
    ``credentials`` it gets (see :func:`_own_view`)."""
    if own is not None:
        dr: Any = own
        subsets = subset_definitions(own.spec)
    elif namespace is None:
        subsets = world.subset_definitions(svc.hostname)
        dr = world.destination_rules.get(svc.hostname)
    else:
        dr = world.destination_rule(svc.hostname, namespace)
        subsets = () if dr is None else subset_definitions(dr.spec)
    spec = dr.spec if dr is not None else None
    # A changed trafficPolicy must re-pack the clusters. The key is computed once per parsed
    # rule: the World builder reuses an unchanged rule's object, and the memo holds it, so
    # its id cannot be another object's while the entry lives.
    policies = "" if dr is None else memo.get(("policy", id(dr)), _policy_key_of, dr)[1]
    clusters: list[Resource] = []
    endpoints: list[Resource] = []
    peers = _peers_of(world, svc)
    if svc.resolution:
        for port in svc.ports:
            eps = world.endpoints.get((svc.hostname, port), ())
            dns_key = ("dns", svc, port, subsets, policies, _endpoint_key(eps), peers, credentials)
            clusters += memo.get(
                dns_key, _dns_clusters_of, svc, port, eps, subsets, spec, peers, credentials
            )
        return clusters, endpoints
    names = tuple(s[0] for s in subsets)
    cds_key = ("cds", svc, names, policies, peers, credentials)
    clusters += memo.get(cds_key, _clusters_of, svc, names, spec, peers, credentials)
    for port in svc.ports:
        eps = world.endpoints.get((svc.hostname, port), ())
        key = ("eds", svc.hostname, port, subsets, policies, _endpoint_key(eps))
        endpoints += memo.get(key, _assignments_of, svc.hostname, port, eps, subsets, spec)
    return clusters, endpoints


def _blame_service(world: World, host: str, namespace: str = "") -> tuple[ResourceKey, ...]:
    """The applied resources a service's clusters come from: its DestinationRule (as
    ``namespace`` sees it) and the ServiceEntries that declare it."""
    keys = [se.key for se in world.service_entries.get(host, ())]
    dr = world.destination_rule(host, namespace)
    return (*([dr.key] if dr is not None else []), *keys)


def translate_shared(world: World, memo: Memo | None = None) -> Shared:
    """Every service's clusters and endpoints; unchanged services come from ``memo``.

    Each service is translated on its own: one that fails keeps its last good clusters and
    endpoints (or has none) and is reported in :attr:`Shared.errors`.
    """
    memo = memo or Memo()
    clusters: dict[str, Resource] = {}
    endpoints: dict[str, Resource] = {}
    errors: list[TranslationError] = []
    empty: tuple[list[Resource], list[Resource]] = ([], [])
    for svc in world.services.values():
        host = svc.hostname
        svc_clusters, svc_endpoints = isolated(
            errors,
            memo.last_good,
            ("service", host),
            host,
            partial(_blame_service, world, host),
            partial("clusters and endpoints of {}".format, host),
            partial(_service_parts, world, svc, memo),
            empty,
        )
        for c in svc_clusters:
            clusters[c.name] = c
        for cla in svc_endpoints:
            endpoints[cla.name] = cla
    # Where ALLOW_ANY sends unknown hosts (egress.py); one small cluster, same for everyone.
    packed = memo.get(("passthrough-cluster",), _pack_all, Cluster, [PASSTHROUGH], "name")
    clusters[PASSTHROUGH_CLUSTER] = packed[0]
    memo.last_good.retain(
        lambda: {*world.services, *(r.key for r in world.resources)}, world.routing_fingerprint
    )
    folded = {name: _folded(cla, clusters.get(name)) for name, cla in endpoints.items()}
    return Shared(MappingProxyType(clusters), MappingProxyType(folded), tuple(errors))


@dataclass(frozen=True)
class _GatewayParts:
    """A gateway's listeners and route configurations for its routing scope, shared by the
    gateways of that scope (replicas), with what failed."""

    listener_docs: tuple[dict[str, Any], ...]
    """The listeners as built, which each node's reporting is added to."""
    listeners: Mapping[str, Resource]
    """The same, packed: what a gateway with nothing to report gets."""
    routes: Mapping[str, Resource]
    errors: tuple[TranslationError, ...]


def _gateway_parts(world: World, scope: ClientScope, memo: Memo) -> _GatewayParts:
    errors: list[TranslationError] = []
    listeners, routes = gateway.gateway_parts(world, scope, errors, memo.last_good)
    return _GatewayParts(
        tuple(listeners),
        MappingProxyType({r.name: r for r in _pack_all(Listener, listeners, "name")}),
        MappingProxyType({r.name: r for r in _pack_all(RouteConfiguration, routes, "name")}),
        tuple(errors),
    )


def _reported_listeners(parts: _GatewayParts, scope: ClientScope) -> Mapping[str, Resource]:
    """The gateway listeners of ``parts`` reporting as the node of ``scope`` says (its
    loggers, metric FIFO and tracer), packed; the shared ones when it reports nothing."""
    docs = list(parts.listener_docs)
    reported = gateway_telemetry.report(docs, scope)
    if reported is docs:
        return parts.listeners
    return MappingProxyType({r.name: r for r in _pack_all(Listener, reported, "name")})


def _routing_scope(world: World, scope: ClientScope) -> ClientScope:
    if scope.gateway:
        # Not the node's reporting (its id, FIFO, Telemetry) nor its locality: replicas of a
        # gateway share listeners and routes, and nothing memoized per piece names a node.
        return ClientScope(
            scope.namespace,
            scope.labels,
            gateway=scope.gateway,
            gateway_ports=scope.gateway_ports,
        )
    keys = world.routing_label_keys
    if world.selected_rules(scope.namespace, scope.labels):
        # A rule whose workloadSelector picks it gives its routes' consistentHash and
        # PASSTHROUGH too: keep the labels selectors read (no work where no rule selects).
        keys = keys | world.rule_selector_keys
    if not scope.locality and not scope.verified and all(k in keys for k, _ in scope.labels):
        return scope
    return ClientScope(scope.namespace, tuple((k, v) for k, v in scope.labels if k in keys))


def _namespace_view(
    world: World, namespace: str, memo: Memo, shared: Shared
) -> tuple[Shared, tuple[TranslationError, ...]]:
    """The shared clusters and endpoints as sidecars of ``namespace`` see them: services
    whose DestinationRule differs there (Istio looks in the client's namespace first) get
    their own clusters, services not exported there are left out, all else is shared.
    Most namespaces need neither, and get ``shared`` itself. Also returns what failed."""
    # What a namespace sees depends on services and routing resources only: remembered
    # across endpoint-only pushes, where scanning every service per namespace would dominate.
    seen = (namespace, world.routing_fingerprint)
    overrides = memo.get(("rule-overrides", *seen), world.rule_overrides, namespace)
    hidden = memo.get(("hidden-services", *seen), world.hidden_services, namespace)
    if not overrides and not hidden:
        return shared, ()
    clusters: dict[str, Resource] = {}
    endpoints: dict[str, Resource] = {}
    errors: list[TranslationError] = []
    empty: tuple[list[Resource], list[Resource]] = ([], [])
    for host in overrides:
        if host in hidden:
            continue
        svc_clusters, svc_endpoints = isolated(
            errors,
            memo.last_good,
            ("service", host, namespace),
            host,
            partial(_blame_service, world, host, namespace),
            partial("clusters and endpoints of {} for namespace {}".format, host, namespace),
            partial(_service_parts, world, world.services[host], memo, namespace),
            empty,
        )
        clusters.update((c.name, c) for c in svc_clusters)
        endpoints.update((e.name, _folded(e, clusters.get(e.name))) for e in svc_endpoints)
    replaced = frozenset({*overrides, *hidden})
    view = Shared(
        Layered(shared.clusters, clusters, replaced),
        Layered(shared.endpoints, endpoints, replaced),
        shared.errors,
    )
    return view, tuple(errors)


@dataclass(frozen=True)
class _OwnView:
    """A proxy's clusters and endpoints under the rules it applies on its own
    (:mod:`.scoped_rules`), and what failed."""

    shared: Shared
    errors: tuple[TranslationError, ...]


def _own_view(
    world: World,
    scope: ClientScope,
    rules: Mapping[str, scoped_rules.Rule],
    credentials: tuple[Credential, ...],
    memo: Memo,
    shared: Shared,
) -> _OwnView:
    """``shared`` (a namespace's view) with the services of ``rules`` translated under the
    rule the proxy of ``scope`` applies to each, originating TLS with ``credentials``."""
    access = scoped_rules.delivered(credentials)
    clusters: dict[str, Resource] = {}
    endpoints: dict[str, Resource] = {}
    errors: list[TranslationError] = []
    empty: tuple[list[Resource], list[Resource]] = ([], [])
    hidden = world.hidden_services(scope.namespace)
    for host, rule in rules.items():
        if host in hidden:
            continue
        svc_clusters, svc_endpoints = isolated(
            errors,
            memo.last_good,
            ("service", host, scope.namespace, rule.key, access),
            host,
            partial(tuple, [rule.key]),
            partial("clusters of {} under DestinationRule {}".format, host, rule.name),
            partial(_service_parts, world, world.services[host], memo, None, rule, access),
            empty,
        )
        clusters.update((c.name, c) for c in svc_clusters)
        endpoints.update((e.name, _folded(e, clusters.get(e.name))) for e in svc_endpoints)
    replaced = frozenset(rules)
    view = Shared(
        Layered(shared.clusters, clusters, replaced),
        Layered(shared.endpoints, endpoints, replaced),
        shared.errors,
    )
    return _OwnView(view, tuple(errors))


def translate_outbound(
    world: World,
    scope: ClientScope | str,
    memo: Memo | None = None,
    shared: Shared | None = None,
) -> Outbound:
    """Clusters, endpoints and outbound routes as seen by sidecars of ``scope`` (a
    :class:`ClientScope`, or just a namespace)."""
    if isinstance(scope, str):
        scope = ClientScope(scope)
    memo = memo or Memo()
    shared = shared or translate_shared(world, memo)
    # Made once per namespace and push, whatever the number of scopes in it. The key holds
    # the shared mappings' ids; the view holds the mappings, so no other object has them.
    view_key = ("namespace-view", scope.namespace, id(shared.clusters), id(shared.endpoints))
    shared, namespace_errors = memo.get(
        view_key, _namespace_view, world, scope.namespace, memo, shared
    )
    # Rules of its own (a workloadSelector picks it; a gateway's credentialName): none for
    # most proxies, which share their namespace's view.
    own_creds: tuple[Credential, ...] = ()
    own_rules = (
        # Remembered across endpoint-only pushes: a gateway's scan of every service for
        # rules naming a credential is not redone.
        memo.get(
            ("own-rules", scope.namespace, scope.labels, world.routing_fingerprint),
            scoped_rules.own_rules,
            world,
            scope,
        )
        if scope.gateway and world.credential_rules
        else world.selected_rules(scope.namespace, scope.labels)  # no work where none select
    )
    if own_rules:
        own_creds = scoped_rules.rule_credentials(world, scope, own_rules)
        own_key = (
            "own-view",
            scope.namespace,
            scope.labels,
            bool(scope.gateway),
            own_creds,
            id(shared.clusters),
            id(shared.endpoints),
        )
        own = memo.get(own_key, _own_view, world, scope, own_rules, own_creds, memo, shared)
        shared = own.shared
        namespace_errors = (*namespace_errors, *own.errors)
    # Routes read the namespace and the labels sourceLabels names, never the locality (nor
    # labels only failoverPriority reads): scopes that differ only there share routes.
    client = _routing_scope(world, scope)

    def routes() -> tuple[Resource, tuple[TranslationError, ...]]:
        errors: list[TranslationError] = []
        rc = outbound_route_configuration(world, client, errors, memo.last_good)
        return Resource.pack(rc["name"], build(RouteConfiguration, rc)), tuple(errors)

    if scope.gateway:
        # Its JWT and RBAC filters read what the routing fingerprint leaves out
        # (RequestAuthentications, fetched key sets, AuthorizationPolicies): both are in the key.
        key = (
            "gateway",
            client,
            world.routing_fingerprint,
            jwt_authn.gateway_key(world, client),
            authz.gateway_key(world, client),
        )
        parts = memo.get(key, _gateway_parts, world, client, memo)
        # Per node, in the memo only (which forgets what a push did not use): never in
        # last_good, whose entries live as long as the Gateway.
        listeners = (
            parts.listeners
            if scope.reporting is None
            else memo.get(
                ("gateway-reported", key, scope.reporting), _reported_listeners, parts, scope
            )
        )
        gateway_routes, errors = parts.routes, parts.errors
        sds_errors: list[TranslationError] = []
        # Private keys only to a gateway whose certificate has the CA's mark (peer_identity.py)
        sds = _proxy_secrets(world, client, memo, sds_errors, own_creds) if scope.verified else {}
        return Outbound(
            shared.clusters,
            _client_endpoints(world, scope, memo, shared)
            if world.locality_aware
            else shared.endpoints,
            gateway_routes,
            (*errors, *sds_errors, *namespace_errors),
            listeners,
            MappingProxyType(sds),
        )
    route, errors = memo.get(("rds", client, world.routing_fingerprint), routes)
    sidecar_errors: list[TranslationError] = []
    # A sidecar a selector rule picks: the credentials that rule names (rule_credentials
    # gives none to a sidecar that may not hold keys).
    sidecar_sds = _proxy_secrets(world, None, memo, sidecar_errors, own_creds) if own_creds else {}
    return Outbound(
        shared.clusters,
        _client_endpoints(world, scope, memo, shared) if world.locality_aware else shared.endpoints,
        MappingProxyType({route.name: route}),
        (*errors, *namespace_errors, *sidecar_errors),
        secrets=MappingProxyType(sidecar_sds),
    )


def _proxy_secrets(
    world: World,
    scope: ClientScope | None,
    memo: Memo,
    errors: list[TranslationError],
    extra: tuple[Credential, ...] = (),
) -> dict[str, Resource]:
    """A proxy's SDS secrets: a gateway's (``scope``) servers' credentials and ``extra``
    (those its DestinationRules name), each credential isolated: one that fails keeps its
    last good secrets (or is left out) and is reported, the others are delivered as usual."""
    nothing: tuple[Credential, ...] = ()
    wanted = nothing
    if scope is not None:
        wanted = isolated(
            errors,
            None,
            ("credentials", scope),
            scope.namespace,
            tuple,
            partial("credentials of the gateway in namespace {}".format, scope.namespace),
            partial(secrets.wanted_credentials, world, scope),
            nothing,
        )
    out: dict[str, Resource] = {}
    none: dict[str, Resource] = {}
    for c in dict.fromkeys((*wanted, *extra)):
        key: ResourceKey = ("Secret", c.namespace, c.name)
        out.update(
            isolated(
                errors,
                memo.last_good,
                ("sds", *key),
                key,
                partial(tuple, [key]),
                partial("SDS secrets of credential {}/{}".format, c.namespace, c.name),
                partial(memo.get, ("sds", c), secrets.gateway_secrets, (c,)),
                none,
            )
        )
    return out


def _pack_doc(message_type: Any, doc: dict[str, Any]) -> Resource:
    message = build_listener(doc) if message_type is Listener else build(message_type, doc)
    return Resource.pack(doc["name"], message)


def _pack_by_content(memo: Memo | None, message_type: Any, docs: list[dict[str, Any]]) -> Any:
    """``docs`` packed, each once per ``memo`` generation whichever proxy it is for: keyed by
    its content, so proxies whose translation inputs differ only in the node id share it,
    and a proxy whose access logger names it (:mod:`.accesslog`) gets its own."""
    if memo is None:
        return [_pack_doc(message_type, d) for d in docs]
    name = message_type.DESCRIPTOR.name
    return [
        memo.get(("local", name, json.dumps(d, sort_keys=True)), _pack_doc, message_type, d)
        for d in docs
    ]


def translate_local(
    node: Node,
    telemetry: ProxyTelemetry | None = None,
    security: WorkloadSecurity | None = None,
    memo: Memo | None = None,
) -> Local:
    """The node's outbound listener, inbound listeners and the clusters for its app (and
    for its tracer), reporting as ``telemetry`` says, guarded as ``security`` says. With a
    ``memo``, equal listeners and clusters of other proxies are parsed once and shared."""
    telemetry = telemetry or ProxyTelemetry()
    security = security or WorkloadSecurity()
    listeners = [
        outbound_listener(node, telemetry),
        *inbound_listeners(node, telemetry, security),
    ]
    if node.is_gateway:  # no app: its listeners come with its Gateways (translate_outbound)
        listeners = []
    clusters = [*inbound_clusters(node), *tracing.tracing_clusters(telemetry)]
    packed = partial(_pack_by_content, memo)
    return Local(
        clusters=MappingProxyType({r.name: r for r in packed(Cluster, clusters)}),
        listeners=MappingProxyType({r.name: r for r in packed(Listener, listeners)}),
    )


def _listeners(outbound: Outbound, local: Local) -> Mapping[str, Resource]:
    if not outbound.listeners:
        return local.listeners
    return _Overlay(outbound.listeners, local.listeners)


def assemble(outbound: Outbound, local: Local, revision: int) -> Snapshot:
    """One node's snapshot from its shared and local parts (sharing, not copying, them)."""
    resources = {
        rs.CLUSTER: _Overlay(outbound.clusters, local.clusters),
        rs.ENDPOINT: outbound.endpoints,
        rs.LISTENER: _listeners(outbound, local),
        rs.ROUTE: outbound.routes,
    }
    if outbound.secrets:  # credentials of a gateway or a selected sidecar; most have none
        resources[rs.SECRET] = outbound.secrets
    return Snapshot(resources=MappingProxyType(resources), revision=revision)


_NO_PARTS = Local(MappingProxyType({}), MappingProxyType({}))


def _with_own(
    local: Local,
    errors: list[TranslationError],
    node: Node,
    what: str,
    blame: Callable[[], tuple[ResourceKey, ...]],
    make: Callable[[], Local],
) -> Local:
    """``local`` with the listeners and clusters ``make`` builds for ``node`` (its
    ``what``) laid over it. A failure leaves them out and is reported as the node's, like a
    failure of its other listeners; ``blame`` names the resources to suspect."""
    part = partial("{} of proxy {}".format, what, node.id)
    own = isolated(errors, None, (what, node.id), node.id, blame, part, make, _NO_PARTS)
    if not own.listeners:
        return local
    clusters = _Overlay(local.clusters, own.clusters) if own.clusters else local.clusters
    return Local(clusters, _Overlay(local.listeners, own.listeners))


def _upstream_listeners_of(world: World, node: Node) -> Local:
    listeners = _pack_all(Listener, upstream_listeners(world, node), "name")
    return Local(MappingProxyType({}), MappingProxyType({r.name: r for r in listeners}))


def _with_upstream_listeners(
    world: World, node: Node, local: Local, memo: Memo, errors: list[TranslationError]
) -> Local:
    """``local`` plus the node's upstream listeners (see :mod:`.upstream_listeners`),
    memoized by what they read."""
    key = (
        "upstream-listeners",
        upstream_key(node),
        world.routing_fingerprint,
        world.telemetry_for(node),
    )
    make = partial(memo.get, key, _upstream_listeners_of, world, node)
    blame = partial(_blame_upstreams, world, node)
    return _with_own(local, errors, node, "upstream listeners", blame, make)


def _capture_parts_of(world: World, node: Node) -> Local:
    listeners = [capture.capture_listener(world, node), dns_table.dns_listener(world, node)]
    return Local(
        clusters=MappingProxyType(
            {r.name: r for r in _pack_all(Cluster, [capture.original_dst_cluster()], "name")}
        ),
        listeners=MappingProxyType({r.name: r for r in _pack_all(Listener, listeners, "name")}),
    )


def _with_capture(
    world: World, node: Node, local: Local, memo: Memo, errors: list[TranslationError]
) -> Local:
    """``local`` plus an intercepting node's capture and DNS listeners (see :mod:`.capture`,
    :mod:`.dns_table`), memoized by what they read of the node (its id, which its loggers
    name; its labels, which ``tcp`` routes match; its ports) and of the World. Per node:
    each listens on its own ports."""
    labels = tuple(sorted(node.labels.items()))
    of_node = (node.id, node.namespace, labels, node.metrics_log, node.intercept)
    key = ("capture", of_node, world.routing_fingerprint, world.telemetry_for(node))
    make = partial(memo.get, key, _capture_parts_of, world, node)
    blame = partial(_blame_routes, world, "tcp")
    return _with_own(local, errors, node, "capture listeners", blame, make)


def _blame_routes(world: World, kind: str) -> tuple[ResourceKey, ...]:
    """The VirtualServices with ``kind`` (``tcp``, ``tls``) routes."""
    vss = (vs for vss in world.virtual_services.values() for vs in vss)
    return tuple(sorted({vs.key for vs in vss if getattr(vs.spec, kind)}))


def _pack_connect_listener(doc: str, loggers: list[dict[str, Any]]) -> Resource:
    return _pack_all(Listener, [with_loggers(doc, loggers)], "name")[0]


def _connect_loggers_of(node: Node, telemetry: ProxyTelemetry) -> tuple[list[dict[str, Any]], str]:
    """The access loggers of the node's internal listeners (outbound TCP metrics and log),
    and their canonical JSON (what tells one proxy's packed listeners from another's; empty
    when it has none)."""
    loggers = accesslog.tcp_access_loggers(node, telemetry, outbound=True)
    return loggers, json.dumps(loggers, sort_keys=True) if loggers else ""


def _connect_parts_of(
    docs: tuple[str, ...],
    loggers: list[dict[str, Any]],
    logged: str,
    ports: tuple[tuple[str, int], ...],
    memo: Memo,
) -> Local:
    # One packing per listener and distinct loggers: a change to one port's routing leaves
    # the other ports' listeners as they were.
    listeners = [
        memo.get(("connect-listener", d, logged), _pack_connect_listener, d, loggers) for d in docs
    ]
    clusters = memo.get(("connect-clusters", ports), _pack_internal_clusters, ports)
    return Local(
        clusters=MappingProxyType({r.name: r for r in clusters}),
        listeners=MappingProxyType({r.name: r for r in listeners}),
    )


def _pack_internal_clusters(ports: tuple[tuple[str, int], ...]) -> list[Resource]:
    return _pack_all(Cluster, internal_clusters(ports), "name")


def _with_connect(
    world: World, node: Node, local: Local, memo: Memo, errors: list[TranslationError]
) -> Local:
    """``local`` plus the internal listeners and clusters behind the node's CONNECT routes
    (see :mod:`.connect`); nothing when the mesh has no TLS port. A failure leaves them out
    and is reported as the node's.

    Their routing is made once per namespace, ``tls`` source labels, labels a selecting
    DestinationRule reads (:meth:`~tsunagi.mesh.World.rule_labels`) and outbound policy, and
    packed once per distinct access loggers: per proxy when it has its own (a metric pipe,
    an access log naming it), once for all the proxies without. Each push only looks them
    up: a routing change that leaves a listener equal re-packs nothing."""
    if node.is_gateway:
        return local

    def make() -> Local:
        fp = world.routing_fingerprint
        # A DestinationRule whose workloadSelector picks it decides PASSTHROUGH and idle
        # timeouts, as for its clusters and routes; () for most proxies, which share these.
        rule_labels = world.rule_labels(node.namespace, node.labels.items())
        ports_key = ("connect-ports", node.namespace, rule_labels, fp)
        ports = memo.get(ports_key, sni_routed_ports, world, node.namespace, rule_labels)
        if not ports:
            return _NO_PARTS
        keys = world.tls_source_label_keys
        source = ((k, v) for k, v in node.labels.items() if k in keys)
        labels = tuple(sorted({*source, *rule_labels}))
        policy = outbound_policy(world, node)
        scope = (node.namespace, labels, policy, ports)
        docs = memo.get(("connect-docs", *scope, fp), connect_listener_docs, world, *scope)
        # What the loggers read of the node (its id names it in the access log, its pipe
        # takes the metric lines) and its telemetry: made once, not at every push.
        telemetry = world.telemetry_for(node)
        loggers_key = ("connect-loggers", node.id, node.metrics_log, telemetry)
        loggers, logged = memo.get(loggers_key, _connect_loggers_of, node, telemetry)
        # Not memoized as a whole: each push must ask for every part, or the memo would
        # forget (at its next rotation) the parts a later change leaves as they are.
        return _connect_parts_of(docs, loggers, logged, ports, memo)

    blame = partial(_blame_routes, world, "tls")
    return _with_own(local, errors, node, "CONNECT listeners", blame, make)


def _blame_upstreams(world: World, node: Node) -> tuple[ResourceKey, ...]:
    return tuple(vs.key for up in node.upstreams for vs in world.virtual_services.get(up.host, ()))


def assemble_patched(
    world: World,
    node: Node,
    outbound: Outbound,
    local: Local,
    revision: int,
    memo: Memo | None = None,
) -> tuple[Snapshot, Patched]:
    """:func:`assemble`, then the EnvoyFilters that select ``node`` (see :mod:`.envoyfilter`).

    A node no EnvoyFilter selects gets exactly :func:`assemble`'s snapshot, sharing every
    mapping; the :class:`Patched` says what failed and which filters changed what.
    A node with ``--upstream`` listeners gets them here: they follow the World's TCP routes.
    """
    memo = memo or Memo()
    upstream_errors: list[TranslationError] = []
    if node.upstreams:
        local = _with_upstream_listeners(world, node, local, memo, upstream_errors)
    local = _with_connect(world, node, local, memo, upstream_errors)
    if node.intercept is not None:
        local = _with_capture(world, node, local, memo, upstream_errors)
    snapshot = assemble(outbound, local, revision)
    parts = Parts(
        outbound.clusters,
        outbound.endpoints,
        _listeners(outbound, local),
        outbound.routes,
        local.clusters,
    )
    patched = patch_parts(world, node, parts, memo)
    if upstream_errors:
        patched = dataclasses.replace(patched, errors=(*upstream_errors, *patched.errors))
    if patched.parts is parts:
        return snapshot, patched
    p = patched.parts
    resources = {**snapshot.resources, rs.CLUSTER: p.clusters, rs.ENDPOINT: p.endpoints}
    resources.update({rs.LISTENER: p.listeners, rs.ROUTE: p.routes})
    if p.extension_configs:
        resources[rs.EXTENSION_CONFIG] = p.extension_configs
    return Snapshot(resources=MappingProxyType(resources), revision=revision), patched


def translate(world: World, node: Node) -> Snapshot:
    """Everything ``node`` should run, given ``world``."""
    memo = Memo()
    outbound = translate_outbound(world, world.scope_of(node), memo)
    local = translate_local(node, world.telemetry_for(node), world.security_for(node))
    return assemble_patched(world, node, outbound, local, world.revision, memo)[0]
