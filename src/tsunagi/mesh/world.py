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

from tsunagi import protocols
from tsunagi import proxy_contract as pc
from tsunagi.api import (
    AuthorizationPolicySpec,
    DestinationRuleSpec,
    GatewaySpec,
    LoadBalancerSettings,
    Port,
    PortTrafficPolicy,
    RequestAuthenticationSpec,
    Resource,
    ResourceOf,
    ServiceEntrySpec,
    SidecarSpec,
    TelemetrySpec,
    TrafficPolicy,
    VirtualServiceSpec,
    WorkloadEntrySpec,
    fqdn,
)
from tsunagi.mesh import (
    authorization,
    ext_authz,
    peer_authentication,
    request_authentication,
    selectors,
    virtual_ips,
)
from tsunagi.mesh import outbound_policy as op
from tsunagi.mesh import telemetry as tm
from tsunagi.mesh.credentials import Credential, credentials_of
from tsunagi.mesh.peer_authentication import PeerAuthentications
from tsunagi.mesh.security import MeshSecurity, WorkloadSecurity
from tsunagi.mesh.telemetry_policy import TelemetryPolicies
from tsunagi.mesh.visibility import (
    DestinationRuleLookup,
    exported_to,
    host_matches,
    index_rules,
    subset_definitions,
)
from tsunagi.registry.instances import Instance

S = TypeVar("S", bound=BaseModel)

DEFAULT_GATEWAY_ADDRESS = "127.0.0.1"
"""Where a gateway listens when its agent names no address (``tsunagi gateway``'s default)."""
TLS_MODE_LABEL = "security.istio.io/tlsMode"
"""The label that says a WorkloadEntry runs a sidecar taking mesh mTLS (Istio's)."""
TLS_MODE_ISTIO = "istio"
"""The value of :data:`TLS_MODE_LABEL` (and of an endpoint's ``tlsMode``) for mesh mTLS."""


@dataclass(frozen=True)
class Endpoint:
    """One address that serves a service port."""

    address: str
    port: int
    labels: Mapping[str, str]
    locality: str = ""
    healthy: bool = True
    registered: bool = False
    """A registered instance (its sidecar is in the mesh), not a ServiceEntry endpoint."""
    weight: int = 0
    """ServiceEntry endpoint ``weight`` (Envoy's load balancing weight); 0: unweighted."""
    service_account: str = ""
    """The service account its certificate names (a registered instance's, or a
    WorkloadEntry's ``serviceAccount``); empty when unknown."""
    namespace: str = ""
    """The namespace of the workload behind it (its identity's); empty when unknown."""
    tls_mode: str = ""
    """Istio's ``security.istio.io/tlsMode``: :data:`TLS_MODE_ISTIO` when it accepts mesh
    mTLS (a sidecar its PeerAuthentication does not DISABLE on this port, or a
    WorkloadEntry so labelled), so clients originate it (auto mTLS); empty otherwise."""

    @classmethod
    def of_instance(cls, inst: Instance, mtls: bool = True) -> Endpoint:
        """A registered instance's sidecar, as an endpoint of its service port; ``mtls``:
        its PeerAuthentication leaves mTLS on for the port. A gateway's listeners are its
        Gateways' servers, which take no mesh mTLS (as Istio's gateways carry no tlsMode)."""
        sidecar = mtls and inst.kind != pc.GATEWAY_KIND
        return cls(
            inst.address,
            inst.target_port,
            inst.labels,
            inst.locality,
            inst.healthy,
            registered=True,
            service_account=inst.account,
            namespace=inst.namespace,
            tls_mode=TLS_MODE_ISTIO if sidecar else "",
        )

    @classmethod
    def of_workload_entry(
        cls, entry: WorkloadEntrySpec, port: Port, namespace: str = ""
    ) -> Endpoint:
        """A WorkloadEntry (or a ServiceEntry's ``endpoints[]`` item, the same shape) in
        ``namespace`` as an endpoint of the ServiceEntry ``port`` (see
        :func:`endpoint_port`)."""
        labels = dict(entry.labels)
        return cls(
            entry.address,
            endpoint_port(port, entry.ports),
            labels,
            entry.locality or "",
            weight=entry.weight or 0,
            service_account=entry.service_account or "",
            namespace=namespace,
            tls_mode=TLS_MODE_ISTIO if labels.get(TLS_MODE_LABEL) == TLS_MODE_ISTIO else "",
        )


@dataclass(frozen=True)
class Service:
    """A host the mesh knows how to reach, with its ports (from instances or ServiceEntries)."""

    hostname: str
    namespace: str
    ports: tuple[int, ...]
    resolution: str = ""
    """``DNS`` or ``DNS_ROUND_ROBIN`` for ServiceEntries whose addresses are names that Envoy
    resolves itself; empty when the control plane knows the endpoint addresses."""
    port_protocols: tuple[tuple[int, str], ...] = ()
    """``(port, protocol)`` for ports whose protocol is not HTTP (see :meth:`protocol`)."""
    addresses: tuple[str, ...] = ()
    """ServiceEntry ``addresses`` (IPs or CIDR ranges): requests whose authority is one of
    them go to this service."""
    passthrough: bool = False
    """ServiceEntry ``resolution: NONE`` without endpoints: each request goes where its
    authority resolves (Istio's original destination), see ``xds/translate/passthrough.py``."""
    subject_alt_names: tuple[str, ...] = ()
    """ServiceEntry ``subjectAltNames``: what TLS origination checks the server's certificate
    against when the DestinationRule's ``tls`` names none (Istio's rule)."""
    mesh_external: bool = False
    """Declared only by ServiceEntries, none of them ``location: MESH_INTERNAL``: never
    auto mTLS, whatever its endpoints' labels say (Istio's rule)."""
    service_accounts: tuple[tuple[str, str], ...] = ()
    """``(namespace, service account)`` of its endpoints that name one, sorted: the
    identities its servers' certificates may carry (a new one changes its clusters, as
    in Istio; other endpoint changes do not)."""

    def protocol(self, port: int) -> str:
        """The protocol of ``port`` (:mod:`tsunagi.protocols` names): HTTP unless declared."""
        return next((p for n, p in self.port_protocols if n == port), protocols.DEFAULT)


