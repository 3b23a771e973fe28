"""The World: one immutable snapshot of applied config and live endpoints, with indexes.

Everything translation needs is here, already resolved: full host names, the services that
exist, which VirtualService owns a host, which DestinationRule applies to it. Building a World
does no I/O; the control plane hands it the parsed resources and the registered instances.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType
from typing import Any

from tsunagi.api import Resource, fqdn
from tsunagi.registry.instances import Instance


@dataclass(frozen=True)
class Endpoint:
    """One address that serves a service port."""

    address: str
    port: int
    labels: Mapping[str, str]
    locality: str = ""
    healthy: bool = True


@dataclass(frozen=True)
class Service:
    """A host the mesh knows how to reach, with its ports (from instances or ServiceEntries)."""

    hostname: str
    namespace: str
    ports: tuple[int, ...]
    resolution: str = ""
    """``DNS`` or ``DNS_ROUND_ROBIN`` for ServiceEntries whose addresses are names that Envoy
    resolves itself; empty when the control plane knows the endpoint addresses."""

    @property
    def short_name(self) -> str:
        return self.hostname.split(".", 1)[0]


@dataclass(frozen=True)
class Node:
    """What the control plane knows about one proxy, from its xDS node and metadata."""

    id: str
    namespace: str = "default"
    service: str = ""
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    outbound_port: int = 15001
    inbound: Mapping[int, tuple[int, int]] = field(default_factory=lambda: MappingProxyType({}))
    """service port → (inbound listener port, app port)."""
    kind: str = "sidecar"

    @classmethod
    def from_metadata(cls, node_id: str, meta: Mapping[str, Any]) -> Node:
        inbound = {
            int(p): (int(v["listen"]), int(v["app"]))
            for p, v in (meta.get("inbound") or {}).items()
        }
        return cls(
            id=node_id,
            namespace=str(meta.get("namespace") or "default"),
            service=str(meta.get("service") or ""),
            labels=MappingProxyType(
                {str(k): str(v) for k, v in (meta.get("labels") or {}).items()}
            ),
            outbound_port=int(meta.get("outbound_port") or 15001),
            inbound=MappingProxyType(inbound),
            kind=str(meta.get("kind") or "sidecar"),
        )


def _by_age(resources: Iterable[Resource]) -> list[Resource]:
    return sorted(resources, key=lambda r: (r.namespace, r.name))


@dataclass(frozen=True)
class World:
    """Config plus endpoints at one revision. Build with :meth:`build`; never mutate."""

    revision: int
    services: Mapping[str, Service]
    endpoints: Mapping[tuple[str, int], tuple[Endpoint, ...]]
    virtual_services: Mapping[str, tuple[Resource, ...]]
    destination_rules: Mapping[str, Resource]
    resources: tuple[Resource, ...]

    @classmethod
    def build(
        cls, revision: int, resources: Iterable[Resource], instances: Iterable[Instance]
    ) -> World:
        resources = tuple(resources)
        ports: dict[str, set[int]] = {}
        namespaces: dict[str, str] = {}
        endpoints: dict[tuple[str, int], list[Endpoint]] = {}
        for inst in instances:
            host = fqdn(inst.service, inst.namespace)
            ports.setdefault(host, set()).add(inst.port)
            namespaces[host] = inst.namespace
            endpoints.setdefault((host, inst.port), []).append(
                Endpoint(inst.address, inst.target_port, inst.labels, inst.locality, inst.healthy)
            )
        resolutions: dict[str, str] = {}
        for se in (r for r in resources if r.kind == "ServiceEntry"):
            spec: Any = se.spec
            dns = spec.resolution in ("DNS", "DNS_ROUND_ROBIN")
            for h in spec.hosts:
                host = fqdn(h, se.namespace)
                namespaces.setdefault(host, se.namespace)
                if dns:
                    resolutions[host] = spec.resolution
                for p in spec.ports or ():
                    ports.setdefault(host, set()).add(p.number)
                    if dns and not spec.endpoints and "*" not in host:
                        # No endpoints: Envoy resolves the host name itself.
                        endpoints.setdefault((host, p.number), []).append(
                            Endpoint(host, p.target_port or p.number, {})
                        )
                    for ep in spec.endpoints or ():
                        target = (ep.ports or {}).get(p.name) or p.target_port or p.number
                        endpoints.setdefault((host, p.number), []).append(
                            Endpoint(
                                ep.address, int(target), dict(ep.labels or {}), ep.locality or ""
                            )
                        )
        services = {
            h: Service(h, namespaces[h], tuple(sorted(ps)), resolutions.get(h, ""))
            for h, ps in sorted(ports.items())
        }
        vs_index: dict[str, list[Resource]] = {}
        for vs in _by_age(r for r in resources if r.kind == "VirtualService"):
            for h in vs.spec.hosts:  # type: ignore[attr-defined]
                vs_index.setdefault(fqdn(h, vs.namespace), []).append(vs)
        dr_index: dict[str, Resource] = {}
        for dr in _by_age(r for r in resources if r.kind == "DestinationRule"):
            host = fqdn(dr.spec.host, dr.namespace)  # type: ignore[attr-defined]
            current = dr_index.get(host)
            # Istio looks in the service's own namespace before others: a rule there wins
            # over one elsewhere that names the same host.
            if current is None or (dr.namespace == namespaces.get(host) != current.namespace):
                dr_index[host] = dr
        return cls(
            revision=revision,
            services=MappingProxyType(services),
            endpoints=MappingProxyType({k: tuple(v) for k, v in endpoints.items()}),
            virtual_services=MappingProxyType({k: tuple(v) for k, v in vs_index.items()}),
            destination_rules=MappingProxyType(dr_index),
            resources=resources,
        )

    def subset_labels(self, host: str, subset: str) -> Mapping[str, str] | None:
        """The labels a DestinationRule gives ``subset`` of ``host``; None if undefined."""
        dr = self.destination_rules.get(host)
        if dr is None:
            return None
        for s in dr.spec.subsets or ():  # type: ignore[attr-defined]
            if s.name == subset:
                return dict(s.labels or {})
        return None

    def subset_definitions(self, host: str) -> tuple[tuple[str, tuple[tuple[str, str], ...]], ...]:
        """``(name, sorted labels)`` of each subset of ``host``: hashable, for memo keys."""
        dr = self.destination_rules.get(host)
        if dr is None:
            return ()
        return tuple(
            (s.name, tuple(sorted((s.labels or {}).items())))
            for s in dr.spec.subsets or ()  # type: ignore[attr-defined]
        )

    @cached_property
    def routing_fingerprint(self) -> str:
        """A digest of everything outbound routes depend on: services, their ports, and the
        routing resources. Endpoints are not in it, so an endpoint change keeps it."""
        h = hashlib.blake2b(digest_size=16)
        for svc in self.services.values():
            h.update(f"{svc.hostname} {svc.namespace} {svc.ports}\n".encode())
        for r in sorted(self.resources, key=lambda r: r.key):
            if r.kind in ("VirtualService", "DestinationRule", "ServiceEntry", "Gateway"):
                h.update(json.dumps([r.key, r.document], sort_keys=True, default=str).encode())
        return h.hexdigest()

    def subsets(self, host: str) -> list[str]:
        dr = self.destination_rules.get(host)
        if dr is None:
            return []
        return [s.name for s in dr.spec.subsets or ()]  # type: ignore[attr-defined]
