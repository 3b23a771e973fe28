"""Builds the mesh World from the store, re-parsing only documents that changed."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from tsunagi.api import Resource, parse_document
from tsunagi.mesh import World
from tsunagi.mesh.outbound_policy import ALLOW_ANY, Mode
from tsunagi.mesh.security import MeshSecurity
from tsunagi.mesh.telemetry import MeshTelemetry
from tsunagi.mesh.world import InstanceEndpoints
from tsunagi.registry import KIND as INSTANCE_KIND
from tsunagi.registry import Instance
from tsunagi.store import Contents, Key, Record


def _parse(key: Key, record: Record) -> Resource | Instance:
    if key[0] == INSTANCE_KIND:
        return Instance.from_document(record.document)
    return parse_document(dict(record.document), f"store:{key[0]}/{key[1]}/{key[2]}", 1)


class WorldBuilder:
    """Keeps parsed resources between builds: a burst of one change re-parses one document.

    A stored document that no longer parses (say, stored by an older version with other
    rules) must not take the mesh down: the World keeps its last parsed revision, or leaves
    it out if there is none, and :attr:`errors` says why.
    """

    def __init__(
        self,
        mesh_telemetry: MeshTelemetry | None = None,
        outbound_policy: Mode = ALLOW_ANY,
        mesh_security: MeshSecurity | None = None,
    ) -> None:
        self.mesh_telemetry = mesh_telemetry or MeshTelemetry()
        self.outbound_policy = outbound_policy
        """``tsunagi up --outbound-policy`` (see :mod:`tsunagi.mesh.outbound_policy`)."""
        self.mesh_security = mesh_security or MeshSecurity()
        """``tsunagi up --trust-domain`` and ``--root-namespace``."""
        self.jwks: Mapping[str, str] = MappingProxyType({})
        """JWK sets fetched for RequestAuthentications (:mod:`tsunagi.controlplane.jwks`
        replaces the whole mapping; the next build reads it)."""
        self._parsed: dict[Key, tuple[int, Resource | Instance]] = {}
        # Endpoints of the parsed Instance objects above: an unchanged revision keeps its
        # object, so its endpoint too.
        self._endpoints = InstanceEndpoints()
        self.errors: Mapping[Key, str] = MappingProxyType({})
        """Stored documents that did not parse at the last build, with the reason."""

    def build(self, contents: Contents) -> World:
        resources: list[Resource] = []
        instances: list[Instance] = []
        fresh: dict[Key, tuple[int, Resource | Instance]] = {}
        errors: dict[Key, str] = {}
        for key, record in contents.records.items():
            cached = self._parsed.get(key)
            if cached is None or cached[0] != record.revision:
                try:
                    cached = (record.revision, _parse(key, record))
                except Exception as e:  # one bad record must not stop the others
                    kept = "the last good revision is kept" if cached else "left out"
                    errors[key] = f"stored document does not parse ({kept}): {e}"
                    if cached is None:
                        continue
            fresh[key] = cached
            item = cached[1]
            if isinstance(item, Instance):
                if item.serves:  # a gateway without --port is no service's endpoint
                    instances.append(item)
            else:
                resources.append(item)
        self._parsed = fresh
        self.errors = MappingProxyType(errors)
        return World.build(
            contents.revision,
            resources,
            instances,
            self.mesh_telemetry,
            self.outbound_policy,
            self.mesh_security,
            self.jwks,
            self._endpoints,
        )