@dataclass(frozen=True, order=True)
class Upstream:
    """A local TCP listener of a sidecar that proxies to one service port."""

    host: str
    """The service's full host name (a short name is relative to the proxy's namespace)."""
    port: int
    listen: int
    """The loopback port the app connects to."""


@dataclass(frozen=True)
class Intercept:
    """``tsunagi run --intercept``: the proxy's network namespace sends the app's
    connections and DNS queries to it (``pc.META_INTERCEPT``)."""

    capture_port: int
    """The outbound capture listener (Istio's 15001 role), where iptables redirects the
    app's outbound TCP."""
    dns_port: int
    """The UDP DNS listener (Istio's 15053 role), where iptables redirects the app's queries."""
    resolvers: tuple[str, ...] = ()
    """``IP`` or ``IP:PORT`` of the host's own resolvers, for names the mesh does not know
    (none: those are answered NXDOMAIN)."""


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
    inbound_protocols: Mapping[int, str] = field(default_factory=lambda: MappingProxyType({}))
    """service port → its protocol (``tsunagi run --port 9080/grpc``); HTTP when absent."""
    metrics_log: str = ""
    """The FIFO its agent reads metric lines from (``pc.META_METRICS_LOG``); empty: none."""
    upstreams: tuple[Upstream, ...] = ()
    """``tsunagi run --upstream``: local TCP listeners to service ports (``pc.META_UPSTREAMS``)."""
    gateway_address: str = ""
    """Where a gateway's listeners bind (``pc.META_GATEWAY_ADDRESS``); empty for a sidecar."""
    inbound_address: str = pc.DEFAULT_INBOUND_ADDRESS
    """Where a sidecar's inbound listeners bind (``pc.META_INBOUND_ADDRESS``, ``tsunagi run
    --address``): its registered address, reachable from other hosts."""
    gateway_ports: Mapping[int, int] = field(default_factory=lambda: MappingProxyType({}))
    """A gateway's service port → the port it listens on for it (``pc.META_GATEWAY_PORTS``)."""
    service_account: str = ""
    """The service account it claims (``pc.META_SERVICE_ACCOUNT``); empty from an older agent."""
    verified: bool = False
    """Whether it may receive private keys: its xDS stream presented a client certificate
    whose SPIFFE ID names this namespace (and service account, when claimed) and that
    carries the CA's gateway mark, written only for the admin or a ``--gateway`` token
    (:mod:`tsunagi.xds.peer_identity`, :mod:`tsunagi.gateway_mark`). Set by the xDS server,
    never read from the node's own metadata; only a verified gateway gets its Gateways'
    Secrets."""
    intercept: Intercept | None = None
    """Set for a sidecar whose traffic is captured (``tsunagi run --intercept``); None for
    the others, whose config does not change."""
    proven: bool = False
    """Whether its xDS stream presented a client certificate that proved its namespace (and
    service account, when claimed): set by the xDS server. Enough for a sidecar to receive
    the Secrets of its namespace that a DestinationRule with a ``workloadSelector`` that
    selects it names (Istio's rule: a proxy may read its own namespace's Secrets)."""

    @property
    def is_gateway(self) -> bool:
        """A standalone gateway (``tsunagi gateway``), not a sidecar beside an app."""
        return self.kind == pc.GATEWAY_KIND

    def inbound_protocol(self, port: int) -> str:
        """The protocol of inbound service ``port`` (:mod:`tsunagi.protocols` names)."""
        return self.inbound_protocols.get(port, protocols.DEFAULT)

    @classmethod
    def from_metadata(
        cls, node_id: str, meta: Mapping[str, Any], verified: bool = False, proven: bool = False
    ) -> Node:
        """The node as its agent described it in the bootstrap (``tsunagi.proxy_contract``);
        ``verified`` and ``proven``: what the xDS server found its certificate proves (see
        :attr:`verified`, :attr:`proven`)."""
        inbound = {
            int(p): (int(v[pc.META_INBOUND_LISTEN]), int(v[pc.META_INBOUND_APP]))
            for p, v in (meta.get(pc.META_INBOUND) or {}).items()
        }
        # An unknown name (a newer agent's) is not trusted to mean HTTP: it is TCP, which
        # gets no HTTP handling the app might not speak.
        inbound_protocols = {
            int(p): _known_protocol(str(v.get(pc.META_INBOUND_PROTOCOL) or protocols.DEFAULT))
            for p, v in (meta.get(pc.META_INBOUND) or {}).items()
        }
        namespace = str(meta.get(pc.META_NAMESPACE) or "default")
        return cls(
            id=node_id,
            namespace=namespace,
            service=str(meta.get(pc.META_SERVICE) or ""),
            labels=MappingProxyType(
                {str(k): str(v) for k, v in (meta.get(pc.META_LABELS) or {}).items()}
            ),
            outbound_port=int(meta.get(pc.META_OUTBOUND_PORT) or pc.DEFAULT_OUTBOUND_PORT),
            inbound=MappingProxyType(inbound),
            kind=str(meta.get(pc.META_KIND) or pc.DEFAULT_KIND),
            locality=str(meta.get(pc.META_LOCALITY) or ""),
            inbound_protocols=MappingProxyType(
                {p: v for p, v in inbound_protocols.items() if v != protocols.DEFAULT}
            ),
            metrics_log=str(meta.get(pc.META_METRICS_LOG) or ""),
            gateway_address=str(meta.get(pc.META_GATEWAY_ADDRESS) or ""),
            inbound_address=str(meta.get(pc.META_INBOUND_ADDRESS) or pc.DEFAULT_INBOUND_ADDRESS),
            gateway_ports=MappingProxyType(pc.parse_gateway_ports(meta.get(pc.META_GATEWAY_PORTS))),
            upstreams=_upstreams(meta.get(pc.META_UPSTREAMS), namespace),
            service_account=str(meta.get(pc.META_SERVICE_ACCOUNT) or ""),
            intercept=_intercept(meta.get(pc.META_INTERCEPT)),
            verified=verified,
            proven=proven or verified,
        )


