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
from typing import Any, TypeVar, cast

from pydantic import BaseModel

from tsunagi import proxy_contract as pc
from tsunagi.api import (
    DestinationRuleSpec,
    Resource,
    ResourceOf,
    ServiceEntrySpec,
    VirtualServiceSpec,
    fqdn,
)
from tsunagi.registry.instances import Instance

S = TypeVar("S", bound=BaseModel)


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


@dataclass(frozen=True)
class Node:
    """What the control plane knows about one proxy, from its xDS node and metadata."""

    id: str
    namespace: str = "default"
    service: str = ""
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    outbound_port: int = pc.DEFAULT_OUTBOUND_PORT
    inbound: Mapping[int, tuple[int, int]] = field(default_factory=lambda: MappingProxyType({}))
    """service port → (inbound listener port, app port)."""
    kind: str = pc.DEFAULT_KIND
    locality: str = ""
    """``region/zone/subzone`` of the proxy (``tsunagi run --locality``); empty if unknown."""

    @classmethod
    def from_metadata(cls, node_id: str, meta: Mapping[str, Any]) -> Node:
        """The node as its agent described it in the bootstrap (``tsunagi.proxy_contract``)."""
        inbound = {
            int(p): (int(v[pc.META_INBOUND_LISTEN]), int(v[pc.META_INBOUND_APP]))
            for p, v in (meta.get(pc.META_INBOUND) or {}).items()
        }
        return cls(
            id=node_id,
            namespace=str(meta.get(pc.META_NAMESPACE) or "default"),
            service=str(meta.get(pc.META_SERVICE) or ""),
            labels=MappingProxyType(
                {str(k): str(v) for k, v in (meta.get(pc.META_LABELS) or {}).items()}
            ),
            outbound_port=int(meta.get(pc.META_OUTBOUND_PORT) or pc.DEFAULT_OUTBOUND_PORT),
            inbound=MappingProxyType(inbound),
            kind=str(meta.get(pc.META_KIND) or pc.DEFAULT_KIND),
            locality=str(meta.get(pc.META_LOCALITY) or ""),
        )


@dataclass(frozen=True, order=True)
class ClientScope:
    """What a sidecar's outbound config (clusters, endpoints, routes) depends on besides the
    World. Sidecars with equal scopes share one outbound config, so a scope holds only what
    some rule actually reads: the namespace always; labels only those that a
    ``sourceLabels`` match names; the locality only when some endpoints are load balanced by
    locality. A mesh that uses neither pays one config per namespace, as before."""

    namespace: str
    labels: tuple[tuple[str, str], ...] = ()
    locality: str = ""


def of_spec(resources: Iterable[Resource], model: type[S]) -> list[ResourceOf[S]]:
    """The resources whose spec is a ``model``, typed as such (in their given order)."""
    # Annotated so that mypy checks that Resource fits the protocol.
    matching: list[ResourceOf[BaseModel]] = [r for r in resources if type(r.spec) is model]
    return cast("list[ResourceOf[S]]", matching)  # sound: each spec's type was just checked


def _by_age(resources: list[ResourceOf[S]]) -> list[ResourceOf[S]]:
    return sorted(resources, key=lambda r: (r.namespace, r.name))


@dataclass(frozen=True)
class World:
    """Config plus endpoints at one revision. Build with :meth:`build`; never mutate."""

    revision: int
    services: Mapping[str, Service]
    endpoints: Mapping[tuple[str, int], tuple[Endpoint, ...]]
    virtual_services: Mapping[str, tuple[ResourceOf[VirtualServiceSpec], ...]]
    """host → the VirtualServices naming it, in (namespace, name) order."""
    destination_rules: Mapping[str, ResourceOf[DestinationRuleSpec]]
    """host → the DestinationRule that applies to it."""
    service_entries: Mapping[str, tuple[ResourceOf[ServiceEntrySpec], ...]]
    """host → the ServiceEntries that declare it, in the order given."""
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
        se_index: dict[str, list[ResourceOf[ServiceEntrySpec]]] = {}
        for se in of_spec(resources, ServiceEntrySpec):
            spec = se.spec
            dns = spec.resolution in ("DNS", "DNS_ROUND_ROBIN")
            for h in spec.hosts:
                host = fqdn(h, se.namespace)
                declared = se_index.setdefault(host, [])
                if not declared or declared[-1] is not se:  # a host may be listed twice
                    declared.append(se)
                namespaces.setdefault(host, se.namespace)
                if dns:
                    resolutions[host] = spec.resolution
                for p in spec.ports:
                    ports.setdefault(host, set()).add(p.number)
                    if dns and not spec.endpoints and "*" not in host:
                        # No endpoints: Envoy resolves the host name itself.
                        endpoints.setdefault((host, p.number), []).append(
                            Endpoint(host, p.target_port or p.number, {})
                        )
                    for ep in spec.endpoints:
                        named = ep.ports.get(p.name) if p.name is not None else None
                        target = named or p.target_port or p.number
                        endpoints.setdefault((host, p.number), []).append(
                            Endpoint(ep.address, target, dict(ep.labels), ep.locality or "")
                        )
        services = {
            h: Service(h, namespaces[h], tuple(sorted(ps)), resolutions.get(h, ""))
            for h, ps in sorted(ports.items())
        }
        vs_index: dict[str, list[ResourceOf[VirtualServiceSpec]]] = {}
        for vs in _by_age(of_spec(resources, VirtualServiceSpec)):
            for h in vs.spec.hosts:
                vs_index.setdefault(fqdn(h, vs.namespace), []).append(vs)
        dr_index: dict[str, ResourceOf[DestinationRuleSpec]] = {}
        for dr in _by_age(of_spec(resources, DestinationRuleSpec)):
            host = fqdn(dr.spec.host, dr.namespace)
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
            service_entries=MappingProxyType({k: tuple(v) for k, v in se_index.items()}),
            resources=resources,
        )

    def subset_labels(self, host: str, subset: str) -> Mapping[str, str] | None:
        """The labels a DestinationRule gives ``subset`` of ``host``; None if undefined."""
        dr = self.destination_rules.get(host)
        if dr is None:
            return None
        for s in dr.spec.subsets:
            if s.name == subset:
                return dict(s.labels)
        return None

    def subset_definitions(self, host: str) -> tuple[tuple[str, tuple[tuple[str, str], ...]], ...]:
        """``(name, sorted labels)`` of each subset of ``host``: hashable, for memo keys."""
        dr = self.destination_rules.get(host)
        if dr is None:
            return ()
        return tuple((s.name, tuple(sorted(s.labels.items()))) for s in dr.spec.subsets)

    @cached_property
    def source_label_keys(self) -> frozenset[str]:
        """Label keys that some VirtualService's ``match.sourceLabels`` names."""
        return frozenset(
            key
            for vs in of_spec(self.resources, VirtualServiceSpec)
            for http in vs.spec.http
            for m in http.match
            for key in (m.source_labels or {})
        )

    @cached_property
    def locality_aware(self) -> bool:
        """Whether some cluster's endpoints depend on the client's locality."""
        return False

    def scope_of(self, node: Node) -> ClientScope:
        """The part of ``node`` its outbound config depends on, in this World."""
        keys = self.source_label_keys
        labels = tuple(sorted((k, v) for k, v in node.labels.items() if k in keys))
        return ClientScope(node.namespace, labels, node.locality if self.locality_aware else "")

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
