"""Istio's IST0109 (``ConflictingMeshGatewayVirtualServiceHosts``): two VirtualServices bound
to the mesh (sidecars) that name the same host, both visible in some namespace.

What happens then is Istio's, and so ours: a sidecar's HTTP routes for the host come from the
first of them only (Istio: the oldest; here: by namespace, then name), while ``tcp:`` and
``tls:`` routes are read from all of them in that order. Istio's analyzer calls that
undefined behaviour and asks for one VirtualService; ``apply`` says the same.
"""

from __future__ import annotations

from collections.abc import Iterable

from tsunagi.api import Resource, ResourceOf, VirtualServiceSpec
from tsunagi.api.hosts import fqdn
from tsunagi.mesh.gateways import intersect
from tsunagi.mesh.world import World, of_spec

ALL = "*"


def _scopes(vs: ResourceOf[VirtualServiceSpec]) -> set[str]:
    """The namespaces ``vs`` is exported to (``*``: all), as Istio's analyzer groups them."""
    export = list(vs.spec.export_to)
    if not export or ALL in export:
        return {ALL}
    return {vs.namespace if e == "." else e for e in export}


def _on_mesh(vs: ResourceOf[VirtualServiceSpec]) -> bool:
    return bool(vs.spec.hosts) and "mesh" in (vs.spec.gateways or ("mesh",))


def mesh_host_conflicts(world: World, resources: Iterable[Resource]) -> list[str]:
    """IST0109 for each VirtualService of ``resources`` that shares a host with another one
    bound to the mesh in ``world`` (the config as it will be once they are applied)."""
    every = [v for v in world.virtual_services_in_order if _on_mesh(v)]
    index: dict[tuple[str, str], list[ResourceOf[VirtualServiceSpec]]] = {}
    for v in every:
        for scope in _scopes(v):
            for h in dict.fromkeys(fqdn(h, v.namespace) for h in v.spec.hosts):
                index.setdefault((scope, h), []).append(v)
    out = []
    for vs in of_spec(resources, VirtualServiceSpec):
        conflict = _first_conflict(vs, index) if _on_mesh(vs) else None
        if conflict is not None:
            host, names = conflict
            out.append(
                f"VirtualService {vs.namespace}/{vs.name}: [IST0109] The VirtualServices "
                f"{','.join(names)} associated with mesh gateway define the same host {host} "
                "which can lead to undefined behavior (sidecars take the HTTP routes of one "
                "of them only, and tcp/tls routes from all, by namespace then name). Merge "
                "them into a single VirtualService"
            )
    return out


def _first_conflict(
    vs: ResourceOf[VirtualServiceSpec],
    index: dict[tuple[str, str], list[ResourceOf[VirtualServiceSpec]]],
) -> tuple[str, list[str]] | None:
    """The first host of ``vs`` that another mesh VirtualService shares, with all their
    names; None when there is none."""
    me = f"{vs.namespace}/{vs.name}"
    for scope in sorted(_scopes(vs)):
        for h in dict.fromkeys(fqdn(h, vs.namespace) for h in vs.spec.hosts):
            others = list(index.get((scope, h), []))
            if scope != ALL:  # Istio adds those exported everywhere whose host overlaps
                others += [
                    v
                    for (s, h2), vs2 in index.items()
                    if s == ALL and intersect(h, h2) is not None
                    for v in vs2
                ]
            names = sorted({f"{v.namespace}/{v.name}" for v in others})
            if len(names) > 1 and me in names:
                return h, names
    return None