def _upstreams(entries: Any, namespace: str) -> tuple[Upstream, ...]:
    """``pc.META_UPSTREAMS`` as :class:`Upstream` entries; one that is not (another
    agent version's) is left out rather than failing the whole node."""
    out = []
    for u in entries if isinstance(entries, list) else ():
        try:
            host = fqdn(str(u[pc.META_UPSTREAM_SERVICE]), namespace)
            out.append(
                Upstream(host, int(u[pc.META_UPSTREAM_PORT]), int(u[pc.META_UPSTREAM_LISTEN]))
            )
        except (TypeError, KeyError, ValueError):
            continue
    return tuple(out)


def _intercept(entry: Any) -> Intercept | None:
    """``pc.META_INTERCEPT`` as an :class:`Intercept`; None when absent or not understood
    (another agent version's), so the proxy gets the usual config rather than none."""
    if not isinstance(entry, Mapping):
        return None
    try:
        resolvers = entry.get(pc.META_INTERCEPT_RESOLVERS) or []
        return Intercept(
            int(entry[pc.META_INTERCEPT_CAPTURE]),
            int(entry[pc.META_INTERCEPT_DNS]),
            tuple(str(r) for r in resolvers) if isinstance(resolvers, list) else (),
        )
    except (TypeError, KeyError, ValueError):
        return None


def endpoint_port(port: Port, named: Mapping[str, int] | None = None) -> int:
    """The port an endpoint of a ServiceEntry ``port`` serves it on, as Istio picks it: the
    endpoint's own ``ports`` entry for the port's name (``named``: a ServiceEntry endpoint's
    or a WorkloadEntry's), else the port's ``targetPort``, else its number."""
    by_name = named.get(port.name) if named and port.name is not None else None
    return by_name or port.target_port or port.number


def _known_protocol(name: str) -> str:
    try:
        return protocols.canonical(name)
    except ValueError:
        return protocols.TCP


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
    gateway: str = ""
    """For a gateway (whose config depends on all its labels, which select its Gateways):
    the address its listeners bind. Empty for sidecars."""
    gateway_ports: tuple[tuple[int, int], ...] = ()
    """For a gateway: ``(service port, listen port)`` pairs (:attr:`Node.gateway_ports`),
    sorted; a server on a service port listens on its listen port."""
    reporting: tm.GatewayReporting | None = None
    """For a gateway: what its listeners report (access log, metric lines, tracing), which
    sidecars' listeners take from their node. ``None`` for sidecars."""
    verified: bool = False
    """Whether it may receive its credentials' private keys: a gateway whose certificate
    proved its namespace and carries the CA's gateway mark (:attr:`Node.verified`); a
    sidecar whose certificate proved its namespace (:attr:`Node.proven`), only where a
    DestinationRule with a ``workloadSelector`` names a ``credentialName`` in its namespace
    (False for every other sidecar, so they share scopes)."""


def of_spec(resources: Iterable[Resource], model: type[S]) -> list[ResourceOf[S]]:
    """The resources whose spec is a ``model``, typed as such (in their given order)."""
    # Annotated so that mypy checks that Resource fits the protocol.
    matching: list[ResourceOf[BaseModel]] = [r for r in resources if type(r.spec) is model]
    return cast("list[ResourceOf[S]]", matching)  # sound: each spec's type was just checked


def _in_name_order(resources: list[ResourceOf[S]]) -> list[ResourceOf[S]]:
    return sorted(resources, key=lambda r: (r.namespace, r.name))


def policy_parts(dr: DestinationRuleSpec) -> list[TrafficPolicy | PortTrafficPolicy]:
    """Every traffic policy of ``dr``: top level, subsets, and their port-level settings."""
    tops = [dr.traffic_policy] + [s.traffic_policy for s in dr.subsets]
    parts: list[TrafficPolicy | PortTrafficPolicy] = []
    for tp in tops:
        if tp is not None:
            parts += [tp, *tp.port_level_settings]
    return parts


def rule_credential_names(dr: DestinationRuleSpec) -> frozenset[str]:
    """The ``credentialName`` of every SIMPLE or MUTUAL ``tls`` of ``dr`` (top level,
    subsets, port level): the Secrets a proxy that applies it may need."""
    return frozenset(
        p.tls.credential_name
        for p in policy_parts(dr)
        if p.tls is not None and p.tls.mode in ("SIMPLE", "MUTUAL") and p.tls.credential_name
    )


def _load_balancers(dr: DestinationRuleSpec) -> list[LoadBalancerSettings]:
    return [p.load_balancer for p in policy_parts(dr) if p.load_balancer is not None]


