"""Endpoints: a ClusterLoadAssignment per outbound cluster, filtered by subset labels."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tsunagi.mesh import Endpoint
from tsunagi.proxy_contract import locality_fields
from tsunagi.xds.translate.mesh_tls import endpoint_metadata
from tsunagi.xds.translate.names import outbound_cluster


def _matches(ep: Endpoint, labels: Mapping[str, str]) -> bool:
    return all(ep.labels.get(k) == v for k, v in labels.items())


def select(endpoints: Sequence[Endpoint], labels: Mapping[str, str]) -> list[Endpoint]:
    """The endpoints a subset with ``labels`` contains."""
    return [ep for ep in endpoints if _matches(ep, labels)]


def by_locality(endpoints: Sequence[Endpoint]) -> list[tuple[str, list[Endpoint]]]:
    """Endpoints grouped by locality, in a stable order so equal input hashes equal (the
    order of :func:`load_assignment`'s groups)."""
    groups: dict[str, list[Endpoint]] = {}
    for ep in sorted(endpoints, key=lambda e: (e.locality, e.address, e.port)):
        groups.setdefault(ep.locality, []).append(ep)
    return list(groups.items())


def _tls_metadata(ep: Endpoint) -> dict[str, Any]:
    metadata = endpoint_metadata(ep)
    return {"metadata": metadata} if metadata is not None else {}


def load_assignment(name: str, endpoints: list[Endpoint]) -> dict[str, Any]:
    """Group endpoints by locality, in a stable order so equal input hashes equal. An
    endpoint that is not a sidecar's is marked for plain text under auto mTLS
    (:func:`.mesh_tls.endpoint_metadata`)."""
    return {
        "cluster_name": name,
        "endpoints": [
            {
                "locality": locality_fields(loc),
                "lb_endpoints": [
                    {
                        "endpoint": {
                            "address": {
                                "socket_address": {"address": ep.address, "port_value": ep.port}
                            }
                        },
                        "health_status": "HEALTHY" if ep.healthy else "UNHEALTHY",
                        **({"load_balancing_weight": ep.weight} if ep.weight else {}),
                        **_tls_metadata(ep),
                    }
                    for ep in eps
                ],
            }
            for loc, eps in by_locality(endpoints)
        ],
    }


Subsets = Sequence[tuple[str, Sequence[tuple[str, str]]]]


def service_load_assignments(
    host: str, port: int, endpoints: Sequence[Endpoint], subsets: Subsets
) -> list[dict[str, Any]]:
    """The assignment of one service port, and of each of its subsets."""
    out = [load_assignment(outbound_cluster(host, port), list(endpoints))]
    for subset, labels in subsets:
        chosen = select(endpoints, dict(labels))
        out.append(load_assignment(outbound_cluster(host, port, subset), chosen))
    return out
