"""Versioned xDS resources: what each node gets, independent of how it is streamed.

A resource is serialized once into a ``google.protobuf.Any`` and its version is the hash of
those bytes, so identical content always has an identical version and nothing is re-sent
when nothing changed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from google.protobuf import any_pb2
from google.protobuf.message import Message

from tsunagi.xds.by_identity import IdentityCache, shared

CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
EXTENSION_CONFIG = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"

# Make before break: a cluster exists before an endpoint set names it, endpoints before a
# listener can send to them, a listener before the routes it loads. Extension configs (ECDS)
# go after the clusters a filter config may name (ext_authz, rate limit services) and before
# the listeners whose filters load them, so a changed config is in place before a listener
# uses it. Envoy asks for an ECDS name only once it applied a listener naming it; such a new
# name still goes while LDS awaits its answer (it comes earlier in this order), which is what
# the warming listener waits for.
PUSH_ORDER: tuple[str, ...] = (CLUSTER, ENDPOINT, EXTENSION_CONFIG, LISTENER, ROUTE)

# Types whose subscription is a wildcard ("everything for this node") in Envoy's ADS.
WILDCARD_TYPES = frozenset({CLUSTER, LISTENER})

SHORT_NAMES = {
    CLUSTER: "CDS",
    ENDPOINT: "EDS",
    EXTENSION_CONFIG: "ECDS",
    LISTENER: "LDS",
    ROUTE: "RDS",
    SECRET: "SDS",
}


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=8).hexdigest()


@dataclass(frozen=True, slots=True)
class Resource:
    """One named xDS resource, serialized once, versioned by its content."""

    name: str
    body: any_pb2.Any
    version: str

    @classmethod
    def pack(cls, name: str, message: Message, salt: str = "") -> Resource:
        """Serialize ``message`` once; ``salt`` folds a dependency's version into ours."""
        body = any_pb2.Any()
        body.Pack(message)
        return cls(name=name, body=body, version=_digest(body.value + salt.encode()))


def type_version(resources: Iterable[Resource]) -> str:
    """The version of a set of resources: a hash of its members' names and versions."""
    pairs = sorted([(r.name, r.version) for r in resources], key=_first)
    # One update with the concatenation hashes exactly like one update per piece.
    return _digest("".join([f"{name}\0{version}\n" for name, version in pairs]).encode())


def _first(pair: tuple[str, str]) -> str:
    return pair[0]


# Versions of large immutable mappings shared by many snapshots (every sidecar's endpoints are
# one mapping): each is hashed once, not once per node.
_versions: IdentityCache[str] = IdentityCache(max_entries=32)


def layered_version(
    base: Mapping[str, Resource], layer: Mapping[str, Resource], hidden: Iterable[str] = ()
) -> str:
    """The version of a mapping made of a large shared ``base`` and a small ``layer`` of a
    node's or namespace's own (``hidden``: what it hides of ``base``), from ``base``'s
    remembered version: a thousand sidecars sharing one base then hash it once, not once
    each. A different digest than :func:`type_version` of the same members, which is fine:
    a version only has to change when the content does."""
    tail = "\0".join(sorted(hidden))
    return _digest(f"{mapping_version(base)}\n{type_version(layer.values())}\n{tail}".encode())


def mapping_version(members: Mapping[str, Resource]) -> str:
    """:func:`type_version` of a mapping's resources, remembered for large frozen mappings.

    Only large frozen mappings (:func:`tsunagi.xds.by_identity.shared`) are remembered
    across calls; small ones are cheap anyway.
    A mapping that is a shared base plus a layer says so with a ``layered_version()`` method
    (see :func:`layered_version`).
    """
    layered = getattr(members, "layered_version", None)
    if layered is not None:
        version: str = layered()
        return version
    if not shared(members):
        return type_version(members.values())
    hit = _versions.get(members)
    return hit if hit is not None else _versions.put(type_version(members.values()), members)


@dataclass(frozen=True)
class Snapshot:
    """Everything one node should have, by type URL, plus the world revision it came from.

    A snapshot and its mappings are immutable, so what is derived from them (per-type
    versions, the part an explicit subscription covers) is computed once, on first use.
    """

    resources: Mapping[str, Mapping[str, Resource]] = field(
        default_factory=lambda: MappingProxyType({})
    )
    revision: int = 0
    _views: dict[tuple[str, frozenset[str] | None], tuple[Mapping[str, Resource], str]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @classmethod
    def build(cls, by_type: Mapping[str, Iterable[Resource]], revision: int) -> Snapshot:
        frozen = {t: MappingProxyType({r.name: r for r in rs}) for t, rs in by_type.items()}
        return cls(resources=MappingProxyType(frozen), revision=revision)

    def of(self, type_url: str) -> Mapping[str, Resource]:
        """The resources of one type (empty when the type has none)."""
        return self.resources.get(type_url, _EMPTY)

    def view(
        self, type_url: str, names: frozenset[str] | None = None
    ) -> tuple[Mapping[str, Resource], str]:
        """The resources of a type a subscription to ``names`` (``None``: wildcard) covers,
        and their version; computed once per snapshot, type and subscription.

        When ``names`` covers every resource of the type, the mapping is :meth:`of` itself
        (not a copy), so callers can recognise it by identity.
        """
        key = (type_url, names)
        hit = self._views.get(key)
        if hit is not None:
            return hit
        members = self.of(type_url)
        if names is None or (len(names) >= len(members) and names.issuperset(members)):
            full = self._views.get((type_url, None))
            if full is None:
                full = self._views[(type_url, None)] = (members, mapping_version(members))
            hit = full
        else:
            part = MappingProxyType({n: members[n] for n in names if n in members})
            hit = (part, type_version(part.values()))
        self._views[key] = hit
        return hit

    def version(self, type_url: str, names: Iterable[str] | None = None) -> str:
        """The version of a type, restricted to ``names`` when the subscription is explicit."""
        if names is not None and not isinstance(names, frozenset):
            names = frozenset(names)
        return self.view(type_url, names)[1]


_EMPTY: Mapping[str, Resource] = MappingProxyType({})
