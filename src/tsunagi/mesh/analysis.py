"""Checks across resources that no single document can make: things that will fail at runtime
even though each resource is valid on its own."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Iterable

from pydantic.alias_generators import to_camel

from tsunagi import protocols
from tsunagi.api import (
    AuthorizationPolicySpec,
    ClientTLSSettings,
    DestinationRuleSpec,
    LoadBalancerSettings,
    OutlierDetection,
    PortTrafficPolicy,
    RequestAuthenticationSpec,
    Resource,
    ServiceEntrySpec,
    SidecarSpec,
    TrafficPolicy,
    VirtualServiceSpec,
    WorkloadEntrySpec,
    fqdn,
)
from tsunagi.api.checks_envoyfilter import envoy_filter_warnings
from tsunagi.api.envoyfilter import EnvoyFilterSpec
from tsunagi.api.telemetry import TelemetrySpec
from tsunagi.mesh.authorization import target_ref_warnings
from tsunagi.mesh.delegation import delegation_warnings
from tsunagi.mesh.request_authentication_analysis import request_authentication_warnings
from tsunagi.mesh.telemetry_analysis import telemetry_warnings
from tsunagi.mesh.visibility import host_matches
from tsunagi.mesh.world import World, of_spec, policy_parts


def _passes_through(spec: DestinationRuleSpec) -> bool:
    return any(
        p.load_balancer is not None and p.load_balancer.simple == "PASSTHROUGH"
        for p in policy_parts(spec)
    )


def passthrough_without_dns(world: World, resources: Iterable[Resource]) -> list[str]:
    """Warnings for ``loadBalancer.simple: PASSTHROUGH`` on hosts that no ServiceEntry
    declares. A PASSTHROUGH cluster sends each request where its host name resolves in DNS
    (see ``xds/translate/passthrough.py``); mesh services have no DNS name on this host."""
    out = []
    for dr in of_spec(resources, DestinationRuleSpec):
        host = fqdn(dr.spec.host, dr.namespace)
        if _passes_through(dr.spec) and not world.service_entries.get(host):
            out.append(
                f"DestinationRule {dr.namespace}/{dr.name}: loadBalancer.simple PASSTHROUGH "
                f"sends requests for {host} where that name resolves in DNS, and no "
                "ServiceEntry declares it: requests to a mesh service will fail (503, DNS "
                "lookup). Use ROUND_ROBIN, LEAST_REQUEST or RANDOM for mesh services"
            )
    return out


def _readable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.R_OK)


def _policies(spec: DestinationRuleSpec) -> list[tuple[str, TrafficPolicy]]:
    """The rule's traffic policies (top level, then each subset's) with their field paths."""
    policies: list[tuple[str, TrafficPolicy]] = []
    if spec.traffic_policy is not None:
        policies.append(("spec.trafficPolicy", spec.traffic_policy))
    policies += [
        (f"spec.subsets[{i}].trafficPolicy", s.traffic_policy)
        for i, s in enumerate(spec.subsets)
        if s.traffic_policy is not None
    ]
    return policies


def _parts(path: str, tp: TrafficPolicy) -> list[tuple[str, PortTrafficPolicy | TrafficPolicy]]:
    """A traffic policy and its port-level settings, with their field paths."""
    return [
        (path, tp),
        *((f"{path}.portLevelSettings[{j}]", p) for j, p in enumerate(tp.port_level_settings)),
    ]


def tls_parts(spec: DestinationRuleSpec) -> list[tuple[str, ClientTLSSettings]]:
    """Each ``tls`` of a DestinationRule with its field path."""
    return [
        (f"{at}.tls", part.tls)
        for path, tp in _policies(spec)
        for at, part in _parts(path, tp)
        if part.tls is not None
    ]


def tls_file_problems(
    resources: Iterable[Resource], readable: Callable[[str], bool] = _readable
) -> list[str]:
    """Warnings for TLS origination files (``caCertificates``, ``clientCertificate``,
    ``privateKey``) that are not readable files on this host. Envoy reads them on the proxy's
    host, and rejects a cluster naming a missing one together with every other cluster of
    the same update; sidecars usually share this host, so a typo shows here first."""
    out = []
    for dr in of_spec(resources, DestinationRuleSpec):
        for at, tls in tls_parts(dr.spec):
            if tls.mode not in ("SIMPLE", "MUTUAL") or tls.credential_name:
                continue
            files = [("caCertificates", tls.ca_certificates)]
            if tls.mode == "MUTUAL":
                files += [
                    ("clientCertificate", tls.client_certificate),
                    ("privateKey", tls.private_key),
                ]
            out += [
                f"DestinationRule {dr.namespace}/{dr.name}: {at}.{name} {path!r} is not a "
                "readable file on the control plane's host; the path is read on each "
                "proxy's host, and a proxy that cannot read it rejects its cluster updates "
                "(every service's). Fix the path, or make the file readable there"
                for name, path in files
                if path and not readable(path)
            ]
    return out


def delegation_problems(world: World, resources: Iterable[Resource]) -> list[str]:
    """Warnings for routes whose ``delegate`` is missing, not exported to them, or has
    routes that conflict with theirs (see :mod:`tsunagi.mesh.delegation`): routes of the
    VirtualServices in ``resources``, and of those in ``world`` that delegate to one of them
    (applying a delegate alone says what it does to its roots)."""
    applied = of_spec(resources, VirtualServiceSpec)
    keys = {vs.key for vs in applied}
    delegates = {(vs.namespace, vs.name) for vs in applied if not vs.spec.hosts}
    roots = applied + [
        vs
        for vs in of_spec(world.resources, VirtualServiceSpec)
        if vs.key not in keys
        and any(
            h.delegate is not None
            and (h.delegate.namespace or vs.namespace, h.delegate.name) in delegates
            for h in vs.spec.http
        )
    ]
    return [warning for vs in roots for warning in delegation_warnings(world.delegates, vs)]


def undefined_subsets(world: World, resources: Iterable[Resource]) -> list[str]:
    """Warnings for routes in ``resources`` that name a subset no DestinationRule defines."""
    warnings = []
    for vs in of_spec(resources, VirtualServiceSpec):
        for i, http in enumerate(vs.spec.http):
            for j, dest in enumerate(http.route):
                subset = dest.destination.subset
                if not subset:
                    continue
                host = fqdn(dest.destination.host, vs.namespace)
                # Judged as clients in the rule's namespace see DestinationRules (Istio's
                # lookup starts in the client's namespace); elsewhere it may differ.
                dr = world.destination_rule(host, vs.namespace)
                if dr is None or all(s.name != subset for s in dr.spec.subsets):
                    why = (
                        f"DestinationRule {dr.namespace}/{dr.name} has no subset {subset!r}"
                        if dr is not None
                        else f"no DestinationRule defines subsets for {host}"
                    )
                    if selecting := _selector_rules_with(world, host, vs.namespace, subset):
                        why += f" (only sidecars that {selecting} selects define it)"
                    warnings.append(
                        f"VirtualService {vs.namespace}/{vs.name}: "
                        f"spec.http[{i}].route[{j}].destination.subset: {why}; "
                        "requests routed there will get 503 until it exists"
                    )
    return warnings


def _selector_rules_with(world: World, host: str, namespace: str, subset: str) -> str:
    """The DestinationRules of ``namespace`` with a ``workloadSelector`` whose host covers
    ``host`` and that define ``subset``, named for a warning ("" when none): the clients
    they select route there, the others get 503."""
    found = [
        f"DestinationRule {dr.namespace}/{dr.name}"
        for dr in of_spec(world.resources, DestinationRuleSpec)
        if dr.namespace == namespace
        and dr.spec.workload_selector is not None
        and host_matches(fqdn(dr.spec.host, dr.namespace), host)
        and any(s.name == subset for s in dr.spec.subsets)
    ]
    return ", ".join(found)


def not_yet_enforced(resources: Iterable[Resource]) -> list[str]:
    """Warnings for valid fields that are stored but not yet turned into proxy config, so
    nobody believes a rule is in force when it is not."""
    out = []
    for r in resources:
        spec = r.spec
        where = f"{r.kind} {r.namespace}/{r.name}"
        if isinstance(spec, VirtualServiceSpec):
            for i, http in enumerate(spec.http):
                code = http.redirect.redirect_code if http.redirect is not None else None
                if code is not None and code not in (301, 302, 303, 307, 308):
                    out.append(
                        f"{where}: spec.http[{i}].redirect.redirectCode {code} is not supported "
                        "by Envoy (301, 302, 303, 307, 308); this route is left out, as Istio does"
                    )
                for j, m in enumerate(http.match):
                    if m.ignore_uri_case and m.uri is not None and m.uri.regex is not None:
                        # Istio (and Envoy) ignore case for exact and prefix matches only.
                        out.append(
                            f"{where}: spec.http[{i}].match[{j}].ignoreUriCase has no effect on "
                            "a regex uri match, as in Istio; start the regex with (?i) instead"
                        )
            out += _l4_route_warnings(where, spec)
        elif isinstance(spec, DestinationRuleSpec):
            out += _traffic_policy_warnings(where, spec)
        elif isinstance(spec, ServiceEntrySpec):
            out += _tcp_port_warnings(where, spec)
            out += _ipv6_range_warnings(where, spec)
        elif isinstance(spec, SidecarSpec):
            out += _sidecar_warnings(where, spec)
        elif isinstance(spec, WorkloadEntrySpec) and not spec.labels:
            out.append(
                f"{where}: has no labels, so no ServiceEntry's workloadSelector selects it: a "
                "WorkloadEntry is applied only as an endpoint of the entries that select it"
            )
        elif isinstance(spec, EnvoyFilterSpec):
            out += envoy_filter_warnings(where, spec)
        elif isinstance(spec, TelemetrySpec):
            out += telemetry_warnings(where, spec)
        elif isinstance(spec, RequestAuthenticationSpec):
            out += request_authentication_warnings(where, spec)
        elif isinstance(spec, AuthorizationPolicySpec):
            out += target_ref_warnings(where, spec)
    return out


def _l4_route_warnings(where: str, spec: VirtualServiceSpec) -> list[str]:
    """tcp and tls routes apply on sidecars' ``tsunagi run --upstream`` listeners
    (``xds/translate/upstream_listeners.py``), tls routes also to HTTPS_PROXY's CONNECTs
    (``xds/translate/connect.py``), and on gateways' TCP and TLS servers
    (``xds/translate/gateway_chains.py``); say what of them does not."""
    out = []
    matches = [
        ("tcp", i, j, m.destination_subnets)
        for i, r in enumerate(spec.tcp)
        for j, m in enumerate(r.match)
    ]
    matches += [
        ("tls", i, j, m.destination_subnets)
        for i, r in enumerate(spec.tls)
        for j, m in enumerate(r.match)
    ]
    for field, i, j, subnets in matches:
        if subnets:
            out.append(
                f"{where}: spec.{field}[{i}].match[{j}].destinationSubnets is not applied "
                "yet: on sidecars (--upstream listeners, HTTPS_PROXY CONNECT tunnels) a "
                "connection names a service, not a destination address, so this match never "
                "holds; on gateways it is ignored, as in Istio. Match on port or sniHosts instead"
            )
    return out


def _traffic_policy_warnings(where: str, spec: DestinationRuleSpec) -> list[str]:
    """Load balancing, connection pools and outlier detection are enforced (see
    ``xds/translate/policy.py``); say which parts are not, and which deprecated fields are
    honoured under their documented meaning."""
    top = spec.traffic_policy
    scoped = spec.workload_selector is not None
    out = []
    for path, tp in _policies(spec):
        for name in ("tunnel", "proxy_protocol"):
            if getattr(tp, name) is not None:
                out.append(f"{where}: {path}.{to_camel(name)} is not applied yet")
        for at, part in _parts(path, tp):
            lb, outlier = part.load_balancer, part.outlier_detection
            out += _tls_warnings(f"{where}: {at}.tls", part.tls, scoped)
            # A subset's own policy inherits the top level's outlier detection; port-level
            # settings inherit nothing (see xds/translate/policy.py).
            inherited = top.outlier_detection if part is tp and tp is not top and top else None
            out += _failover_warnings(f"{where}: {at}", lb, outlier or inherited)
            ch = lb.consistent_hash if lb is not None else None
            if ch is not None and ch.minimum_ring_size is not None:
                out.append(
                    f"{where}: {at}.loadBalancer.consistentHash.minimumRingSize is "
                    "deprecated; use consistentHash.ringHash.minimumRingSize"
                )
            if outlier is not None and outlier.consecutive_errors is not None:
                out.append(
                    f"{where}: {at}.outlierDetection.consecutiveErrors is deprecated; use "
                    "consecutiveGatewayErrors (it counts 502, 503 and 504, and is applied as "
                    "such) or consecutive5xxErrors"
                )
    return out


def _sidecar_warnings(where: str, spec: SidecarSpec) -> list[str]:
    """A Sidecar's ``outboundTrafficPolicy.mode`` is enforced (mesh/outbound_policy.py);
    say which of its other fields are not."""
    out = [
        f"{where}: spec.{name} is not applied yet"
        for name, value in (
            ("ingress", spec.ingress),
            ("egress", spec.egress),
            ("inboundConnectionPool", spec.inbound_connection_pool),
        )
        if value
    ]
    policy = spec.outbound_traffic_policy
    if policy is not None and policy.egress_proxy is not None:
        out.append(f"{where}: spec.outboundTrafficPolicy.egressProxy is not applied yet")
    if policy is None and not out:
        out.append(f"{where}: stored and validated; only outboundTrafficPolicy is applied yet")
    return out


def _tls_warnings(at: str, tls: ClientTLSSettings | None, scoped: bool = False) -> list[str]:
    """TLS origination (SIMPLE and MUTUAL, with files or ``credentialName``) is applied
    (xds/translate/origination.py); say what of ``tls`` is not. ``scoped``: the rule has a
    ``workloadSelector``."""
    if tls is None or tls.mode == "DISABLE":
        return []
    if tls.mode == "ISTIO_MUTUAL":  # mesh mTLS (xds/translate/mesh_tls.py)
        return []
    if tls.credential_name and not scoped:
        # Istio's rule: a rule without a selector would hand the key to every sidecar.
        return [
            f"{at}.credentialName applies only to gateways and to sidecars a "
            "workloadSelector selects: sidecars that apply this rule send plain text, as in "
            "Istio; give the rule a workloadSelector, or use caCertificates (and "
            "clientCertificate/privateKey) files"
        ]
    return [f"{at}.caCrl is not applied yet"] if tls.ca_crl else []


def _failover_warnings(
    where: str, lb: LoadBalancerSettings | None, outlier: OutlierDetection | None
) -> list[str]:
    """Istio's warning: failover rules need outlier detection, or no locality is ever seen
    failing and traffic never moves (the rules are sent, and do nothing)."""
    loc = lb.locality_lb_setting if lb is not None else None
    if loc is None or outlier is not None or loc.enabled is False:
        return []
    return [
        f"{where}.loadBalancer.localityLbSetting.{name} has no effect without "
        "outlierDetection: nothing ejects the failing endpoints, so traffic never fails "
        "over; add outlierDetection (e.g. consecutive5xxErrors) to the same policy"
        for name, value in (("failover", loc.failover), ("failoverPriority", loc.failover_priority))
        if value
    ]


def _tcp_port_warnings(where: str, spec: ServiceEntrySpec) -> list[str]:
    """Ports that are not HTTP have no route on the app's HTTP proxy (the sidecar): say how
    an app reaches them instead, which a user would otherwise find out the hard way. TLS and
    HTTPS ports need no warning: apps reach them with HTTPS through ``HTTPS_PROXY``
    (CONNECT, routed by SNI)."""
    host = spec.hosts[0] if spec.hosts else "HOST"
    return [
        f"{where}: spec.ports[{i}] ({p.protocol} {p.number}) is not HTTP: the app's HTTP "
        f"proxy has no route for it; reach it through a local TCP listener with "
        f"`tsunagi run --upstream {host}:{p.number}`"
        for i, p in enumerate(spec.ports)
        if p.protocol
        and not protocols.is_http(p.protocol.upper())
        and p.protocol.upper() not in (protocols.TLS, protocols.HTTPS)
    ]


def _ipv6_range_warnings(where: str, spec: ServiceEntrySpec) -> list[str]:
    """IPv6 CIDR ``addresses`` are not matched (``xds/translate/egress.py`` matches IPv4
    ranges and single addresses of either version)."""
    out = []
    for i, a in enumerate(spec.addresses):
        try:
            net = ipaddress.ip_network(a, strict=False)
        except ValueError:
            continue  # not an address: checks_*.py report it
        if net.version == 6 and net.num_addresses > 1:
            out.append(
                f"{where}: spec.addresses[{i}] {a}: IPv6 ranges are not applied yet; requests "
                "to addresses in it follow the outbound traffic policy. List single IPv6 "
                "addresses instead"
            )
    return out
