"""Istio's semantic validation rules for networking.istio.io kinds.

Each ``check_*`` function takes a parsed spec and yields :class:`Issue` values
with paths relative to ``spec``. Rules follow Istio's validation where it
rejects configuration (Istio's warnings are not errors here).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator, Mapping

from .checks_common import (
    Issue,
    Path,
    check_export_to,
    check_header_names,
    check_labels,
    check_string_match,
    check_unique,
)
from .durations import MILLISECOND
from .jwt_claims import claim_path
from .names import (
    check_dns_label,
    check_dns_subdomain,
    check_fqdn,
    check_header_name,
    check_host,
    check_ip_or_cidr,
    is_ip,
)
from .networking import (
    ClientTLSSettings,
    ConnectionPoolSettings,
    CorsPolicy,
    Destination,
    DestinationRuleSpec,
    GatewaySpec,
    Headers,
    HTTPDirectResponse,
    HTTPFaultInjection,
    HTTPMatchRequest,
    HTTPRedirect,
    HTTPRetry,
    HTTPRoute,
    HTTPRouteDestination,
    L4MatchAttributes,
    LoadBalancerSettings,
    LocalityLoadBalancerSetting,
    OutlierDetection,
    Port,
    RouteDestination,
    ServerTLSSettings,
    ServiceEntrySpec,
    SidecarSpec,
    TLSMatchAttributes,
    TrafficPolicy,
    VirtualServiceSpec,
    WorkloadEntrySpec,
)

#: Port protocols Istio understands (compared case-insensitively).
PROTOCOLS = frozenset(
    {
        "HTTP",
        "HTTPS",
        "GRPC",
        "GRPC-WEB",
        "HTTP2",
        "HTTP_PROXY",
        "MONGO",
        "MYSQL",
        "REDIS",
        "TCP",
        "TLS",
        "UDP",
    }
)
_TLS_PROTOCOLS = frozenset({"HTTPS", "TLS"})

#: Envoy retry policies accepted in ``retryOn`` (besides HTTP status codes).
RETRY_ON_POLICIES = frozenset(
    {
        "5xx",
        "gateway-error",
        "reset",
        "reset-before-request",
        "connect-failure",
        "envoy-ratelimited",
        "retriable-4xx",
        "refused-stream",
        "retriable-status-codes",
        "retriable-headers",
        "http3-post-connect-failure",
        "cancelled",
        "deadline-exceeded",
        "internal",
        "resource-exhausted",
        "unavailable",
    }
)

GRPC_STATUS_NAMES = (
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
)
"""gRPC status names in code order: a name's index is its code (OK is 0)."""

GRPC_STATUS_CODES = frozenset(GRPC_STATUS_NAMES)

HTTP_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "*"}
)

_UINT32_MAX = 2**32 - 1

# The largest directResponse body, as Istio (1 MiB): validation refuses larger ones and the
# outbound RouteConfiguration raises Envoy's own limit (4 KiB by default) to this, so Envoy
# never NACKs a body that apply accepted.
MAX_DIRECT_RESPONSE_BODY = 1024 * 1024


# --------------------------------------------------------------------------- helpers


def _min_duration(value: float | None, path: Path, minimum: float = MILLISECOND) -> Iterator[Issue]:
    if value is not None and value < minimum:
        yield Issue(path, f"duration must be at least {minimum * 1000:g}ms, got {value:g}s")


def _fields_set(model: object, alias: str, attr: str) -> bool:
    fields: set[str] = getattr(model, "model_fields_set", set())
    return attr in fields or alias in fields


def check_protocol(protocol: str | None, path: Path, *, required: bool) -> Iterator[Issue]:
    """A port protocol name Istio recognizes."""
    if not protocol:
        if required:
            yield Issue(path, "protocol is required (e.g. HTTP, HTTPS, GRPC, TCP, TLS)")
        return
    if protocol.upper() not in PROTOCOLS:
        valid = ", ".join(sorted(PROTOCOLS))
        yield Issue(path, f"unrecognized protocol {protocol!r}; valid protocols: {valid}")


def check_port_name(name: str | None, path: Path, *, required: bool) -> Iterator[Issue]:
    """A port name must be a DNS-1123 label."""
    if name is None or name == "":
        if required:
            yield Issue(path, "port name is required")
        return
    err = check_dns_label(name, "port name")
    if err:
        yield Issue(path, err)


def check_gateway_ref(ref: str, path: Path) -> Iterator[Issue]:
    """``mesh`` or ``[namespace/]gateway-name`` (``./name``: the resource's own namespace)."""
    if ref == "mesh":
        return
    ns, slash, name = ref.rpartition("/")
    if slash and ns != ".":
        err = check_dns_label(ns, "gateway namespace")
        if err:
            yield Issue(path, err)
    err = check_dns_subdomain(name, "gateway name")
    if err:
        yield Issue(path, err)


def check_namespaced_host(host: str, path: Path) -> Iterator[Issue]:
    """``namespace/host`` as used by Gateway servers and Sidecar egress hosts."""
    ns, slash, name = host.partition("/")
    if not slash:
        name = host
    elif ns not in ("*", ".", "~"):
        err = check_dns_label(ns, "namespace")
        if err:
            yield Issue(path, err)
    if "/" in name:
        yield Issue(path, f"host {host!r} must have the form [namespace/]host")
        return
    err = check_host(name, allow_ip=True)
    if err:
        yield Issue(path, err)