@dataclass
class _Catalog:
    """The services that exist and their endpoints, as registered instances and
    ServiceEntries declare them: the first step of :meth:`World.build`."""

    ports: dict[str, set[int]] = field(default_factory=dict)
    namespaces: dict[str, str] = field(default_factory=dict)
    endpoints: dict[tuple[str, int], list[Endpoint]] = field(default_factory=dict)
    entries: dict[str, list[ResourceOf[ServiceEntrySpec]]] = field(default_factory=dict)
    """host → the ServiceEntries that declare it, in the order given."""
    resolutions: dict[str, str] = field(default_factory=dict)
    declared_protocols: dict[tuple[str, int], list[str]] = field(default_factory=dict)
    """(host, port) → the protocol each instance or ServiceEntry declares for it."""
    addresses: dict[str, list[str]] = field(default_factory=dict)
    """host → ServiceEntry ``addresses`` (VIPs and CIDR ranges)."""
    passthrough: set[str] = field(default_factory=set)
    """Hosts of ServiceEntries with ``resolution: NONE``."""
    subject_alt_names: dict[str, list[str]] = field(default_factory=dict)
    """host → ServiceEntry ``subjectAltNames``."""
    instances: list[Instance] = field(default_factory=list)
    """Registered instances, for ServiceEntries' ``workloadSelector``."""
    workload_entries: list[ResourceOf[WorkloadEntrySpec]] = field(default_factory=list)
    """WorkloadEntry resources, for ServiceEntries' ``workloadSelector``."""
    known: InstanceEndpoints = field(default_factory=lambda: InstanceEndpoints())
    """Registered instances' endpoints (and which PeerAuthentications they were made for)."""

    def _of_instance(self, inst: Instance) -> Endpoint:
        return self.known.of(inst)

    def add_instance(self, inst: Instance) -> None:
        self.instances.append(inst)
        host = fqdn(inst.service, inst.namespace)
        self.ports.setdefault(host, set()).add(inst.port)
        self.declared_protocols.setdefault((host, inst.port), []).append(inst.protocol)
        self.namespaces[host] = inst.namespace
        self.endpoints.setdefault((host, inst.port), []).append(self._of_instance(inst))

    def add_service_entry(self, se: ResourceOf[ServiceEntrySpec]) -> None:
        spec = se.spec
        dns = spec.resolution in ("DNS", "DNS_ROUND_ROBIN")
        for h in spec.hosts:
            host = fqdn(h, se.namespace)
            declared = self.entries.setdefault(host, [])
            if not declared or declared[-1] is not se:  # a host may be listed twice
                declared.append(se)
            self.namespaces.setdefault(host, se.namespace)
            if dns:
                self.resolutions[host] = spec.resolution
            if spec.resolution == "NONE":
                # Istio: an ORIGINAL_DST cluster, whatever else the entry says.
                self.passthrough.add(host)
            if spec.addresses:
                known = self.addresses.setdefault(host, [])
                known += [a for a in spec.addresses if a not in known]
            if spec.subject_alt_names:
                sans = self.subject_alt_names.setdefault(host, [])
                sans += [n for n in spec.subject_alt_names if n not in sans]
            for p in spec.ports:
                self.ports.setdefault(host, set()).add(p.number)
                if p.protocol:
                    self.declared_protocols.setdefault((host, p.number), []).append(
                        _known_protocol(p.protocol)
                    )
                if dns and not spec.endpoints and "*" not in host:
                    # No endpoints: Envoy resolves the host name itself.
                    self.endpoints.setdefault((host, p.number), []).append(
                        Endpoint(host, endpoint_port(p), {})
                    )
                for ep in spec.endpoints:
                    self.endpoints.setdefault((host, p.number), []).append(
                        Endpoint.of_workload_entry(ep, p, se.namespace)
                    )
                if spec.workload_selector is not None:
                    selected = self._selected(se.namespace, spec.workload_selector.labels, p)
                    self.endpoints.setdefault((host, p.number), []).extend(selected)

    def _selected(self, namespace: str, wanted: Mapping[str, str], port: Port) -> list[Endpoint]:
        """What a ServiceEntry's ``workloadSelector`` (``wanted`` labels) selects in its
        ``namespace``, as endpoints of its ``port``, as Istio makes them: registered
        instances serving the port (the port's targetPort, else its number), which are
        their sidecars' inbound listeners as for the service they registered; then
        WorkloadEntries (their ``ports`` by the port's name, else its targetPort, else its
        number)."""
        target = endpoint_port(port)
        instances = [
            self._of_instance(inst)
            for inst in self.instances
            if inst.namespace == namespace
            and inst.port == target
            and selectors.labels_match(wanted, inst.labels)
        ]
        entries = [
            Endpoint.of_workload_entry(we.spec, port, we.namespace)
            for we in self.workload_entries
            if we.namespace == namespace
            and we.spec.address
            and selectors.labels_match(wanted, we.spec.labels)
        ]
        return instances + entries

    def services(self) -> dict[str, Service]:
        """Every declared host as a :class:`Service`, in host order."""
        # Instances of one service may disagree on a port's protocol: every proxy must
        # still see one answer, whatever the order they registered in (the agent of the
        # odd one out is told so when it registers).
        chosen = {k: protocols.pick(names)[0] for k, names in self.declared_protocols.items()}
        return {
            h: Service(
                h,
                self.namespaces[h],
                tuple(sorted(ps)),
                self.resolutions.get(h, ""),
                tuple(
                    (p, chosen[h, p])
                    for p in sorted(ps)
                    if chosen.get((h, p), protocols.DEFAULT) != protocols.DEFAULT
                ),
                tuple(self.addresses.get(h, ())),
                h in self.passthrough,
                tuple(self.subject_alt_names.get(h, ())),
                self._mesh_external(h),
                self._service_accounts(h, ps),
            )
            for h, ps in sorted(self.ports.items())
        }

    def _mesh_external(self, host: str) -> bool:
        entries = self.entries.get(host, ())
        return bool(entries) and all(se.spec.location != "MESH_INTERNAL" for se in entries)

    def _service_accounts(self, host: str, ports: set[int]) -> tuple[tuple[str, str], ...]:
        found = {
            (ep.namespace or self.namespaces[host], ep.service_account)
            for p in ports
            for ep in self.endpoints.get((host, p), ())
            if ep.service_account
        }
        return tuple(sorted(found))


