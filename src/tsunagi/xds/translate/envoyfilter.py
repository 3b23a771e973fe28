"""EnvoyFilter: which ones apply to a proxy, and its translated config with their patches.

Patches run after translation, on the Envoy messages, as in Istio. Which filters apply:
those in the root namespace (``istio-system``) and in the proxy's namespace whose
``workloadSelector`` matches the proxy's labels (no selector: every proxy there), ordered
by ``priority``, then root namespace first, then name (Tsunagi keeps no creation time; Istio
orders by creation time there). They are applied one EnvoyFilter at a time, so one whose
patch fails is left out alone and reported against itself.

Proxies no filter selects keep the shared resources untouched; patched resources are
memoized by (the applicable filters, the resource's name and version), so proxies with the
same filters share them too.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol, TypeVar

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from google.protobuf import json_format
from google.protobuf.message import Message

from tsunagi.api import ResourceOf
from tsunagi.api.envoy_values import PatchValueError, build_value
from tsunagi.api.envoyfilter import EnvoyFilterSpec
from tsunagi.mesh import Node, World
from tsunagi.mesh.world import of_spec
from tsunagi.xds import resources as rs
from tsunagi.xds.resources import Resource
from tsunagi.xds.translate.envoyfilter_patch import (
    Prepared,
    patch_cluster,
    patch_listener,
    patch_route_configuration,
)
from tsunagi.xds.translate.isolation import ResourceKey, TranslationError
from tsunagi.xds.translate.names import OUTBOUND_LISTENER

ROOT_NAMESPACE = "istio-system"
"""Istio's default config root namespace: its EnvoyFilters apply in every namespace."""

INBOUND, OUTBOUND = "SIDECAR_INBOUND", "SIDECAR_OUTBOUND"
_ORDERED = frozenset({"NETWORK_FILTER", "HTTP_FILTER", "HTTP_ROUTE"})
_INSERTS = frozenset({"INSERT_BEFORE", "INSERT_AFTER", "INSERT_FIRST"})
_ROUTE_LEVELS = frozenset({"ROUTE_CONFIGURATION", "VIRTUAL_HOST", "HTTP_ROUTE"})
_LISTENER_LEVELS = frozenset({"LISTENER", "FILTER_CHAIN", "NETWORK_FILTER", "HTTP_FILTER"})

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
    endpoints: Mapping[str, Resource]
    listeners: Mapping[str, Resource]
    routes: Mapping[str, Resource]


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
    """The filter's patches with their values built strictly (as Envoy will read them), or
    the reason it cannot be applied."""
    patches = []
    for i, cp in enumerate(r.spec.config_patches):
        if cp.apply_to is None or cp.patch is None or cp.patch.operation is None:
            continue
        m = cp.match
        if cp.apply_to == "EXTENSION_CONFIG" or (m is not None and m.context == "GATEWAY"):
            continue  # no ECDS and no gateways here (an apply warning says so)
        if m is not None and m.proxy is not None and (m.proxy.proxy_version or m.proxy.metadata):
            continue  # matches proxies by Istio version/metadata: ours report none
        op = cp.patch.operation
        if op in _INSERTS and cp.apply_to not in _ORDERED:
            op = "ADD"  # as Istio: only filters and routes are ordered
        value = None
        if op != "REMOVE":
            try:
                value = build_value(cp.apply_to, cp.patch.value, strict=True)
            except PatchValueError as e:
                return None, (
                    f"spec.configPatches[{i}].patch.value: {e}; Envoy would reject it, so "
                    "proxies run without this EnvoyFilter until the value is fixed"
                )
        context = m.context if m is not None else "ANY"
        patches.append(Prepared(cp.apply_to, op, context, m, value))
    return Filter(r.key, r.qualified_name, tuple(patches)), ""


def _for(filter_: Filter, context: str, levels: frozenset[str]) -> list[Prepared]:
    return [p for p in filter_.patches if p.apply_to in levels and p.context in ("ANY", context)]


def _copy(message: Message) -> Message:
    out = type(message)()
    out.CopyFrom(message)
    return out


_Patcher = Callable[[Any, Sequence[Prepared]], Any]
_KINDS: dict[str, tuple[type[Message], frozenset[str], _Patcher]] = {
    rs.LISTENER: (listener_pb2.Listener, _LISTENER_LEVELS | _ROUTE_LEVELS, patch_listener),
    rs.ROUTE: (route_pb2.RouteConfiguration, _ROUTE_LEVELS, patch_route_configuration),
    rs.CLUSTER: (cluster_pb2.Cluster, frozenset({"CLUSTER"}), patch_cluster),
}


