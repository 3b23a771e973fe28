"""Checks across resources that no single document can make: things that will fail at runtime
even though each resource is valid on its own."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tsunagi.api import Resource, fqdn
from tsunagi.mesh.world import World


def undefined_subsets(world: World, resources: Iterable[Resource]) -> list[str]:
    """Warnings for routes in ``resources`` that name a subset no DestinationRule defines."""
    warnings = []
    for vs in resources:
        if vs.kind != "VirtualService":
            continue
        spec: Any = vs.spec
        for i, http in enumerate(spec.http or ()):
            for j, dest in enumerate(http.route or ()):
                subset = dest.destination.subset
                if not subset:
                    continue
                host = fqdn(dest.destination.host, vs.namespace)
                if world.subset_labels(host, subset) is None:
                    dr = world.destination_rules.get(host)
                    why = (
                        f"DestinationRule {dr.namespace}/{dr.name} has no subset {subset!r}"
                        if dr is not None
                        else f"no DestinationRule defines subsets for {host}"
                    )
                    warnings.append(
                        f"VirtualService {vs.namespace}/{vs.name}: "
                        f"spec.http[{i}].route[{j}].destination.subset: {why}; "
                        "requests routed there will get 503 until it exists"
                    )
    return warnings