class InstanceEndpoints:
    """Registered instances' endpoints, kept from one build to the next: a push after one
    instance changed makes one Endpoint, not thousands (each asks the PeerAuthentications
    whether it takes mTLS). An entry is reused only for the very Instance object it was
    made of (the control plane's builder keeps an instance's object while its stored
    revision is unchanged) and only while the PeerAuthentications are equal; instances
    that were not in the last build are forgotten. Used by one build at a time."""

    def __init__(self) -> None:
        self._peers = PeerAuthentications()
        self._kept: dict[int, tuple[Instance, Endpoint]] = {}
        self._used: dict[int, tuple[Instance, Endpoint]] = {}

    def start(self, peers: PeerAuthentications) -> None:
        """Begin a build under ``peers``: changed PeerAuthentications forget everything."""
        if peers != self._peers:
            self._peers, self._kept = peers, {}
        self._used = {}

    def of(self, inst: Instance) -> Endpoint:
        """``inst``'s endpoint: its sidecar, with mTLS when its PeerAuthentication leaves it on."""
        hit = self._kept.get(id(inst)) or self._used.get(id(inst))
        if hit is None or hit[0] is not inst:  # the id of an object since freed
            mtls = self._peers.accepts_mtls(inst.namespace, inst.labels, inst.port)
            hit = (inst, Endpoint.of_instance(inst, mtls))
        self._used[id(inst)] = hit
        return hit[1]

    def finish(self) -> None:
        """End the build: keep only what it used."""
        self._kept, self._used = self._used, {}