def _patch_one(
    type_url: str, res: Resource, context: str, filters: Sequence[Filter]
) -> tuple[Resource | None, tuple[TranslationError, ...], tuple[str, ...]]:
    """One resource through every filter in order. A filter whose patches raise or make a
    message that does not convert back (say, an unknown ``@type``) is skipped and reported."""
    message_type, levels, patcher = _KINDS[type_url]
    message = message_type()
    res.body.Unpack(message)
    before = message.SerializeToString(deterministic=True)
    errors: list[TranslationError] = []
    touched: list[str] = []
    kind = rs.SHORT_NAMES[type_url]
    for f in filters:
        patches = _for(f, context, levels)
        if not patches:
            continue
        try:
            out = patcher(_copy(message), patches)
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
        if out.SerializeToString(deterministic=True) != message.SerializeToString(
            deterministic=True
        ):
            touched.append(f.name)
        message = out
    if message.SerializeToString(deterministic=True) == before:
        return res, tuple(errors), ()
    return Resource.pack(res.name, message), tuple(errors), tuple(dict.fromkeys(touched))


def _added(
    apply_to: str, contexts: tuple[str, ...], filters: Sequence[Filter]
) -> list[tuple[str, Message]]:
    """LISTENER and CLUSTER ADD patches, once per proxy: (filter name, value)."""
    return [
        (f.name, p.value)
        for f in filters
        for p in f.patches
        if p.apply_to == apply_to and p.operation == "ADD" and p.context in contexts
    ]


def patch_parts(world: World, node: Node, parts: Parts, memo: _Memo) -> Patched:
    """``parts`` with the EnvoyFilters that select ``node`` applied."""
    chosen = applicable(world, node, memo)
    if not chosen:
        return Patched(parts)
    errors: list[TranslationError] = []
    filters: list[Filter] = []
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
    if not filters:
        return Patched(parts, tuple(errors))
    fp = tuple((r.key, digest) for r, digest in chosen)
    touched: dict[str, list[str]] = {}

    def run(
        type_url: str, items: Mapping[str, Resource], context_of: Callable[[str], str]
    ) -> Mapping[str, Resource]:
        _, levels, _ = _KINDS[type_url]
        if not any(p.apply_to in levels for f in filters for p in f.patches):
            return items
        out: dict[str, Resource] = {}
        changed = False
        for name, res in items.items():
            key = ("ef", type_url, fp, name, res.version)
            ctx = context_of(name)
            new, errs, who = memo.get(key, _patch_one, type_url, res, ctx, filters)
            errors.extend(errs)
            if who:
                touched.setdefault(type_url, []).extend(who)
            if new is not res:
                changed = True
            if new is not None:
                out[name] = new
        return MappingProxyType(out) if changed else items

    listeners = run(
        rs.LISTENER, parts.listeners, lambda n: OUTBOUND if n == OUTBOUND_LISTENER else INBOUND
    )
    routes = run(rs.ROUTE, parts.routes, lambda n: OUTBOUND)
    clusters = run(
        rs.CLUSTER, parts.clusters, lambda n: INBOUND if n.startswith("inbound|") else OUTBOUND
    )
    adds = {
        rs.LISTENER: _added("LISTENER", ("ANY", OUTBOUND), filters),
        rs.CLUSTER: _added("CLUSTER", ("ANY", OUTBOUND, INBOUND), filters),
    }
    if adds[rs.LISTENER]:
        listeners = dict(listeners)
        for who, value in adds[rs.LISTENER]:
            listeners[value.name] = Resource.pack(value.name, value)
            touched.setdefault(rs.LISTENER, []).append(who)
    if adds[rs.CLUSTER]:
        clusters = dict(clusters)
        for who, value in adds[rs.CLUSTER]:
            clusters[value.name] = Resource.pack(value.name, value)
            touched.setdefault(rs.CLUSTER, []).append(who)
    endpoints = parts.endpoints
    if clusters is not parts.clusters:
        # A changed cluster needs its endpoints re-sent to finish warming (see translate_shared)
        refold = {
            n: Resource(cla.name, cla.body, f"{cla.version}.{clusters[n].version}")
            for n, cla in endpoints.items()
            if n in clusters and clusters[n] is not parts.clusters.get(n)
        }
        # ...and a removed cluster's endpoints go too, so every EDS name is a CDS name
        gone = [n for n in endpoints if n not in clusters]
        if refold or gone:
            kept = {n: cla for n, cla in endpoints.items() if n in clusters}
            endpoints = MappingProxyType({**kept, **refold})
    return Patched(
        Parts(
            MappingProxyType(dict(clusters)) if clusters is not parts.clusters else clusters,
            endpoints,
            MappingProxyType(dict(listeners)) if listeners is not parts.listeners else listeners,
            routes,
        ),
        tuple(dict.fromkeys(errors)),
        MappingProxyType({t: tuple(dict.fromkeys(w)) for t, w in touched.items()}),
    )