def check_destination(dest: Destination, path: Path) -> Iterator[Issue]:
    """``destination``: a non-wildcard host, an optional subset name and port."""
    if not dest.host:
        yield Issue((*path, "host"), "destination host is required")
    else:
        err = check_host(dest.host, allow_wildcard=False, allow_ip=True)
        if err:
            yield Issue((*path, "host"), err)
    if dest.subset is not None:
        err = check_dns_label(dest.subset, "subset name")
        if err:
            yield Issue((*path, "subset"), err)


def check_weights(
    routes: tuple[HTTPRouteDestination, ...] | tuple[RouteDestination, ...], path: Path
) -> Iterator[Issue]:
    """Several destinations need at least one non-zero weight (weights are relative)."""
    total = sum(r.weight or 0 for r in routes)
    if len(routes) > 1 and total == 0:
        yield Issue(
            path,
            "total weight of the destinations is 0; give at least one destination a weight > 0",
        )
    if total > _UINT32_MAX:  # Envoy adds weights up in a uint32
        yield Issue(path, f"total weight of the destinations must be at most {_UINT32_MAX}")


def check_headers(headers: Headers | None, path: Path) -> Iterator[Issue]:
    """Header manipulation: valid names, no pseudo headers, values Envoy can format."""
    if headers is None:
        return
    for side in ("request", "response"):
        ops = getattr(headers, side)
        if ops is None:
            continue
        for verb in ("set", "add"):
            values: Mapping[str, str] = getattr(ops, verb)
            yield from check_header_names(values, (*path, side, verb))
            for name, value in values.items():
                # Envoy reads %...% as a variable (%DOWNSTREAM_REMOTE_ADDRESS%); a lone %
                # makes it NACK the route. Istio refuses an odd count; so do we.
                if value.count("%") % 2:
                    yield Issue(
                        (*path, side, verb, name),
                        f"value {value!r} has a single %: write %% for a literal percent "
                        "sign, or enclose an Envoy variable in a pair of % (%HOSTNAME%)",
                    )
        yield from check_header_names(ops.remove, (*path, side, "remove"))


# --------------------------------------------------------------------------- VirtualService


def _check_delegate(spec: VirtualServiceSpec) -> Iterator[Issue]:
    """A VirtualService without hosts is a delegate (Istio): only another VirtualService's
    ``http[].delegate`` uses it, so it binds no gateway, has HTTP routes only, and does not
    delegate again (one level)."""
    why = "a VirtualService without hosts is a delegate"
    if spec.gateways:
        yield Issue(("gateways",), f"{why} and must not name gateways; add hosts to bind it")
    for field in ("tcp", "tls"):
        if getattr(spec, field):
            yield Issue((field,), f"{why}; delegates have http routes only")
    for i, route in enumerate(spec.http):
        if route.delegate is not None:
            yield Issue(
                ("http", i, "delegate"),
                f"{why}; a delegate cannot delegate again (only one level): route here instead",
            )


def check_virtual_service(spec: VirtualServiceSpec) -> Iterator[Issue]:
    """Istio's VirtualService rules."""
    if not spec.hosts:
        yield from _check_delegate(spec)
    binds_mesh = not spec.gateways or "mesh" in spec.gateways
    for i, host in enumerate(spec.hosts):
        err = check_host(host, allow_ip=True)
        if err:
            yield Issue(("hosts", i), err)
        elif host == "*" and binds_mesh:
            yield Issue(
                ("hosts", i),
                "wildcard host '*' is not allowed for VirtualServices bound to the mesh"
                " (set gateways to a gateway, not 'mesh')",
            )
    for i, gw in enumerate(spec.gateways):
        yield from check_gateway_ref(gw, ("gateways", i))
    if not spec.http and not spec.tcp and not spec.tls:
        yield Issue((), "at least one of http, tcp or tls routes is required")
    for i, route in enumerate(spec.http):
        yield from check_http_route(route, ("http", i))
        if binds_mesh:
            yield from _claims_need_gateway(route, ("http", i))
    for i, tcp in enumerate(spec.tcp):
        path: Path = ("tcp", i)
        for j, m in enumerate(tcp.match):
            yield from _check_l4_match(m, (*path, "match", j))
        yield from _check_route_destinations(tcp.route, (*path, "route"), "TCP")
    for i, tls in enumerate(spec.tls):
        path = ("tls", i)
        if not tls.match:
            yield Issue((*path, "match"), "TLS routes require at least one match with sniHosts")
        for j, tm in enumerate(tls.match):
            yield from _check_tls_match(tm, (*path, "match", j))
        yield from _check_route_destinations(tls.route, (*path, "route"), "TLS")
    yield from check_export_to(spec.export_to, ("exportTo",))


def _claims_need_gateway(route: HTTPRoute, path: Path) -> Iterator[Issue]:
    """Istio's rule: only a gateway verifies tokens before routing, so a route of the mesh
    cannot match a JWT claim."""
    for j, m in enumerate(route.match):
        for alias, mapping in (("headers", m.headers), ("withoutHeaders", m.without_headers)):
            for key in mapping:
                if claim_path(key) is not None:
                    yield Issue(
                        (*path, "match", j, alias, key),
                        "JWT claim based routing is only supported for gateways: bind the "
                        "VirtualService to a gateway (gateways: [NAME], without 'mesh')",
                    )