_ROUTING_KINDS = ("VirtualService", "DestinationRule", "ServiceEntry", "Gateway", "Sidecar")
"""Kinds whose content outbound routes depend on (see :attr:`World.routing_fingerprint`)."""


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
    rule_lookup: DestinationRuleLookup | None = field(default=None, compare=False, repr=False)
    """Istio's DestinationRule lookup by client namespace (see :meth:`destination_rule`)."""
    mesh_telemetry: tm.MeshTelemetry = field(default_factory=tm.MeshTelemetry)
    """Mesh-wide telemetry defaults (``tsunagi up`` flags); see :meth:`telemetry_for`."""
    telemetry_policies: TelemetryPolicies = field(
        default_factory=lambda: TelemetryPolicies(tm.MeshTelemetry(), ()),
        compare=False,
        repr=False,
    )
    """The Telemetry resources, resolved per proxy (see :meth:`telemetry_for`)."""
    mesh_outbound_policy: op.Mode = op.DEFAULT
    """``tsunagi up --outbound-policy``: ``ALLOW_ANY`` or ``REGISTRY_ONLY`` for sidecars whose
    Sidecar resource sets none (see :func:`tsunagi.mesh.outbound_policy.outbound_policy`)."""
    mesh_security: MeshSecurity = field(default_factory=MeshSecurity)
    """Trust domain and root namespace (``tsunagi up`` flags)."""
    peer_authentications: PeerAuthentications = field(
        default_factory=PeerAuthentications, compare=False, repr=False
    )
    """The PeerAuthentications, indexed (see :mod:`tsunagi.mesh.peer_authentication`)."""
    jwks: Mapping[str, str] = field(
        default_factory=lambda: MappingProxyType({}), compare=False, repr=False
    )
    """JWK sets the control plane fetched for RequestAuthentications, by where it fetched
    them (:func:`tsunagi.mesh.request_authentication.jwks_key`)."""
    credentials: Mapping[tuple[str, str], Credential] = field(
        default_factory=lambda: MappingProxyType({}), compare=False, repr=False
    )
    """``(namespace, name)`` → the TLS credential a Secret gives a ``credentialName``
    (Istio's key rules: :mod:`tsunagi.mesh.credentials`)."""

    @classmethod
    def build(
        cls,
        revision: int,
        resources: Iterable[Resource],
        instances: Iterable[Instance],
        mesh_telemetry: tm.MeshTelemetry | None = None,
        mesh_outbound_policy: op.Mode = op.DEFAULT,
        mesh_security: MeshSecurity | None = None,
        jwks: Mapping[str, str] | None = None,
        known: InstanceEndpoints | None = None,
    ) -> World:
        """The World of ``resources`` (applied config) and ``instances`` (registered
        workloads): services and endpoints, then the indexes rules are looked up by.
        ``known``: endpoints kept from the last build, reused where nothing changed."""
        resources = tuple(resources)
        mesh_security = mesh_security or MeshSecurity()
        peers = PeerAuthentications.of(resources, mesh_security.root_namespace)
        known = known or InstanceEndpoints()
        known.start(peers)
        catalog = _Catalog(known=known)
        for inst in instances:
            catalog.add_instance(inst)
        catalog.workload_entries = of_spec(resources, WorkloadEntrySpec)
        for se in of_spec(resources, ServiceEntrySpec):
            catalog.add_service_entry(se)
        known.finish()
        services = catalog.services()
        vs_index: dict[str, list[ResourceOf[VirtualServiceSpec]]] = {}
        for vs in _in_name_order(of_spec(resources, VirtualServiceSpec)):
            for h in vs.spec.hosts:
                vs_index.setdefault(fqdn(h, vs.namespace), []).append(vs)
        # Istio's lookup (mesh/visibility.py): the index holds what a client namespace with
        # no rules of its own sees; World.destination_rule answers for any namespace.
        by_namespace = index_rules(_in_name_order(of_spec(resources, DestinationRuleSpec)))
        lookup = DestinationRuleLookup(by_namespace, catalog.namespaces.get)
        rule_hosts = {name for hosts in by_namespace.values() for name in hosts if "*" not in name}
        dr_index = {
            name: dr
            for name in sorted({*services, *rule_hosts})
            if (dr := lookup.rule_for(name, "")) is not None
        }
        return cls(
            revision=revision,
            services=MappingProxyType(services),
            endpoints=MappingProxyType({k: tuple(v) for k, v in catalog.endpoints.items()}),
            virtual_services=MappingProxyType({k: tuple(v) for k, v in vs_index.items()}),
            destination_rules=MappingProxyType(dr_index),
            service_entries=MappingProxyType({k: tuple(v) for k, v in catalog.entries.items()}),
            resources=resources,
            rule_lookup=lookup,
            mesh_telemetry=mesh_telemetry or tm.MeshTelemetry(),
            telemetry_policies=TelemetryPolicies(
                mesh_telemetry or tm.MeshTelemetry(), of_spec(resources, TelemetrySpec)
            ),
            mesh_outbound_policy=mesh_outbound_policy,
            mesh_security=mesh_security,
            peer_authentications=peers,
            jwks=MappingProxyType(dict(jwks or {})),
            credentials=credentials_of(resources),
        )

    def telemetry_for(self, node: Node) -> tm.ProxyTelemetry:
        """What ``node`` reports: access log, tracing and metrics settings."""
        return self.telemetry_policies.for_proxy(node.namespace, node.service, node.labels)

    def subset_definitions(self, host: str) -> tuple[tuple[str, tuple[tuple[str, str], ...]], ...]:
        """``(name, sorted labels)`` of each subset of ``host`` in the shared rule index
        (:attr:`destination_rules`; a client namespace may see another rule, see
        :meth:`destination_rule`): hashable, for memo keys."""
        dr = self.destination_rules.get(host)
        return () if dr is None else subset_definitions(dr.spec)

    def destination_rule(
        self, host: str, namespace: str, labels: tuple[tuple[str, str], ...] = ()
    ) -> ResourceOf[DestinationRuleSpec] | None:
        """The DestinationRule that clients in ``namespace`` apply to ``host``: Istio looks in
        their own namespace, then the service's, then the root namespace (exportTo obeyed).
        ``labels``: the client's (sorted), for rules with a ``workloadSelector``, which come
        first for the clients of their namespace they select."""
        lookup = self.rule_lookup
        if lookup is None or not lookup.may_differ(namespace):
            return self.destination_rules.get(host)
        if namespace in lookup.scoped_namespaces:  # a selector without labels selects all
            selected = lookup.selected_rule(host, namespace, labels)
            if selected is not None:
                return selected
        return lookup.rule_for(host, namespace)

    def selected_rules(
        self, namespace: str, labels: tuple[tuple[str, str], ...]
    ) -> Mapping[str, ResourceOf[DestinationRuleSpec]]:
        """Services whose DestinationRule for a client of ``namespace`` with ``labels`` is
        one with a ``workloadSelector`` that selects it, with that rule. Empty (and no work)
        in a namespace without such rules."""
        lookup = self.rule_lookup
        if lookup is None or namespace not in lookup.scoped_namespaces:
            return MappingProxyType({})
        key = ("selected", namespace, labels)
        if key not in self._per_namespace:
            hosts_key = ("selector-hosts", namespace)
            if hosts_key not in self._per_namespace:  # once per namespace, not per scope
                patterns = lookup.selector_patterns(namespace)
                self._per_namespace[hosts_key] = [
                    h for h in self.services if any(host_matches(p, h) for p in patterns)
                ]
            hosts = self._per_namespace[hosts_key]
            found = {h: lookup.selected_rule(h, namespace, labels) for h in hosts}
            self._per_namespace[key] = MappingProxyType(
                {h: r for h, r in found.items() if r is not None}
            )
        selected: Mapping[str, ResourceOf[DestinationRuleSpec]] = self._per_namespace[key]
        return selected

    def rule_labels(
        self, namespace: str, labels: Iterable[tuple[str, str]]
    ) -> tuple[tuple[str, str], ...]:
        """What of a client's ``labels`` its DestinationRule lookup reads (sorted): those a
        ``workloadSelector`` names, when a rule of ``namespace`` with one selects it; () for
        every other client, which then share config (no work in a namespace without such
        rules)."""
        lookup = self.rule_lookup
        if lookup is None or namespace not in lookup.scoped_namespaces:
            return ()
        keys = self.rule_selector_keys
        read = tuple(sorted((k, v) for k, v in labels if k in keys))
        return read if self.selected_rules(namespace, read) else ()

    @cached_property
    def _per_namespace(self) -> dict[tuple[Any, ...], Any]:
        return {}  # answers by (what, namespace); the World never changes, so they hold

    def rule_overrides(
        self, namespace: str
    ) -> Mapping[str, ResourceOf[DestinationRuleSpec] | None]:
        """Services whose DestinationRule for clients in ``namespace`` is not the shared one
        (:attr:`destination_rules`), with the rule they see (None: no rule). Empty for most
        namespaces, so that their sidecars share every cluster."""
        key = ("rules", namespace)
        if key not in self._per_namespace:
            out: dict[str, ResourceOf[DestinationRuleSpec] | None] = {}
            if self.rule_lookup is not None and self.rule_lookup.may_differ(namespace):
                for host in self.services:
                    rule = self.rule_lookup.rule_for(host, namespace)
                    if rule is not self.destination_rules.get(host):
                        out[host] = rule
            self._per_namespace[key] = MappingProxyType(out)
        overrides: Mapping[str, ResourceOf[DestinationRuleSpec] | None] = self._per_namespace[key]
        return overrides

    def hidden_services(self, namespace: str) -> frozenset[str]:
        """Services that clients in ``namespace`` do not see: declared only by
        ServiceEntries none of which is exported to it."""
        key = ("hidden", namespace)
        if key not in self._per_namespace:
            self._per_namespace[key] = frozenset(
                host
                for host, entries in self.service_entries.items()
                if host in self.services
                and not any(exported_to(e.spec.export_to, e.namespace, namespace) for e in entries)
            )
        hidden: frozenset[str] = self._per_namespace[key]
        return hidden

    @cached_property
    def service_addresses(self) -> Mapping[str, tuple[str, ...]]:
        """host → the IPv4 addresses intercepting sidecars answer in DNS and capture for it:
        a ServiceEntry's own, else one allocated from 240.240.0.0/16
        (:mod:`tsunagi.mesh.virtual_ips`, stable across pushes and restarts)."""
        return MappingProxyType(
            virtual_ips.service_addresses(
                {h: (s.addresses, s.passthrough) for h, s in self.services.items()}
            )
        )

    @cached_property
    def virtual_services_in_order(self) -> tuple[ResourceOf[VirtualServiceSpec], ...]:
        """Every VirtualService with hosts, each once, by namespace then name (Istio's order
        among those bound to a gateway's server); sorted once per World, not per port."""
        return tuple(
            sorted(
                {vs.key: vs for vss in self.virtual_services.values() for vs in vss}.values(),
                key=lambda v: (v.namespace, v.name),
            )
        )

    @cached_property
    def authorization_policies(
        self,
    ) -> Mapping[str, tuple[ResourceOf[AuthorizationPolicySpec], ...]]:
        """AuthorizationPolicies that can select sidecars, by namespace, once per World
        (see :mod:`tsunagi.mesh.authorization`)."""
        return MappingProxyType(authorization.index(self.resources))

    @cached_property
    def request_authentications(
        self,
    ) -> Mapping[str, tuple[ResourceOf[RequestAuthenticationSpec], ...]]:
        """RequestAuthentications by namespace, once per World (see
        :mod:`tsunagi.mesh.request_authentication`)."""
        return MappingProxyType(request_authentication.index(self.resources))

    def security_for(self, node: Node) -> WorkloadSecurity:
        """What PeerAuthentication, AuthorizationPolicy and RequestAuthentication ask of
        ``node``'s inbound side (see :mod:`tsunagi.mesh.security`)."""
        rules = request_authentication.rules_for(self, node)
        policies = authorization.policies_for(self, node)
        return WorkloadSecurity(
            mtls=peer_authentication.mtls_modes(self, node),
            authorization=policies,
            custom=ext_authz.resolve(self, policies),
            authentication=rules,
            jwks=request_authentication.jwks_of(self, rules),  # type: ignore[arg-type]
        )

    @cached_property
    def gateways(self) -> tuple[ResourceOf[GatewaySpec], ...]:
        """Every Gateway, in Istio's order here (namespace, then name: no creation times);
        sorted once per World, not per gateway proxy or analysis."""
        return tuple(_in_name_order(of_spec(self.resources, GatewaySpec)))

    @cached_property
    def delegates(self) -> Mapping[tuple[str, str], ResourceOf[VirtualServiceSpec]]:
        """VirtualServices without hosts, by ``(namespace, name)``: they only serve as the
        ``delegate`` of another VirtualService's route."""
        return MappingProxyType(
            {
                (vs.namespace, vs.name): vs
                for vs in of_spec(self.resources, VirtualServiceSpec)
                if not vs.spec.hosts
            }
        )

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
    def tls_source_label_keys(self) -> frozenset[str]:
        """Label keys that some VirtualService's ``tls`` match names in ``sourceLabels``: the
        only labels of a sidecar its CONNECT tunnels' internal listeners depend on."""
        return frozenset(
            key
            for vs in of_spec(self.resources, VirtualServiceSpec)
            for route in vs.spec.tls
            for m in route.match
            for key in m.source_labels
        )

    @cached_property
    def failover_label_keys(self) -> frozenset[str]:
        """Label keys whose client value some DestinationRule's ``failoverPriority``
        compares with its endpoints' (``key=value`` entries need no client value); none
        when no service's endpoints depend on the client."""
        if not self.locality_hosts:
            return frozenset()
        return frozenset(
            entry
            for dr in of_spec(self.resources, DestinationRuleSpec)
            for lb in _load_balancers(dr.spec)
            if lb.locality_lb_setting is not None
            for entry in lb.locality_lb_setting.failover_priority
            if "=" not in entry
        )

    @cached_property
    def locality_hosts(self) -> frozenset[str]:
        """Services whose endpoints may depend on the client's locality (Istio's locality
        load balancing): those a DestinationRule gives ``distribute`` and that have
        endpoints, or outlier detection (which enables failover) and endpoints that span
        several localities (or, with ``failoverPriority``, are several). May name a service
        that turns out not to depend on it (translation decides exactly, per cluster);
        never leaves out one that does."""
        found: set[str] = set()
        # Every rule, not only the shared index: a namespace may see a rule of its own.
        for dr in of_spec(self.resources, DestinationRuleSpec):
            outlier = distribute = priority = False
            for part in policy_parts(dr.spec):
                outlier = outlier or part.outlier_detection is not None
                lb = part.load_balancer
                s = lb.locality_lb_setting if lb is not None else None
                distribute = distribute or bool(s is not None and s.distribute)
                priority = priority or bool(s is not None and s.failover_priority)
            if not (outlier or distribute):
                continue
            pattern = fqdn(dr.spec.host, dr.namespace)
            # An exact host is looked up: a mesh with a rule per service stays linear.
            hosts = (
                [pattern]
                if "*" not in pattern
                else [h for h in self.services if host_matches(pattern, h)]
            )
            for h in hosts:
                svc = self.services.get(h)
                if svc is None or svc.resolution or h in found:
                    continue
                eps = [e for p in svc.ports for e in self.endpoints.get((h, p), ())]
                spread = len({e.locality for e in eps}) > 1 or (priority and len(eps) > 1)
                if (eps and distribute) or spread:
                    found.add(h)
        return frozenset(found)

    @cached_property
    def rule_selector_keys(self) -> frozenset[str]:
        """Label keys that some DestinationRule's ``workloadSelector`` names: the labels of
        a sidecar its clusters may depend on."""
        return frozenset(
            key
            for dr in of_spec(self.resources, DestinationRuleSpec)
            if dr.spec.workload_selector is not None
            for key in dr.spec.workload_selector.labels
        )

    @cached_property
    def credential_rules(self) -> bool:
        """Whether some DestinationRule's ``tls`` names a ``credentialName`` (gateways then
        look for the services whose rule does)."""
        return any(
            rule_credential_names(dr.spec) for dr in of_spec(self.resources, DestinationRuleSpec)
        )

    @cached_property
    def credential_rule_namespaces(self) -> frozenset[str]:
        """Namespaces where a DestinationRule with a ``workloadSelector`` names a
        ``credentialName``: only there may a sidecar's scope carry ``verified``."""
        return frozenset(
            dr.namespace
            for dr in of_spec(self.resources, DestinationRuleSpec)
            if dr.spec.workload_selector is not None and rule_credential_names(dr.spec)
        )

    @property
    def locality_aware(self) -> bool:
        """Whether some service's endpoints may depend on the client's locality, so that
        sidecars' scopes carry their locality (see :attr:`locality_hosts`)."""
        return bool(self.locality_hosts)

    @cached_property
    def sidecars(self) -> tuple[ResourceOf[SidecarSpec], ...]:
        """The Sidecar resources, in (namespace, name) order (see :mod:`.outbound_policy`)."""
        return op.sidecars(self.resources)

    @cached_property
    def routing_label_keys(self) -> frozenset[str]:
        """Label keys a sidecar's outbound routes read: ``sourceLabels`` matches, and the
        selectors of Sidecars that set an ``outboundTrafficPolicy``."""
        return self.source_label_keys | op.selector_keys(self.sidecars)

    @cached_property
    def _client_label_keys(self) -> frozenset[str]:
        return self.routing_label_keys | self.failover_label_keys | self.rule_selector_keys

    def scope_of(self, node: Node) -> ClientScope:
        """The part of ``node`` its outbound config depends on, in this World."""
        if node.is_gateway:
            address = node.gateway_address or DEFAULT_GATEWAY_ADDRESS
            labels = tuple(sorted(node.labels.items()))
            locality = node.locality if self.locality_aware else ""
            ports = tuple(sorted(node.gateway_ports.items()))
            reporting = tm.GatewayReporting(node.id, node.metrics_log, self.telemetry_for(node))
            return ClientScope(
                node.namespace,
                labels,
                locality,
                gateway=address,
                gateway_ports=ports,
                reporting=reporting,
                verified=node.verified,
            )
        keys = self._client_label_keys
        labels = tuple(sorted((k, v) for k, v in node.labels.items() if k in keys))
        # Only where a selected rule names a credential does a sidecar's proof matter; its
        # namespace proven is enough (Istio's rule), the gateway mark is not needed.
        verified = node.proven and node.namespace in self.credential_rule_namespaces
        return ClientScope(
            node.namespace,
            labels,
            node.locality if self.locality_aware else "",
            verified=verified,
        )

    @cached_property
    def registered_scopes(self) -> frozenset[ClientScope]:
        """The scopes of the sidecars behind registered instances (as their proxies would
        present them, certificates proving their namespaces), so a push can build their
        outbound config before they connect: after a control-plane restart every proxy
        reconnects at once, and each namespace's routes are then ready, not built on the
        event loop by the first proxy to arrive."""
        keys = self._client_label_keys
        seen: set[tuple[str, tuple[tuple[str, str], ...], str]] = set()
        scopes: set[ClientScope] = set()
        for endpoints in self.endpoints.values():
            for ep in endpoints:
                if not ep.registered:
                    continue
                # What scope_of reads of a node, so that each distinct one is made once.
                labels = tuple(sorted((k, v) for k, v in ep.labels.items() if k in keys))
                key = (ep.namespace, labels, ep.locality)
                if key in seen:
                    continue
                seen.add(key)
                node = Node("", ep.namespace, labels=ep.labels, locality=ep.locality, proven=True)
                scopes.add(self.scope_of(node))
        return frozenset(scopes)

    @cached_property
    def routing_fingerprint(self) -> str:
        """A digest of everything outbound routes depend on: services, their ports, and the
        routing resources. Endpoints are not in it, so an endpoint change keeps it."""
        h = hashlib.blake2b(digest_size=16)
        h.update(f"outbound-policy {self.mesh_outbound_policy}\n".encode())
        # What registered instances add to services; the rest of a Service (addresses,
        # resolution, subjectAltNames) is its ServiceEntry's, hashed below.
        for svc in self.services.values():
            line = f"{svc.hostname} {svc.namespace} {svc.ports} {svc.port_protocols}\n"
            h.update(line.encode())
        for r in sorted(self.resources, key=lambda r: r.key):
            if r.kind in _ROUTING_KINDS:
                h.update(json.dumps([r.key, r.document], sort_keys=True, default=str).encode())
        return h.hexdigest()
