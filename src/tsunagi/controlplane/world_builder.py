"""Builds the mesh World from the store, re-parsing only documents that changed."""

from __future__ import annotations

from tsunagi.api import Resource, parse_document
from tsunagi.mesh import World
from tsunagi.registry import KIND as INSTANCE_KIND
from tsunagi.registry import Instance
from tsunagi.store import Contents, Key


class WorldBuilder:
    """Keeps parsed resources between builds: a burst of one change re-parses one document."""

    def __init__(self) -> None:
        self._parsed: dict[Key, tuple[int, Resource | Instance]] = {}

    def build(self, contents: Contents) -> World:
        resources: list[Resource] = []
        instances: list[Instance] = []
        fresh: dict[Key, tuple[int, Resource | Instance]] = {}
        for key, record in contents.records.items():
            cached = self._parsed.get(key)
            if cached is None or cached[0] != record.revision:
                if key[0] == INSTANCE_KIND:
                    cached = (record.revision, Instance.from_document(record.document))
                else:
                    origin = f"store:{key[0]}/{key[1]}/{key[2]}"
                    cached = (record.revision, parse_document(dict(record.document), origin, 1))
            fresh[key] = cached
            item = cached[1]
            if isinstance(item, Instance):
                instances.append(item)
            else:
                resources.append(item)
        self._parsed = fresh
        return World.build(contents.revision, resources, instances)