def _check_route_destinations(
    routes: tuple[RouteDestination, ...], path: Path, what: str
) -> Iterator[Issue]:
    if not routes:
        yield Issue(path, f"{what} routes require at least one destination")
    for j, rd in enumerate(routes):
        yield from check_destination(rd.destination, (*path, j, "destination"))
    yield from check_weights(routes, path)


def _check_l4_common(m: L4MatchAttributes | TLSMatchAttributes, path: Path) -> Iterator[Issue]:
    for k, subnet in enumerate(m.destination_subnets):
        err = check_ip_or_cidr(subnet)
        if err:
            yield Issue((*path, "destinationSubnets", k), err)
    yield from check_labels(m.source_labels, (*path, "sourceLabels"))
    for k, gw in enumerate(m.gateways):
        yield from check_gateway_ref(gw, (*path, "gateways", k))


def _check_l4_match(m: L4MatchAttributes, path: Path) -> Iterator[Issue]:
    yield from _check_l4_common(m, path)


def _check_tls_match(m: TLSMatchAttributes, path: Path) -> Iterator[Issue]:
    if not m.sni_hosts:
        yield Issue((*path, "sniHosts"), "at least one SNI host is required")
    for k, sni in enumerate(m.sni_hosts):
        err = check_host(sni)
        if err:
            yield Issue((*path, "sniHosts", k), err)
    yield from _check_l4_common(m, path)


def check_http_route(route: HTTPRoute, path: Path) -> Iterator[Issue]:
    """One ``http[]`` rule."""
    if _fields_set(route, "route", "route") and not route.route:
        yield Issue((*path, "route"), "must not be empty; list at least one destination")
    actions = [
        name
        for name, present in (
            ("route", bool(route.route)),
            ("redirect", route.redirect is not None),
            ("directResponse", route.direct_response is not None),
            ("delegate", route.delegate is not None),
        )
        if present
    ]
    if not actions and not (_fields_set(route, "route", "route") and not route.route):
        yield Issue(path, "one of route, redirect, directResponse or delegate is required")
    elif len(actions) > 1:
        yield Issue(
            path,
            f"only one of route, redirect, directResponse or delegate may be set,"
            f" got {' and '.join(actions)}",
        )
    if route.redirect is not None or route.direct_response is not None:
        what = "redirect" if route.redirect is not None else "directResponse"
        for other, present in (
            ("rewrite", route.rewrite is not None),
            ("fault", route.fault is not None),
            ("mirror", route.mirror is not None or bool(route.mirrors)),
        ):
            if present:
                yield Issue((*path, other), f"cannot be combined with {what}")
    if route.delegate is not None and route.delegate.name == "":
        yield Issue((*path, "delegate", "name"), "delegate name is required")

    for j, m in enumerate(route.match):
        yield from check_http_match(m, (*path, "match", j))
    for j, rd in enumerate(route.route):
        rp: Path = (*path, "route", j)
        yield from check_destination(rd.destination, (*rp, "destination"))
        yield from check_headers(rd.headers, (*rp, "headers"))
    yield from check_weights(route.route, (*path, "route"))

    if route.redirect is not None:
        yield from _check_redirect(route.redirect, (*path, "redirect"))
    if route.direct_response is not None:
        yield from _check_direct_response(route.direct_response, (*path, "directResponse"))
    if route.rewrite is not None:
        rw = route.rewrite
        if rw.uri is not None and rw.uri_regex_rewrite is not None:
            yield Issue((*path, "rewrite"), "only one of uri and uriRegexRewrite may be set")
    yield from _min_duration(route.timeout, (*path, "timeout"))
    if route.retries is not None:
        yield from _check_retries(route.retries, (*path, "retries"))
    if route.fault is not None:
        yield from _check_fault(route.fault, (*path, "fault"))
    if route.mirror is not None and route.mirrors:
        yield Issue((*path, "mirrors"), "mirror and mirrors cannot both be set")
    if route.mirror is not None:
        yield from check_destination(route.mirror, (*path, "mirror"))
    for j, mp in enumerate(route.mirrors):
        yield from check_destination(mp.destination, (*path, "mirrors", j, "destination"))
    if route.cors_policy is not None:
        yield from _check_cors(route.cors_policy, (*path, "corsPolicy"))
    yield from check_headers(route.headers, (*path, "headers"))


def check_http_match(m: HTTPMatchRequest, path: Path) -> Iterator[Issue]:
    """One ``match[]`` entry of an HTTP route."""
    for name in ("uri", "scheme", "method", "authority"):
        yield from check_string_match(getattr(m, name), (*path, name), allow_empty=False)
    for alias, mapping in (
        ("headers", m.headers),
        ("withoutHeaders", m.without_headers),
    ):
        for key, sm in mapping.items():
            # JWT claim routing uses pseudo keys such as "@request.auth.claims.group".
            if claim_path(key) is None:
                err = check_header_name(key, lowercase=True)
                if err:
                    yield Issue((*path, alias, key), err)
            yield from check_string_match(sm, (*path, alias, key), allow_empty=True)
    for key, sm in m.query_params.items():
        if not key:
            yield Issue((*path, "queryParams"), "query parameter name must not be empty")
        yield from check_string_match(sm, (*path, "queryParams", key), allow_empty=True)
    yield from check_labels(m.source_labels, (*path, "sourceLabels"))
    for k, gw in enumerate(m.gateways):
        yield from check_gateway_ref(gw, (*path, "gateways", k))
    if m.source_namespace is not None:
        err = check_dns_label(m.source_namespace, "namespace")
        if err:
            yield Issue((*path, "sourceNamespace"), err)


