"""EnvoyFilter: which ones apply to a proxy, and its translated config with their patches.

Patches run after translation, on the Envoy messages, as in Istio. Which filters apply:
those in the root namespace (``istio-system``) and in the proxy's namespace whose
``workloadSelector`` matches the proxy's labels (no selector: every proxy there), ordered
by ``priority``, then root namespace first, then name (Tsunagi keeps no creation time; Istio
orders by creation time there). They are applied one EnvoyFilter at a time, so one whose
patch fails is left out alone and reported against itself. (Istio first merges the patches
of all of them level by level; the two differ only where one filter's patch matches
something another one adds or renames.)

Proxies no filter selects keep the shared resources untouched. Patched resources are
memoized by (the applicable filters, the resource's name and version), and a mapping many
proxies share (a scope's routes, the shared clusters and their endpoints) is patched once
per set of filters, so a push costs a proxy with filters little more than its own resources.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Protocol, TypeVar

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from google.protobuf import json_format
from google.protobuf.message import Message

from tsunagi.api import ResourceOf
from tsunagi.api.envoy_values import PatchValueError, build_value
from tsunagi.api.envoyfilter import (
    INSERTS,
    LISTENER_CLASS,
    OPERATIONS,
    ORDERED,
    ROUTE_CLASS,
    EnvoyFilterSpec,
)
from tsunagi.mesh import Node, World
from tsunagi.mesh.world import of_spec
from tsunagi.xds import resources as rs
from tsunagi.xds.resources import Resource
from tsunagi.xds.translate.envoyfilter_ecds import extension_configs, loaded_names, missing
from tsunagi.xds.translate.envoyfilter_patch import (
    Prepared,
    patch_cluster,
    patch_listener,
    patch_route_configuration,
)
from tsunagi.xds.translate.isolation import ResourceKey, TranslationError
from tsunagi.xds.translate.proto_merge import copied

ROOT_NAMESPACE = "istio-system"
"""Istio's default config root namespace: its EnvoyFilters apply in every namespace."""

INBOUND, OUTBOUND, GATEWAY = "SIDECAR_INBOUND", "SIDECAR_OUTBOUND", "GATEWAY"

T = TypeVar("T")


class _Memo(Protocol):
    def get(self, key: Hashable, make: Callable[..., T], *args: Any) -> T: ...


@dataclass(frozen=True)
class Filter:
    """One EnvoyFilter, ready to apply."""

    key: ResourceKey
    name: str
    """``namespace/name``, for messages."""
    patches: tuple[Prepared, ...]


@dataclass(frozen=True)
class Parts:
    """One proxy's resources by type, before or after patching."""

    clusters: Mapping[str, Resource]
    """Before patching, the clusters many proxies share (so they are patched once for all
    proxies with the same filters); after, every cluster."""
    endpoints: Mapping[str, Resource]
    listeners: Mapping[str, Resource]
    routes: Mapping[str, Resource]
    own_clusters: Mapping[str, Resource] = field(default_factory=dict)
    """Before patching, the proxy's own clusters (they win over shared ones of that name)."""
    extension_configs: Mapping[str, Resource] = field(default_factory=dict)
    """After patching, the extension configs (ECDS) EXTENSION_CONFIG patches add."""


