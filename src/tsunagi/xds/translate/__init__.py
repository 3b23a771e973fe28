"""Pure translation from the mesh World to Envoy resources for one node.

No sockets, clocks or globals: every input is an argument. What depends only on the World
(clusters, endpoints) and on the client's namespace (routes) is separated from what depends
on the node itself (inbound listeners), so callers can compute the shared parts once.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from tsunagi.mesh import Node, World
from tsunagi.xds import resources as rs
from tsunagi.xds.resources import Resource, Snapshot
from tsunagi.xds.translate.clusters import inbound_clusters, outbound_clusters
from tsunagi.xds.translate.endpoints import outbound_load_assignments
from tsunagi.xds.translate.listeners import inbound_listeners, outbound_listener
from tsunagi.xds.translate.protos import (
    Cluster,
    ClusterLoadAssignment,
    Listener,
    RouteConfiguration,
    build,
)
from tsunagi.xds.translate.routes import outbound_route_configuration

__all__ = ["Local", "Outbound", "assemble", "translate", "translate_local", "translate_outbound"]


@dataclass(frozen=True)
class Outbound:
    """The parts of a sidecar's config shared by every sidecar of a namespace."""

    clusters: tuple[Resource, ...]
    endpoints: tuple[Resource, ...]
    routes: tuple[Resource, ...]


def translate_outbound(world: World, namespace: str) -> Outbound:
    """Clusters, endpoints and outbound routes as seen from ``namespace``."""
    clusters = {
        c["name"]: Resource.pack(c["name"], build(Cluster, c)) for c in outbound_clusters(world)
    }
    endpoints = []
    for cla in outbound_load_assignments(world):
        name = cla["cluster_name"]
        # Fold the cluster's version in: when a cluster changes, Envoy needs its endpoints
        # again to finish warming, and an unchanged version would never be re-sent.
        salt = clusters[name].version if name in clusters else ""
        endpoints.append(Resource.pack(name, build(ClusterLoadAssignment, cla), salt))
    rc = outbound_route_configuration(world, namespace)
    route = Resource.pack(rc["name"], build(RouteConfiguration, rc))
    return Outbound(tuple(clusters.values()), tuple(endpoints), (route,))


@dataclass(frozen=True)
class Local:
    """The parts of a sidecar's config that depend only on the node itself."""

    clusters: tuple[Resource, ...]
    listeners: tuple[Resource, ...]


def translate_local(node: Node) -> Local:
    """The node's outbound listener, inbound listeners and the clusters for its app."""
    listeners: Iterable[dict[str, Any]] = [outbound_listener(node), *inbound_listeners(node)]
    return Local(
        clusters=tuple(Resource.pack(c["name"], build(Cluster, c)) for c in inbound_clusters(node)),
        listeners=tuple(Resource.pack(str(x["name"]), build(Listener, x)) for x in listeners),
    )


def assemble(outbound: Outbound, local: Local, revision: int) -> Snapshot:
    """One node's snapshot from its shared and local parts."""
    return Snapshot.build(
        {
            rs.CLUSTER: [*outbound.clusters, *local.clusters],
            rs.ENDPOINT: outbound.endpoints,
            rs.LISTENER: local.listeners,
            rs.ROUTE: outbound.routes,
        },
        revision,
    )


def translate(world: World, node: Node) -> Snapshot:
    """Everything ``node`` should run, given ``world``."""
    return assemble(
        translate_outbound(world, node.namespace), translate_local(node), world.revision
    )