def _check_redirect(r: HTTPRedirect, path: Path) -> Iterator[Issue]:
    if not r.uri and not r.authority and r.port is None and r.derive_port is None and not r.scheme:
        yield Issue(path, "redirect must set at least one of uri, authority, port, scheme")
    if r.port is not None and r.derive_port is not None:
        yield Issue(path, "only one of port and derivePort may be set")
    if r.redirect_code is not None and not 300 <= r.redirect_code <= 399:
        yield Issue((*path, "redirectCode"), f"must be a 3xx redirect code, got {r.redirect_code}")


def _check_direct_response(d: HTTPDirectResponse, path: Path) -> Iterator[Issue]:
    if not 200 <= d.status <= 599:
        yield Issue((*path, "status"), f"must be between 200 and 599, got {d.status}")
    body = d.body
    if body is None:
        return
    if body.string is not None and body.bytes is not None:
        yield Issue((*path, "body"), "only one of string and bytes may be set")
    size = 0
    if body.string is not None:
        size = len(body.string.encode())
    if body.bytes is not None:
        try:
            size = len(base64.b64decode(body.bytes, validate=True))
        except (binascii.Error, ValueError):
            yield Issue((*path, "body", "bytes"), "must be base64-encoded")
    if size > MAX_DIRECT_RESPONSE_BODY:
        yield Issue((*path, "body"), f"body must be at most 1MiB, got {size} bytes")


def _check_retries(r: HTTPRetry, path: Path) -> Iterator[Issue]:
    yield from _min_duration(r.per_try_timeout, (*path, "perTryTimeout"))
    yield from _min_duration(r.backoff, (*path, "backoff"))
    if r.retry_on:
        for policy in r.retry_on.split(","):
            p = policy.strip()
            if p in RETRY_ON_POLICIES:
                continue
            # isascii/len: isdigit() accepts "²", and int() refuses 4,300+ digits
            if len(p) == 3 and p.isascii() and p.isdigit() and 100 <= int(p) <= 599:
                continue
            yield Issue(
                (*path, "retryOn"),
                f"{p!r} is not a valid retryOn policy; valid policies: "
                + ", ".join(sorted(RETRY_ON_POLICIES))
                + " or an HTTP status code",
            )


def _check_fault(f: HTTPFaultInjection, path: Path) -> Iterator[Issue]:
    if f.delay is None and f.abort is None:
        yield Issue(path, "fault injection requires a delay and/or an abort")
    if f.delay is not None:
        d = f.delay
        if d.fixed_delay is None:
            yield Issue((*path, "delay", "fixedDelay"), "fixedDelay is required")
        yield from _min_duration(d.fixed_delay, (*path, "delay", "fixedDelay"))
        if d.percentage is not None and d.percent is not None:
            yield Issue((*path, "delay"), "only one of percentage and percent may be set")
    if f.abort is not None:
        a = f.abort
        if a.http_status is None and a.grpc_status is None:
            yield Issue((*path, "abort"), "one of httpStatus or grpcStatus is required")
        elif a.http_status is not None and a.grpc_status is not None:
            yield Issue((*path, "abort"), "only one of httpStatus and grpcStatus may be set")
        if a.http_status is not None and not 200 <= a.http_status <= 599:
            yield Issue(
                (*path, "abort", "httpStatus"), f"must be between 200 and 599, got {a.http_status}"
            )
        if a.grpc_status is not None and a.grpc_status not in GRPC_STATUS_CODES:
            yield Issue(
                (*path, "abort", "grpcStatus"),
                f"unknown gRPC status {a.grpc_status!r}; valid: "
                + ", ".join(sorted(GRPC_STATUS_CODES)),
            )


def _check_cors(c: CorsPolicy, path: Path) -> Iterator[Issue]:
    for j, sm in enumerate(c.allow_origins):
        yield from check_string_match(sm, (*path, "allowOrigins", j), allow_empty=False)
    for j, method in enumerate(c.allow_methods):
        if method.upper() not in HTTP_METHODS:
            yield Issue((*path, "allowMethods", j), f"{method!r} is not a valid HTTP method")
    for alias, names in (("allowHeaders", c.allow_headers), ("exposeHeaders", c.expose_headers)):
        for j, name in enumerate(names):
            err = None if name == "*" else check_header_name(name)
            if err:
                yield Issue((*path, alias, j), err)
    if c.max_age is not None and c.max_age != int(c.max_age):
        yield Issue((*path, "maxAge"), "maxAge is only accurate to whole seconds")


# --------------------------------------------------------------------------- DestinationRule