@dataclass(frozen=True)
class Patched:
    """A proxy's resources after its EnvoyFilters, with what failed and who changed what."""

    parts: Parts
    errors: tuple[TranslationError, ...] = ()
    touched: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Type URL → the EnvoyFilters (``namespace/name``) that changed resources of that type."""


def selects(r: ResourceOf[EnvoyFilterSpec], node: Node) -> bool:
    """Whether EnvoyFilter ``r`` applies to ``node`` (namespace, selector; targetRefs name
    Gateway API objects, which Tsunagi proxies never are)."""
    if r.namespace not in (ROOT_NAMESPACE, node.namespace) or r.spec.target_refs:
        return False
    sel = r.spec.workload_selector
    labels = sel.labels if sel is not None else {}
    return all(node.labels.get(k) == v for k, v in labels.items())


def _digest(r: ResourceOf[EnvoyFilterSpec]) -> tuple[ResourceOf[EnvoyFilterSpec], str]:
    text = json.dumps(r.spec.model_dump(mode="json"), sort_keys=True)
    return r, hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def _filters_of(world: World) -> tuple[World, list[ResourceOf[EnvoyFilterSpec]]]:
    return world, of_spec(world.resources, EnvoyFilterSpec)


def applicable(
    world: World, node: Node, memo: _Memo
) -> list[tuple[ResourceOf[EnvoyFilterSpec], str]]:
    """The EnvoyFilters for ``node`` in the order Istio applies them, with content digests."""
    # Per World, not per node; the entry holds the World, so its id is not reused meanwhile
    every = memo.get(("ef-all", id(world)), _filters_of, world)[1]
    chosen = [r for r in every if selects(r, node)]
    chosen.sort(
        key=lambda r: (
            r.spec.priority,
            0 if r.namespace == ROOT_NAMESPACE and node.namespace != ROOT_NAMESPACE else 1,
            r.name,
        )
    )
    # The digest is memoized by the object, which the memo entry holds (so its id is not reused)
    return [memo.get(("ef-digest", id(r)), _digest, r) for r in chosen]


def prepare(r: ResourceOf[EnvoyFilterSpec]) -> tuple[Filter | None, str]:
    """The filter's patches with their values built as Envoy messages, or the reason it
    cannot be applied. Fields Envoy's API does not have are dropped, as Istio does (so a
    filter written for another Envoy version still applies); ``apply`` warns about them."""
    patches = []
    for i, cp in enumerate(r.spec.config_patches):
        if cp.apply_to is None or cp.patch is None or cp.patch.operation is None:
            continue
        m = cp.match
        if m is not None and m.proxy is not None and (m.proxy.proxy_version or m.proxy.metadata):
            continue  # matches proxies by Istio version/metadata: ours report none
        op = cp.patch.operation
        if op in INSERTS and cp.apply_to not in ORDERED:
            op = "ADD"  # as Istio: only filters and routes are ordered
        elif op not in OPERATIONS[cp.apply_to]:
            continue  # Istio ignores it (REPLACE on a cluster, ...); apply warns
        value = None
        if op != "REMOVE":
            try:
                value = build_value(cp.apply_to, cp.patch.value, strict=False)
            except PatchValueError as e:  # validation refuses these: stored by another version
                return None, (
                    f"spec.configPatches[{i}].patch.value: {e}; proxies run without this "
                    "EnvoyFilter until the value is fixed"
                )
        context = m.context if m is not None else "ANY"
        patches.append(Prepared(cp.apply_to, op, context, m, value))
    return Filter(r.key, r.qualified_name, tuple(patches)), ""


def _patches_for(filter_: Filter, context: str, levels: frozenset[str]) -> list[Prepared]:
    return [p for p in filter_.patches if p.apply_to in levels and p.context in ("ANY", context)]


_Patcher = Callable[[Any, Sequence[Prepared]], Any]
_KINDS: dict[str, tuple[type[Message], frozenset[str], _Patcher]] = {
    # listeners hold inbound route configurations inline
    rs.LISTENER: (listener_pb2.Listener, LISTENER_CLASS | ROUTE_CLASS, patch_listener),
    rs.ROUTE: (route_pb2.RouteConfiguration, ROUTE_CLASS, patch_route_configuration),
    rs.CLUSTER: (cluster_pb2.Cluster, frozenset({"CLUSTER"}), patch_cluster),
}


_CONTEXT_OF: Mapping[str, Callable[[str], str]] = {
    # inbound|PORT listeners are inbound; the outbound listener, --upstream listeners and
    # CONNECT's internal listeners carry the app's outbound traffic (Istio's outbound ones).
    rs.LISTENER: lambda n: INBOUND if n.startswith("inbound|") else OUTBOUND,
    rs.ROUTE: lambda n: OUTBOUND,  # inbound ones are inline, in their listener
    rs.CLUSTER: lambda n: INBOUND if n.startswith("inbound|") else OUTBOUND,
}
"""Resource type → the patch context of a resource of that type, by its name (sidecars)."""


def _gateway_context(name: str) -> str:
    return GATEWAY  # every resource of a gateway proxy, as in Istio


def _node_context(node: Node, type_url: str) -> Callable[[str], str]:
    return _gateway_context if node.is_gateway else _CONTEXT_OF[type_url]


def _in_context(context: str, node: Node) -> bool:
    """Whether a patch of ``context`` may apply to ``node`` at all."""
    if node.is_gateway:
        return context in ("ANY", GATEWAY)
    return context != GATEWAY


def _patch_one(
    type_url: str, res: Resource, context: str, filters: Sequence[Filter]
) -> tuple[Resource | None, tuple[TranslationError, ...], tuple[str, ...]]:
    """One resource through every filter in order. A filter whose patches raise or make a
    message that does not convert back (say, an unknown ``@type``) is skipped and reported."""
    message_type, levels, patcher = _KINDS[type_url]
    message = message_type()
    res.body.Unpack(message)
    serialized = before = message.SerializeToString(deterministic=True)
    errors: list[TranslationError] = []
    touched: list[str] = []
    kind = rs.SHORT_NAMES[type_url]
    for f in filters:
        patches = _patches_for(f, context, levels)
        if not patches:
            continue
        try:
            out = patcher(copied(message), patches)
            if out is not None:
                json_format.MessageToDict(out)  # every Any in it must resolve
        except Exception as e:  # a patch Envoy cannot take stays in its filter
            errors.append(
                TranslationError(
                    (f.key,),
                    f"EnvoyFilter {f.name} on {kind} {res.name}",
                    f"{type(e).__name__}: {e}; this filter is left out of that resource",
                    kept_last_good=False,
                )
            )
            continue
        if out is None:
            return None, tuple(errors), (*touched, f.name)
        now = out.SerializeToString(deterministic=True)
        if now != serialized:
            touched.append(f.name)
        message, serialized = out, now
    if serialized == before:
        return res, tuple(errors), ()
    return Resource.pack(res.name, message), tuple(errors), tuple(dict.fromkeys(touched))


def _added(apply_to: str, filters: Sequence[Filter], node: Node) -> list[tuple[str, Message]]:
    """LISTENER and CLUSTER ADD patches, once per proxy: (filter name, value). Istio adds
    those of context ANY or SIDECAR_OUTBOUND on its outbound pass and SIDECAR_INBOUND ones on
    its inbound pass, so a sidecar gets each once; a gateway gets ANY and GATEWAY ones."""
    return [
        (f.name, p.value)
        for f in filters
        for p in f.patches
        if p.apply_to == apply_to and p.operation == "ADD" and _in_context(p.context, node)
    ]


def _with_added(
    type_url: str,
    items: Mapping[str, Resource],
    added: Sequence[tuple[str, Message]],
    touched: dict[str, list[str]],
) -> Mapping[str, Resource]:
    """``items`` plus the resources ADD patches make (a name already there is replaced)."""
    if not added:
        return items
    out = dict(items)
    for who, value in added:
        out[value.name] = Resource.pack(value.name, value)
        touched.setdefault(type_url, []).append(who)
    return out


def _prepared_filters(
    chosen: Sequence[tuple[ResourceOf[EnvoyFilterSpec], str]], memo: _Memo
) -> tuple[list[Filter], list[TranslationError]]:
    """The chosen EnvoyFilters ready to apply, and those that are not (with why)."""
    filters: list[Filter] = []
    errors: list[TranslationError] = []
    for r, digest in chosen:
        prepared, reason = memo.get(("ef-prep", r.key, digest), prepare, r)
        if prepared is None:
            errors.append(
                TranslationError(
                    (r.key,), f"EnvoyFilter {r.qualified_name}", reason, kept_last_good=False
                )
            )
        else:
            filters.append(prepared)
    return filters, errors


_Outcome = tuple[Mapping[str, Resource], tuple[TranslationError, ...], tuple[str, ...]]
"""Patched resources of one type, what failed, and the filters that changed any of them."""


def _patch_map(
    type_url: str,
    items: Mapping[str, Resource],
    context_of: Callable[[str], str],
    filters: Sequence[Filter],
    filters_key: Hashable,
    memo: _Memo,
) -> _Outcome:
    """Every resource of one type through ``filters`` (those with patches for that type;
    ``items`` itself if none changes), each memoized by the filters and the resource's name
    and version."""
    if not items:
        return items, (), ()
    out: dict[str, Resource] = {}
    errors: list[TranslationError] = []
    touched: list[str] = []
    changed = False
    for name, res in items.items():
        key = ("ef", type_url, filters_key, name, res.version)
        new, errs, by = memo.get(key, _patch_one, type_url, res, context_of(name), filters)
        errors.extend(errs)
        touched.extend(by)
        changed = changed or new is not res
        if new is not None:
            out[name] = new
    result = MappingProxyType(out) if changed else items
    return result, tuple(dict.fromkeys(errors)), tuple(dict.fromkeys(touched))


def _holding(held: Any, make: Callable[..., T], *args: Any) -> tuple[Any, T]:
    """``make(*args)`` with ``held`` beside it: a memo entry keyed by ``id(held)`` keeps it
    alive, so the id is not reused while the entry exists."""
    return held, make(*args)


def _patch_shared(
    type_url: str,
    items: Mapping[str, Resource],
    context_of: Callable[[str], str],
    filters: Sequence[Filter],
    filters_key: Hashable,
    memo: _Memo,
) -> _Outcome:
    """:func:`_patch_map` of a mapping many proxies share (a client scope's routes, the
    clusters every sidecar gets): made once for all proxies with the same filters, rather
    than a lookup per resource per proxy."""
    key = ("ef-map", type_url, filters_key, id(items))
    args = (type_url, items, context_of, filters, filters_key, memo)
    outcome: _Outcome = memo.get(key, _holding, items, _patch_map, *args)[1]
    return outcome


def _refold(
    endpoints: Mapping[str, Resource],
    before: Mapping[str, Resource | None],
    after: Mapping[str, Resource],
    names: Iterable[str],
) -> dict[str, Resource | None]:
    """For each of ``names`` with endpoints whose cluster patching changed: its assignment
    with the new cluster version folded in (as translate_shared does, so Envoy gets them
    again and the cluster finishes warming), or None if the cluster was removed (every EDS
    name must be a CDS name)."""
    out: dict[str, Resource | None] = {}
    for n in names:
        cla = endpoints.get(n)
        if cla is None or after.get(n) is before.get(n):
            continue
        cluster = after.get(n)
        folded = f"{cla.version}.{cluster.version}" if cluster is not None else ""
        out[n] = Resource(cla.name, cla.body, folded) if cluster is not None else None
    return out


def _shared_refold(
    endpoints: Mapping[str, Resource], before: Mapping[str, Resource], after: Mapping[str, Resource]
) -> dict[str, Resource | None]:
    """:func:`_refold` over every endpoint assignment, for the shared clusters."""
    return _refold(endpoints, before, after, endpoints)


def _with_refold(
    endpoints: Mapping[str, Resource], refold: Mapping[str, Resource | None]
) -> Mapping[str, Resource]:
    if not refold:
        return endpoints
    out = {n: cla for n, cla in endpoints.items() if refold.get(n, cla) is not None}
    out.update((n, cla) for n, cla in refold.items() if cla is not None)
    return MappingProxyType(out)


def _extension_configs(
    filters: Sequence[Filter],
    digests: Mapping[ResourceKey, str],
    memo: _Memo,
    errors: list[TranslationError],
    touched: dict[str, list[str]],
) -> Mapping[str, Resource]:
    """The extension configs the filters' EXTENSION_CONFIG patches add, made once per set
    of such filters (most proxies of a namespace share it); records errors and who added."""
    mine = [f for f in filters if any(p.apply_to == "EXTENSION_CONFIG" for p in f.patches)]
    if not mine:
        return {}
    key = ("ef-ecds", tuple((f.key, digests[f.key]) for f in mine))
    made = memo.get(key, extension_configs, [(f.key, f.name, f.patches) for f in mine])
    errors.extend(made.errors)
    if made.by:
        touched.setdefault(rs.EXTENSION_CONFIG, []).extend(made.by)
    return made.configs


def _unserved(
    listeners: Mapping[str, Resource],
    extensions: Mapping[str, Resource],
    filters: Sequence[Filter],
    touched: Mapping[str, Sequence[str]],
    memo: _Memo,
) -> list[TranslationError]:
    """An error per extension config a patched listener loads over ECDS that no filter of
    this proxy adds, blamed on the filters that patched its listeners."""

    def loads(res: Resource) -> frozenset[str]:
        key = ("ef-ecds-loads", res.name, res.version)
        names: frozenset[str] = memo.get(key, loaded_names, res)
        return names

    gaps = missing(listeners, extensions, loads)
    if not gaps:
        return []
    by = set(touched.get(rs.LISTENER, ()))
    keys = tuple(f.key for f in filters if f.name in by)
    return [
        TranslationError(
            keys,
            f"extension config {ext!r} that LDS {listener} loads over ECDS",
            "no EnvoyFilter selecting this proxy adds it (applyTo EXTENSION_CONFIG, operation "
            "ADD, value.name the filter's name), so the filter answers 500: add one or fix "
            "the name",
            kept_last_good=False,
        )
        for listener, ext in gaps
    ]


def patch_parts(world: World, node: Node, parts: Parts, memo: _Memo) -> Patched:
    """``parts`` with the EnvoyFilters that select ``node`` applied."""
    chosen = applicable(world, node, memo)
    if not chosen:
        return Patched(parts)
    filters, errors = _prepared_filters(chosen, memo)
    if not filters:
        return Patched(parts, tuple(errors))
    touched: dict[str, list[str]] = {}
    digests = {r.key: digest for r, digest in chosen}

    def patch(
        patcher: Callable[..., _Outcome], type_url: str, items: Mapping[str, Resource]
    ) -> Mapping[str, Resource]:
        # Keyed by the filters that patch this type only, so proxies that differ in others
        # (say, an HTTP filter of their app's) still share the patched resources
        levels = _KINDS[type_url][1]
        mine = [
            f
            for f in filters
            if any(p.apply_to in levels and _in_context(p.context, node) for p in f.patches)
        ]
        if not mine:
            return items
        # The proxy kind too: the same resource is patched in another context on a gateway
        key = (node.is_gateway, *((f.key, digests[f.key]) for f in mine))
        context_of = _node_context(node, type_url)
        out, errs, by = patcher(type_url, items, context_of, mine, key, memo)
        errors.extend(errs)
        touched.setdefault(type_url, []).extend(by)
        return out

    listeners = patch(_patch_map, rs.LISTENER, parts.listeners)
    routes = patch(_patch_shared, rs.ROUTE, parts.routes)
    shared = patch(_patch_shared, rs.CLUSTER, parts.clusters)
    own = patch(_patch_map, rs.CLUSTER, parts.own_clusters)
    listeners = _with_added(rs.LISTENER, listeners, _added("LISTENER", filters, node), touched)
    own = _with_added(rs.CLUSTER, own, _added("CLUSTER", filters, node), touched)
    extensions = _extension_configs(filters, digests, memo, errors, touched)
    if listeners is not parts.listeners:  # only patches make filters that load over ECDS
        errors.extend(_unserved(listeners, extensions, filters, touched, memo))
    if (
        listeners is parts.listeners
        and routes is parts.routes
        and shared is parts.clusters
        and own is parts.own_clusters
    ):
        if not extensions:
            return Patched(parts, tuple(dict.fromkeys(errors)))
        return Patched(
            replace(parts, extension_configs=extensions),
            tuple(dict.fromkeys(errors)),
            MappingProxyType({t: tuple(dict.fromkeys(w)) for t, w in touched.items() if w}),
        )
    clusters = {**shared, **own}
    refold = memo.get(
        ("ef-eds", id(parts.endpoints), id(shared)),
        _holding,
        (parts.endpoints, shared),
        _shared_refold,
        parts.endpoints,
        parts.clusters,
        shared,
    )[1]
    # The proxy's own and added clusters (few) win over shared ones of their name
    names = own.keys() | parts.own_clusters.keys()
    before = {n: parts.own_clusters.get(n, parts.clusters.get(n)) for n in names}
    if any(n in refold for n in names):
        refold = {n: v for n, v in refold.items() if n not in names}
    mine = _refold(parts.endpoints, before, clusters, names)
    return Patched(
        Parts(
            MappingProxyType(clusters),
            _with_refold(parts.endpoints, {**refold, **mine}),
            MappingProxyType(dict(listeners)) if listeners is not parts.listeners else listeners,
            routes,
            extension_configs=extensions,
        ),
        tuple(dict.fromkeys(errors)),
        MappingProxyType({t: tuple(dict.fromkeys(w)) for t, w in touched.items() if w}),
    )
