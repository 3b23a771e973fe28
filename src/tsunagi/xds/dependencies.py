"""Which resources of a dependent type a resource makes Envoy ask for.

After Envoy applies a Cluster of type EDS it subscribes to that cluster's
ClusterLoadAssignment; after it applies a Listener whose HttpConnectionManager loads its
routes over RDS it subscribes to that RouteConfiguration. The stream state machine uses
these references to hold back later types until Envoy has caught up (make before break).

Decoding a resource is far more expensive than anything else the state machine does, and
resources are immutable and versioned by content, so references are cached per
``(type_url, name, version)``.
"""

from __future__ import annotations

from collections.abc import Iterable
from types import MappingProxyType

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import config_source_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2,
)
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError

from tsunagi.xds.resources import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    SHORT_NAMES,
    Resource,
    Snapshot,
)

# Parent type -> the type whose names its resources reference.
DEPENDENT_TYPE = MappingProxyType({CLUSTER: ENDPOINT, LISTENER: ROUTE})

_HCM_TYPE_URL = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)


def _over_ads(source: config_source_pb2.ConfigSource) -> bool:
    # "self" on a resource that came over ADS means ADS too.
    return source.WhichOneof("config_source_specifier") in ("ads", "self")


def cluster_eds_names(body: any_pb2.Any) -> frozenset[str]:
    """The ClusterLoadAssignment name an EDS cluster subscribes to (empty for other types)."""
    cluster = cluster_pb2.Cluster()
    try:
        cluster.ParseFromString(body.value)
    except DecodeError:
        # Envoy will NACK a cluster it cannot parse; it references nothing meanwhile.
        return frozenset()
    if cluster.WhichOneof("cluster_discovery_type") != "type":
        return frozenset()
    if cluster.type != cluster_pb2.Cluster.EDS:
        return frozenset()
    if not _over_ads(cluster.eds_cluster_config.eds_config):
        # Envoy fetches it elsewhere; waiting for it on this stream would wait forever.
        return frozenset()
    return frozenset({cluster.eds_cluster_config.service_name or cluster.name})


def _hcm_route_name(typed_config: any_pb2.Any) -> str | None:
    if typed_config.type_url != _HCM_TYPE_URL:
        return None
    hcm = http_connection_manager_pb2.HttpConnectionManager()
    try:
        hcm.ParseFromString(typed_config.value)
    except DecodeError:
        return None
    if hcm.WhichOneof("route_specifier") != "rds" or not _over_ads(hcm.rds.config_source):
        return None
    return hcm.rds.route_config_name or None


def listener_route_names(body: any_pb2.Any) -> frozenset[str]:
    """The RouteConfiguration names a listener's HttpConnectionManagers load over RDS."""
    listener = listener_pb2.Listener()
    try:
        listener.ParseFromString(body.value)
    except DecodeError:
        return frozenset()
    chains = list(listener.filter_chains)
    if listener.HasField("default_filter_chain"):
        chains.append(listener.default_filter_chain)
    configs = [f.typed_config for chain in chains for f in chain.filters]
    if listener.HasField("api_listener"):
        configs.append(listener.api_listener.api_listener)
    names = (_hcm_route_name(c) for c in configs)
    return frozenset(n for n in names if n)


class DependencyCache:
    """Memoizes the names each resource references, keyed by its immutable version.

    One cache may be shared by every stream of a control plane; it is bounded by simply
    starting over when full, which is cheap because entries are recomputed on demand.
    """

    def __init__(self, max_entries: int = 100_000) -> None:
        self._max_entries = max_entries
        self._refs: dict[tuple[str, str, str], frozenset[str]] = {}

    def references(self, type_url: str, resource: Resource) -> frozenset[str]:
        """Names of ``DEPENDENT_TYPE[type_url]`` that ``resource`` makes Envoy request."""
        key = (type_url, resource.name, resource.version)
        cached = self._refs.get(key)
        if cached is not None:
            return cached
        if type_url == CLUSTER:
            refs = cluster_eds_names(resource.body)
        elif type_url == LISTENER:
            refs = listener_route_names(resource.body)
        else:
            refs = frozenset()
        if len(self._refs) >= self._max_entries:
            self._refs.clear()
        self._refs[key] = refs
        return refs

    def required(self, type_url: str, resources: Iterable[Resource]) -> frozenset[str]:
        """The union of references over ``resources`` (all of type ``type_url``)."""
        out: set[str] = set()
        for r in resources:
            out |= self.references(type_url, r)
        return frozenset(out)


def inconsistencies(snapshot: Snapshot, deps: DependencyCache | None = None) -> list[str]:
    """What ``snapshot`` references but lacks; empty when it is consistent.

    Every ClusterLoadAssignment an EDS cluster loads over ADS, and every RouteConfiguration a
    listener loads over RDS, must be in the snapshot: Envoy keeps such a cluster (listener)
    warming until it gets them, so its CDS (LDS) ACK would wait for a resource that never
    comes. Resources nothing references are allowed (Envoy never asks for them).

    This decodes every cluster and listener not yet in ``deps``, so it is for tests and
    diagnostics, not for every push.
    """
    deps = deps if deps is not None else DependencyCache()
    problems: list[str] = []
    for parent, child in DEPENDENT_TYPE.items():
        present = snapshot.of(child)
        for name, res in sorted(snapshot.of(parent).items()):
            for ref in sorted(deps.references(parent, res) - present.keys()):
                problems.append(
                    f"{SHORT_NAMES[parent]} {name!r} needs {SHORT_NAMES[child]} {ref!r}, "
                    "which the snapshot lacks"
                )
    return problems