def check_destination_rule(spec: DestinationRuleSpec) -> Iterator[Issue]:
    """Istio's DestinationRule rules."""
    if not spec.host:
        yield Issue(("host",), "host is required")
    else:
        err = check_host(spec.host, allow_ip=True)
        if err:
            yield Issue(("host",), err)
    if spec.traffic_policy is not None:
        yield from check_traffic_policy(spec.traffic_policy, ("trafficPolicy",))
    names: list[tuple[Path, object]] = []
    for i, subset in enumerate(spec.subsets):
        sp: Path = ("subsets", i)
        err = check_dns_label(subset.name, "subset name")
        if err:
            yield Issue((*sp, "name"), err)
        names.append(((*sp, "name"), subset.name))
        yield from check_labels(subset.labels, (*sp, "labels"))
        if subset.traffic_policy is not None:
            yield from check_traffic_policy(subset.traffic_policy, (*sp, "trafficPolicy"))
    yield from check_unique(names, "subset name")
    yield from check_export_to(spec.export_to, ("exportTo",))
    if spec.workload_selector is not None:
        yield from check_labels(spec.workload_selector.labels, ("workloadSelector", "labels"))


def check_traffic_policy(tp: TrafficPolicy, path: Path) -> Iterator[Issue]:
    """A trafficPolicy (top level, per subset or per port)."""
    yield from _check_policy_parts(
        tp.load_balancer, tp.connection_pool, tp.outlier_detection, tp.tls, path
    )
    ports: list[tuple[Path, object]] = []
    for i, pls in enumerate(tp.port_level_settings):
        pp: Path = (*path, "portLevelSettings", i)
        if pls.port is None:
            yield Issue((*pp, "port"), "port is required in portLevelSettings")
        else:
            ports.append(((*pp, "port", "number"), pls.port.number))
        yield from _check_policy_parts(
            pls.load_balancer, pls.connection_pool, pls.outlier_detection, pls.tls, pp
        )
    yield from check_unique(ports, "port")
    if tp.tunnel is not None and not tp.tunnel.target_host:
        yield Issue((*path, "tunnel", "targetHost"), "targetHost is required")


def _check_policy_parts(
    lb: LoadBalancerSettings | None,
    pool: ConnectionPoolSettings | None,
    outlier: OutlierDetection | None,
    tls: ClientTLSSettings | None,
    path: Path,
) -> Iterator[Issue]:
    if lb is not None:
        yield from _check_lb(lb, (*path, "loadBalancer"))
    if pool is not None:
        yield from check_connection_pool(pool, (*path, "connectionPool"))
    if outlier is not None:
        yield from _check_outlier(outlier, (*path, "outlierDetection"))
    if tls is not None:
        yield from _check_client_tls(tls, (*path, "tls"))


def _check_lb(lb: LoadBalancerSettings, path: Path) -> Iterator[Issue]:
    if lb.simple is not None and lb.consistent_hash is not None:
        yield Issue(path, "only one of simple and consistentHash may be set")
    elif (
        lb.simple is None
        and lb.consistent_hash is None
        and lb.locality_lb_setting is None
        and lb.warmup_duration_secs is None
    ):
        yield Issue(path, "one of simple or consistentHash is required")
    ch = lb.consistent_hash
    if ch is not None:
        cp: Path = (*path, "consistentHash")
        keys = [
            name
            for name, present in (
                ("httpHeaderName", ch.http_header_name is not None),
                ("httpCookie", ch.http_cookie is not None),
                ("useSourceIp", bool(ch.use_source_ip)),
                ("httpQueryParameterName", ch.http_query_parameter_name is not None),
            )
            if present
        ]
        if not keys:
            yield Issue(
                cp,
                "one hash key is required: httpHeaderName, httpCookie, useSourceIp"
                " or httpQueryParameterName",
            )
        elif len(keys) > 1:
            yield Issue(cp, f"only one hash key may be set, got {', '.join(keys)}")
        if ch.http_header_name is not None:
            err = check_header_name(ch.http_header_name)
            if err:
                yield Issue((*cp, "httpHeaderName"), err)
        if ch.http_cookie is not None and not ch.http_cookie.name:
            yield Issue((*cp, "httpCookie", "name"), "cookie name is required")
        if ch.ring_hash is not None and ch.maglev is not None:
            yield Issue(cp, "only one of ringHash and maglev may be set")
        if ch.minimum_ring_size is not None and ch.maglev is not None:
            yield Issue((*cp, "minimumRingSize"), "cannot be combined with maglev")
    if lb.locality_lb_setting is not None:
        yield from _check_locality_lb(lb.locality_lb_setting, (*path, "localityLbSetting"))


_TOPOLOGY_LABELS = (
    "topology.kubernetes.io/region",
    "topology.kubernetes.io/zone",
    "topology.istio.io/subzone",
)


def _check_locality_lb(loc: LocalityLoadBalancerSetting, lp: Path) -> Iterator[Issue]:
    """What Istio's validation refuses in a ``localityLbSetting``."""
    if loc.distribute and loc.failover:
        yield Issue(lp, "distribute and failover cannot both be set; keep one")
        return
    if loc.failover:
        for i, entry in enumerate(loc.failover_priority):
            if entry in _TOPOLOGY_LABELS:
                yield Issue(
                    (*lp, "failoverPriority", i),
                    f"{entry!r} cannot be combined with failover (which already orders "
                    "endpoints by region, zone and subzone); remove one of them",
                )
    sources: list[tuple[Path, str]] = []
    for i, dist in enumerate(loc.distribute):
        dp: Path = (*lp, "distribute", i)
        sources.append(((*dp, "from"), dist.from_))
        for target, weight in dist.to.items():
            if not 1 <= weight <= 100:
                yield Issue((*dp, "to", target), f"weight must be 1 to 100, got {weight}")
        total = sum(dist.to.values())
        if total != 100:
            yield Issue((*dp, "to"), f"weights must add up to 100, got {total}")
        yield from _check_localities([((*dp, "to", t), t) for t in dist.to])
    yield from _check_localities(sources)
    for i, fo in enumerate(loc.failover):
        fp: Path = (*lp, "failover", i)
        if fo.from_ == fo.to:
            yield Issue(fp, f"from and to must be different regions, both are {fo.to!r}")
        for name, value in (("from", fo.from_), ("to", fo.to)):
            if "/" in value:
                yield Issue((*fp, name), f"{value!r}: failover names a region only, no '/'")
            elif "*" in value:
                yield Issue((*fp, name), f"{value!r}: failover regions take no '*' wildcard")


