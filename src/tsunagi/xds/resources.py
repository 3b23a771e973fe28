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

CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"

# Make before break: a cluster exists before an endpoint set names it, endpoints before a
# listener can send to them, a listener before the routes it loads.
PUSH_ORDER: tuple[str, ...] = (CLUSTER, ENDPOINT, LISTENER, ROUTE)

# Types whose subscription is a wildcard ("everything for this node") in Envoy's ADS.
WILDCARD_TYPES = frozenset({CLUSTER, LISTENER})

SHORT_NAMES = {CLUSTER: "CDS", ENDPOINT: "EDS", LISTENER: "LDS", ROUTE: "RDS", SECRET: "SDS"}


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
    h = hashlib.blake2b(digest_size=8)
    for r in sorted(resources, key=lambda r: r.name):
        h.update(r.name.encode())
        h.update(b"\0")
        h.update(r.version.encode())
        h.update(b"\n")
    return h.hexdigest()


@dataclass(frozen=True)
class Snapshot:
    """Everything one node should have, by type URL, plus the world revision it came from."""

    resources: Mapping[str, Mapping[str, Resource]] = field(
        default_factory=lambda: MappingProxyType({})
    )
    revision: int = 0

    @classmethod
    def build(cls, by_type: Mapping[str, Iterable[Resource]], revision: int) -> Snapshot:
        frozen = {t: MappingProxyType({r.name: r for r in rs}) for t, rs in by_type.items()}
        return cls(resources=MappingProxyType(frozen), revision=revision)

    def of(self, type_url: str) -> Mapping[str, Resource]:
        """The resources of one type (empty when the type has none)."""
        return self.resources.get(type_url, MappingProxyType({}))

    def version(self, type_url: str, names: Iterable[str] | None = None) -> str:
        """The version of a type, restricted to ``names`` when the subscription is explicit."""
        members = self.of(type_url)
        if names is None:
            return type_version(members.values())
        return type_version(members[n] for n in names if n in members)