def _check_localities(localities: list[tuple[Path, str]]) -> Iterator[Issue]:
    """Localities of ``distribute`` (its ``from`` list, or one ``to`` map), in the order
    given, as Istio checks them: ``region[/zone[/subzone]]`` with no empty part, at most one
    ``*`` and only at the end, and none inside one given before it (``r1`` then ``r1/z1``;
    a ``*`` region covers everything after it). The first problem is reported."""
    tree: dict[str, dict[str, dict[str, bool]]] = {}
    for path, locality in localities:
        stars = locality.count("*")
        if stars > 1 or (stars == 1 and not locality.endswith("*")):
            yield Issue(path, f"{locality!r}: at most one '*' wildcard, and only at the end")
            return
        overlap = Issue(path, f"{locality!r} overlaps a locality given before it")
        if "*" in tree:
            yield overlap
            return
        parts = locality.split("/", 2)
        if any(not p for p in parts):
            yield Issue(path, f"{locality!r}: region, zone and subzone must not be empty")
            return
        region = tree.get(parts[0])
        if len(parts) == 1:
            if region is not None:
                yield overlap
                return
            tree[parts[0]] = {"*": {"*": True}}
        elif region is None:
            tree[parts[0]] = {parts[1]: {(parts[2] if len(parts) == 3 else "*"): True}}
        elif "*" in region:
            yield overlap
            return
        elif len(parts) == 2:
            if parts[1] in region:
                yield overlap
                return
            region[parts[1]] = {"*": True}
        else:
            zone = region.setdefault(parts[1], {})
            if zone.get("*") or zone.get(parts[2]):
                yield overlap
                return
            zone[parts[2]] = True


def check_connection_pool(pool: ConnectionPoolSettings, path: Path) -> Iterator[Issue]:
    """Connection pool durations must be at least 1ms."""
    if pool.tcp is not None:
        tp: Path = (*path, "tcp")
        yield from _min_duration(pool.tcp.connect_timeout, (*tp, "connectTimeout"))
        yield from _min_duration(pool.tcp.max_connection_duration, (*tp, "maxConnectionDuration"))
        yield from _min_duration(pool.tcp.idle_timeout, (*tp, "idleTimeout"))
        ka = pool.tcp.tcp_keepalive
        if ka is not None:
            yield from _min_duration(ka.time, (*tp, "tcpKeepalive", "time"))
            yield from _min_duration(ka.interval, (*tp, "tcpKeepalive", "interval"))
    if pool.http is not None:
        yield from _min_duration(pool.http.idle_timeout, (*path, "http", "idleTimeout"))


def _check_outlier(o: OutlierDetection, path: Path) -> Iterator[Issue]:
    yield from _min_duration(o.interval, (*path, "interval"))
    yield from _min_duration(o.base_ejection_time, (*path, "baseEjectionTime"))
    if o.consecutive_local_origin_failures and not o.split_external_local_origin_errors:
        yield Issue(
            (*path, "consecutiveLocalOriginFailures"),
            "requires splitExternalLocalOriginErrors: true",
        )


def _check_client_tls(t: ClientTLSSettings, path: Path) -> Iterator[Issue]:
    files = [
        alias
        for alias, value in (
            ("clientCertificate", t.client_certificate),
            ("privateKey", t.private_key),
            ("caCertificates", t.ca_certificates),
            ("caCrl", t.ca_crl),
        )
        if value
    ]
    if t.mode == "ISTIO_MUTUAL" and (files or t.credential_name):
        yield Issue(
            path,
            "ISTIO_MUTUAL uses mesh certificates; do not set certificates or credentialName",
        )
    if t.mode in ("SIMPLE", "MUTUAL") and t.credential_name:
        if files:
            yield Issue(path, f"credentialName cannot be combined with {', '.join(files)}")
        return
    if t.mode == "MUTUAL":
        if not t.client_certificate:
            yield Issue((*path, "clientCertificate"), "required for MUTUAL TLS")
        if not t.private_key:
            yield Issue((*path, "privateKey"), "required for MUTUAL TLS")


# ------------------------------------------------------------- ServiceEntry / WorkloadEntry


def _check_ports(ports: tuple[Port, ...], path: Path, *, names_required: bool) -> Iterator[Issue]:
    numbers: list[tuple[Path, object]] = []
    names: list[tuple[Path, object]] = []
    for i, port in enumerate(ports):
        pp: Path = (*path, i)
        numbers.append(((*pp, "number"), port.number))
        if port.name:
            names.append(((*pp, "name"), port.name))
        yield from check_port_name(port.name, (*pp, "name"), required=names_required)
        yield from check_protocol(port.protocol, (*pp, "protocol"), required=True)
    yield from check_unique(numbers, "port number")
    yield from check_unique(names, "port name")


def _check_endpoint_address(address: str, path: Path, *, allow_fqdn: bool) -> Iterator[Issue]:
    if address.startswith("unix://"):
        if len(address) == len("unix://"):
            yield Issue(path, "unix domain socket path must not be empty")
        return
    if is_ip(address):
        return
    if not allow_fqdn:
        yield Issue(path, f"{address!r} is not a valid IP address (resolution STATIC)")
        return
    err = check_fqdn(address)
    if err:
        yield Issue(path, f"{address!r} is not a valid IP address or FQDN")


def check_workload_entry(spec: WorkloadEntrySpec, path: Path = ()) -> Iterator[Issue]:
    """A WorkloadEntry (or a ServiceEntry endpoint, when ``path`` is given)."""
    if not spec.address and not spec.network:
        yield Issue((*path, "address"), "address is required (unless network is set)")
    elif spec.address:
        yield from _check_endpoint_address(spec.address, (*path, "address"), allow_fqdn=True)
    for name in spec.ports:
        err = check_dns_label(name, "port name")
        if err:
            yield Issue((*path, "ports", name), err)
    yield from check_labels(spec.labels, (*path, "labels"))
    if spec.service_account:
        err = check_dns_subdomain(spec.service_account, "service account")
        if err:
            yield Issue((*path, "serviceAccount"), err)


def check_service_entry(spec: ServiceEntrySpec) -> Iterator[Issue]:
    """Istio's ServiceEntry rules."""
    if not spec.hosts:
        yield Issue(("hosts",), "at least one host is required")
    for i, host in enumerate(spec.hosts):
        if host == "*":
            yield Issue(("hosts", i), "'*' is not allowed as a ServiceEntry host")
            continue
        err = check_host(host)
        if err:
            yield Issue(("hosts", i), err)
    for i, addr in enumerate(spec.addresses):
        err = check_ip_or_cidr(addr)
        if err:
            yield Issue(("addresses", i), err)
    yield from _check_ports(spec.ports, ("ports",), names_required=True)
    port_names = {p.name for p in spec.ports if p.name}

    if spec.endpoints and spec.workload_selector is not None:
        yield Issue((), "only one of endpoints and workloadSelector may be set")
    if spec.workload_selector is not None:
        yield from check_labels(spec.workload_selector.labels, ("workloadSelector", "labels"))

    res = spec.resolution
    if res == "NONE" and spec.endpoints:
        yield Issue(("endpoints",), "endpoints must not be set when resolution is NONE")
    if res == "DNS_ROUND_ROBIN" and len(spec.endpoints) > 1:
        yield Issue(("endpoints",), "resolution DNS_ROUND_ROBIN allows at most one endpoint")
    if res in ("DNS", "DNS_ROUND_ROBIN") and not spec.endpoints:
        for i, host in enumerate(spec.hosts):
            if host != "*" and check_fqdn(host):
                yield Issue(
                    ("hosts", i),
                    f"host {host!r} must be a fully qualified domain name when resolution is"
                    f" {res} and no endpoints are given",
                )
    for i, ep in enumerate(spec.endpoints):
        ep_path: Path = ("endpoints", i)
        if not ep.address and not ep.network:
            yield Issue((*ep_path, "address"), "address is required (unless network is set)")
        elif ep.address:
            yield from _check_endpoint_address(
                ep.address, (*ep_path, "address"), allow_fqdn=res != "STATIC"
            )
        for name in ep.ports:
            if name not in port_names:
                yield Issue(
                    (*ep_path, "ports", name),
                    f"port name {name!r} is not declared in spec.ports",
                )
        yield from check_labels(ep.labels, (*ep_path, "labels"))
    yield from check_export_to(spec.export_to, ("exportTo",))


# --------------------------------------------------------------------------- Gateway


def _check_server_tls(tls: ServerTLSSettings, path: Path) -> Iterator[Issue]:
    has_cred = bool(tls.credential_name or tls.credential_names)
    if tls.mode == "ISTIO_MUTUAL" and (
        has_cred or tls.server_certificate or tls.private_key or tls.ca_certificates
    ):
        yield Issue(path, "ISTIO_MUTUAL cannot be combined with certificates or credentialName")
    if tls.mode in ("SIMPLE", "MUTUAL", "OPTIONAL_MUTUAL") and not has_cred:
        if not tls.server_certificate:
            yield Issue(
                (*path, "serverCertificate"),
                f"{tls.mode} TLS requires credentialName or serverCertificate",
            )
        if not tls.private_key:
            yield Issue(
                (*path, "privateKey"), f"{tls.mode} TLS requires credentialName or privateKey"
            )
        if tls.mode != "SIMPLE" and not tls.ca_certificates:
            yield Issue(
                (*path, "caCertificates"),
                f"{tls.mode} TLS requires credentialName or caCertificates",
            )
    if tls.credential_name and tls.credential_names:
        yield Issue(path, "only one of credentialName and credentialNames may be set")
    if tls.ca_crl and has_cred:
        yield Issue(
            (*path, "caCrl"),
            "CRL is not supported with credentialName (as in Istio); put the CRL in the credential",
        )
    # Envoy refuses a TLS context whose maximum is below its minimum (TLSV1_2 when unset).
    low = tls.min_protocol_version if tls.min_protocol_version not in (None, "TLS_AUTO") else ""
    high = tls.max_protocol_version if tls.max_protocol_version not in (None, "TLS_AUTO") else ""
    if high and high < (low or "TLSV1_2"):
        yield Issue(
            (*path, "maxProtocolVersion"),
            f"maxProtocolVersion {high} is below minProtocolVersion {low or 'TLSV1_2'}"
            + ("" if low else " (the default)")
            + "; raise it or lower minProtocolVersion",
        )


def check_gateway(spec: GatewaySpec) -> Iterator[Issue]:
    """Istio's Gateway rules."""
    yield from check_labels(spec.selector, ("selector",))
    if not spec.servers:
        yield Issue(("servers",), "at least one server is required")
    first_by_name: dict[str, int] = {}
    server_names: list[tuple[Path, object]] = []
    for i, server in enumerate(spec.servers):
        sp: Path = ("servers", i)
        port = server.port
        yield from check_port_name(port.name, (*sp, "port", "name"), required=True)
        yield from check_protocol(port.protocol, (*sp, "port", "protocol"), required=True)
        if port.name:
            # As Istio's validation: port names are unique among a Gateway's servers, on
            # any port and protocol (HTTPS route tables are named after them, too).
            first = first_by_name.setdefault(port.name, i)
            if first != i:
                yield Issue(
                    (*sp, "port", "name"),
                    f"port name {port.name!r} is already used by servers[{first}] (port "
                    f"{spec.servers[first].port.number}); port names in a Gateway's servers "
                    "must be unique: rename one",
                )
        if not server.hosts:
            yield Issue((*sp, "hosts"), "at least one host is required")
        for j, host in enumerate(server.hosts):
            yield from check_namespaced_host(host, (*sp, "hosts", j))
        proto = (port.protocol or "").upper()
        if proto in _TLS_PROTOCOLS and server.tls is None:
            yield Issue((*sp, "tls"), f"tls settings are required for {proto} servers")
        if server.tls is not None:
            if proto not in _TLS_PROTOCOLS and not server.tls.https_redirect:
                yield Issue(
                    (*sp, "tls"),
                    f"tls settings are only allowed on HTTPS/TLS servers (port protocol is"
                    f" {port.protocol!r}) unless httpsRedirect is set",
                )
            yield from _check_server_tls(server.tls, (*sp, "tls"))
        if server.bind and not (server.bind.startswith("unix://") or is_ip(server.bind)):
            yield Issue((*sp, "bind"), f"{server.bind!r} must be an IP address or unix://path")
        if server.name:
            server_names.append(((*sp, "name"), server.name))
    yield from check_unique(server_names, "server name")


# --------------------------------------------------------------------------- Sidecar


def check_sidecar(spec: SidecarSpec) -> Iterator[Issue]:
    """Istio's Sidecar rules."""
    if spec.workload_selector is not None:
        yield from check_labels(spec.workload_selector.labels, ("workloadSelector", "labels"))
    ingress_ports: list[tuple[Path, object]] = []
    for i, ing in enumerate(spec.ingress):
        ip: Path = ("ingress", i)
        yield from check_port_name(ing.port.name, (*ip, "port", "name"), required=False)
        yield from check_protocol(ing.port.protocol, (*ip, "port", "protocol"), required=False)
        ingress_ports.append(((*ip, "port", "number"), (ing.bind or "", ing.port.number)))
        if ing.tls is not None:
            yield from _check_server_tls(ing.tls, (*ip, "tls"))
        if ing.connection_pool is not None:
            yield from check_connection_pool(ing.connection_pool, (*ip, "connectionPool"))
    yield from check_unique(ingress_ports, "ingress (bind, port)")
    portless = 0
    for i, eg in enumerate(spec.egress):
        ep: Path = ("egress", i)
        if eg.port is None:
            portless += 1
            if portless > 1:
                yield Issue(ep, "only one egress listener may omit the port")
            elif i != len(spec.egress) - 1:
                yield Issue(ep, "the egress listener without a port must be the last one")
        else:
            yield from check_port_name(eg.port.name, (*ep, "port", "name"), required=False)
            yield from check_protocol(eg.port.protocol, (*ep, "port", "protocol"), required=False)
        if not eg.hosts:
            yield Issue((*ep, "hosts"), "at least one host is required (namespace/host)")
        for j, host in enumerate(eg.hosts):
            if "/" not in host:
                yield Issue((*ep, "hosts", j), f"host {host!r} must have the form namespace/host")
            else:
                yield from check_namespaced_host(host, (*ep, "hosts", j))
    otp = spec.outbound_traffic_policy
    if otp is not None and otp.egress_proxy is not None:
        if otp.mode != "ALLOW_ANY":
            yield Issue(
                ("outboundTrafficPolicy", "egressProxy"),
                "egressProxy requires mode ALLOW_ANY",
            )
        yield from check_destination(otp.egress_proxy, ("outboundTrafficPolicy", "egressProxy"))
    if spec.inbound_connection_pool is not None:
        yield from check_connection_pool(spec.inbound_connection_pool, ("inboundConnectionPool",))
