"""Routes: the outbound RouteConfiguration, one virtual host per service port and per
VirtualService host, routes in rule order with first-match-wins."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from typing import Any

from tsunagi import protocols
from tsunagi.api import (
    CorsPolicy,
    Destination,
    Headers,
    HTTPFaultInjection,
    HTTPMatchRequest,
    HTTPRetry,
    HTTPRoute,
    ResourceOf,
    StringMatch,
    VirtualServiceSpec,
    format_duration,
    fqdn,
)
from tsunagi.api.checks_networking import GRPC_STATUS_NAMES, MAX_DIRECT_RESPONSE_BODY
from tsunagi.api.jwt_claims import claim_path
from tsunagi.mesh import ClientScope, World
from tsunagi.mesh.delegation import delegates_of, expand
from tsunagi.mesh.outbound_policy import outbound_policy
from tsunagi.mesh.visibility import exported_to
from tsunagi.proxy_contract import PEER_ENV, PEER_HEADER
from tsunagi.xds.translate import connect, egress, jwt_authn, passthrough
from tsunagi.xds.translate.isolation import LastGood, TranslationError, isolated
from tsunagi.xds.translate.names import (
    OUTBOUND_ROUTE,
    outbound_cluster,
    parse_outbound_cluster,
    service_domains,
    virtual_host_domains,
)
from tsunagi.xds.translate.policy import Labels, route_hash_policy, route_passes_through
from tsunagi.xds.translate.protos import (
    CORS_POLICY_TYPE,
    FAULT_TYPE,
    FILTER_CONFIG_TYPE,
    PREVIOUS_HOSTS_TYPE,
    PREVIOUS_PRIORITIES_TYPE,
)

# Istio's defaults, written out so that what Envoy runs is what we say it runs. Since Istio
# 1.24 (EXCLUDE_UNSAFE_503_FROM_DEFAULT_RETRY, on by default) the default retries no status
# code: an app's 503 may come after it did the work, so retrying it is not safe. Istio keeps
# ``retriable-status-codes`` with an empty list, so only codes a client asks for in
# ``x-envoy-retriable-status-codes`` are retried; so do we.
DEFAULT_RETRY_ON = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
DEFAULT_RETRIES = 2


PREVIOUS_HOSTS = {
    "name": "envoy.retry_host_predicates.previous_hosts",
    "typed_config": {"@type": PREVIOUS_HOSTS_TYPE},
}


def retry_policy(retries: HTTPRetry | None, hashing: bool = False) -> dict[str, Any] | None:
    """Istio's default policy unless the route sets ``retries`` (attempts 0 disables it).

    ``hashing``: the destination uses consistent hashing, so, as Istio's
    DefaultConsistentHashPolicy, retries do not avoid the hosts already tried (they would
    leave the hashed host) unless ``retryIgnorePreviousHosts`` asks for it.
    """
    attempts = DEFAULT_RETRIES if retries is None else retries.attempts
    if not attempts:
        return None
    policy: dict[str, Any] = {
        "retry_on": DEFAULT_RETRY_ON,
        "num_retries": attempts,
        "retry_host_predicate": [] if hashing else [PREVIOUS_HOSTS],
        "host_selection_retry_max_attempts": "5",
    }
    if retries is not None:
        if retries.retry_on:
            parts = [c.strip() for c in retries.retry_on.split(",") if c.strip()]
            codes = [int(c) for c in parts if c.isdigit()]
            kinds = [c for c in parts if not c.isdigit()]
            if codes and "retriable-status-codes" not in kinds:
                kinds.append("retriable-status-codes")
            policy["retry_on"] = ",".join(kinds)
            if codes:
                policy["retriable_status_codes"] = codes
        if retries.per_try_timeout is not None:
            policy["per_try_timeout"] = format_duration(retries.per_try_timeout)
        if retries.retry_ignore_previous_hosts is not None:
            policy["retry_host_predicate"] = (
                [PREVIOUS_HOSTS] if retries.retry_ignore_previous_hosts else []
            )
        if retries.retry_remote_localities:
            policy["retry_priority"] = {
                "name": "envoy.retry_priorities.previous_priorities",
                "typed_config": {"@type": PREVIOUS_PRIORITIES_TYPE, "update_frequency": 2},
            }
        if retries.backoff is not None:
            policy["retry_back_off"] = {"base_interval": format_duration(retries.backoff)}
    if not policy["retry_host_predicate"]:
        del policy["retry_host_predicate"]
    return policy


#: The redirect codes Envoy can send; Istio leaves out a route asking for another 3xx.
REDIRECT_CODES = {
    301: "MOVED_PERMANENTLY",
    302: "FOUND",
    303: "SEE_OTHER",
    307: "TEMPORARY_REDIRECT",
    308: "PERMANENT_REDIRECT",
}

FAULT_FILTER = "envoy.filters.http.fault"
CORS_FILTER = "envoy.filters.http.cors"


def enabled_filter(config: dict[str, Any]) -> dict[str, Any]:
    """Per-route config for an HTTP filter that the listener leaves disabled (CORS and fault
    injection, see ``listeners.OUTBOUND_FILTERS``): turns it on for this route only."""
    return {"@type": FILTER_CONFIG_TYPE, "config": config}


def fractional_percent(value: float) -> dict[str, Any]:
    """A FractionalPercent for a percentage: whole numbers over a hundred, anything finer
    over a million (Istio's precision: four decimal places)."""
    if value == int(value):
        return {"numerator": int(value), "denominator": "HUNDRED"}
    return {"numerator": round(value * 10_000), "denominator": "MILLION"}


def fault_config(fault: HTTPFaultInjection) -> dict[str, Any]:
    """Per-route HTTPFault config; a fault without a percentage applies to every request."""
    out: dict[str, Any] = {"@type": FAULT_TYPE}
    if (d := fault.delay) is not None and d.fixed_delay is not None:
        if d.percentage is not None:
            pct = d.percentage.value
        else:
            pct = d.percent if d.percent is not None else 100
        out["delay"] = {
            "fixed_delay": format_duration(d.fixed_delay),
            "percentage": fractional_percent(pct),
        }
    if (a := fault.abort) is not None:
        abort: dict[str, Any] = {}
        if a.http_status is not None:
            abort["http_status"] = a.http_status
        elif a.grpc_status is not None:
            abort["grpc_status"] = GRPC_STATUS_NAMES.index(a.grpc_status)
        pct = a.percentage.value if a.percentage is not None else 100
        abort["percentage"] = fractional_percent(pct)
        out["abort"] = abort
    return out


def cors_config(c: CorsPolicy) -> dict[str, Any]:
    """Per-route CorsPolicy, as Istio writes it (lists joined with commas)."""
    origins = [_string_match(m) for m in c.allow_origins]
    origins += [{"exact": o} for o in c.allow_origin]
    out: dict[str, Any] = {"@type": CORS_POLICY_TYPE}
    if origins:
        out["allow_origin_string_match"] = origins
    for key, values in (
        ("allow_methods", c.allow_methods),
        ("allow_headers", c.allow_headers),
        ("expose_headers", c.expose_headers),
    ):
        if values:
            out[key] = ",".join(values)
    if c.max_age is not None:
        out["max_age"] = str(int(c.max_age))
    if c.allow_credentials is not None:
        out["allow_credentials"] = c.allow_credentials
    if c.unmatched_preflights == "IGNORE":
        out["forward_not_matching_preflights"] = False
    return out


def header_operations(
    headers: Headers | None, into: dict[str, Any], names: tuple[str, str, str, str]
) -> None:
    """Add Istio header edits to ``into`` under Envoy's four field ``names`` (request add,
    request remove, response add, response remove): ``set`` overwrites, ``add`` appends."""
    if headers is None:
        return
    for ops, add_key, remove_key in (
        (headers.request, names[0], names[1]),
        (headers.response, names[2], names[3]),
    ):
        if ops is None:
            continue
        adds = into.setdefault(add_key, [])
        for values, action in (
            (ops.set, "OVERWRITE_IF_EXISTS_OR_ADD"),
            (ops.add, "APPEND_IF_EXISTS_OR_ADD"),
        ):
            for name, value in values.items():
                adds.append({"header": {"key": name, "value": value}, "append_action": action})
        if not adds:
            del into[add_key]
        if ops.remove:
            into.setdefault(remove_key, []).extend(ops.remove)


ROUTE_HEADERS = (
    "request_headers_to_add",
    "request_headers_to_remove",
    "response_headers_to_add",
    "response_headers_to_remove",
)


def _string_match(m: StringMatch, ignore_case: bool = False) -> dict[str, Any]:
    out: dict[str, Any]
    if m.exact is not None:
        out = {"exact": m.exact}
    elif m.prefix is not None:
        out = {"prefix": m.prefix}
    else:
        out = {"safe_regex": {"regex": m.regex}}
    if ignore_case and "safe_regex" not in out:
        out["ignore_case"] = True
    return out


def _header(name: str, m: StringMatch | None, invert: bool = False) -> dict[str, Any]:
    h: dict[str, Any] = {"name": name}
    if m is None or (m.exact is None and m.prefix is None and m.regex is None):
        h["present_match"] = True
    else:
        h["string_match"] = _string_match(m)
    if invert:
        h["invert_match"] = True
    return h


def _claim(path: list[str], m: StringMatch | None, invert: bool) -> dict[str, Any]:
    if m is None or m.is_empty:
        out = jwt_authn.claim_present(path)
    else:
        out = jwt_authn.claim_matcher(path, _string_match(m))
    return {**out, "invert": True} if invert else out


def route_match(match: HTTPMatchRequest | None) -> dict[str, Any]:
    """An Envoy RouteMatch for one Istio HTTPMatchRequest (``None`` matches everything)."""
    if match is None:
        return {"prefix": "/"}
    out: dict[str, Any] = {}
    uri = match.uri
    if uri is None or uri.prefix is not None:
        out["prefix"] = uri.prefix if uri is not None else "/"
    elif uri.exact is not None:
        out["path"] = uri.exact
    else:
        out["safe_regex"] = {"regex": uri.regex}
    if match.ignore_uri_case:
        out["case_sensitive"] = False
    headers, claims = [], []
    for invert, mapping in ((False, match.headers), (True, match.without_headers)):
        for name, m in (mapping or {}).items():
            path = claim_path(name)
            if path is None:
                headers.append(_header(name, m, invert))
            else:  # a claim of the token the gateway's jwt_authn filter verified
                claims.append(_claim(path, m, invert))
    for pseudo, pm in (
        (":method", match.method),
        (":authority", match.authority),
        (":scheme", match.scheme),
    ):
        if pm is not None:
            headers.append(_header(pseudo, pm))
    if headers:
        out["headers"] = headers
    if claims:
        out["dynamic_metadata"] = claims
    params = []
    for name, m in (match.query_params or {}).items():
        if m is None or (m.exact is None and m.prefix is None and m.regex is None):
            params.append({"name": name, "present_match": True})
        else:
            params.append({"name": name, "string_match": _string_match(m)})
    if params:
        out["query_parameters"] = params
    return out


def is_catch_all(match: HTTPMatchRequest | None) -> bool:
    """True when a match accepts every request, so later routes could never be reached."""
    if match is None:
        return True
    uri = match.uri
    return (
        (uri is None or (uri.prefix == "/" and not match.ignore_uri_case) or uri.regex == ".*")
        and not match.headers
        and not match.without_headers
        and match.method is None
        and match.authority is None
        and match.scheme is None
        and not match.query_params
        and match.port is None
        and not match.source_labels
        and not match.source_namespace
        and not match.gateways
    )


def _targets(action: dict[str, Any]) -> list[str]:
    """The clusters a route action forwards to."""
    if "cluster" in action:
        return [action["cluster"]]
    return [c["name"] for c in action["weighted_clusters"]["clusters"]]


class RouteBuilder:
    """Routes for the sidecars of one client scope; looks services up in the World."""

    def __init__(self, world: World, scope: ClientScope) -> None:
        self.world = world
        self.scope = scope
        self.namespace = scope.namespace

    def destination_cluster(
        self, dest: Destination, rule_ns: str, vhost_host: str, port: int
    ) -> str:
        host = fqdn(dest.host, rule_ns)
        svc = self.world.services.get(host)
        if dest.port is not None and dest.port.number:
            dport = dest.port.number
        elif host == vhost_host or svc is None:
            dport = port
        elif len(svc.ports) == 1 or port not in svc.ports:
            dport = svc.ports[0]
        else:
            dport = port
        return outbound_cluster(host, dport, dest.subset or "")

    def action(self, http: HTTPRoute, rule_ns: str, host: str, port: int) -> dict[str, Any]:
        """The part of a route after its match: redirect, direct response or forward."""
        if http.redirect is not None:
            r = http.redirect
            redirect: dict[str, Any] = {}
            if r.uri:
                redirect["path_redirect"] = r.uri
            if r.authority:
                redirect["host_redirect"] = r.authority
            if r.port:
                redirect["port_redirect"] = r.port
            elif r.derive_port == "FROM_REQUEST_PORT":
                # Envoy cannot take the port from the request; a route table is built for
                # one port, so, as Istio, name that port. FROM_PROTOCOL_DEFAULT sets none.
                redirect["port_redirect"] = port
            if r.scheme:
                redirect["scheme_redirect"] = r.scheme
            redirect["response_code"] = REDIRECT_CODES[r.redirect_code or 301]
            return {"redirect": redirect}
        if http.direct_response is not None:
            d = http.direct_response
            resp: dict[str, Any] = {"status": d.status}
            if d.body is not None:
                if d.body.string is not None:
                    resp["body"] = {"inline_string": d.body.string}
                elif d.body.bytes is not None:
                    resp["body"] = {"inline_bytes": d.body.bytes}
            return {"direct_response": resp}
        dests = [d for d in http.route if len(http.route) == 1 or (d.weight or 0) > 0]
        action: dict[str, Any] = {}
        if len(dests) == 1:
            action["cluster"] = self.destination_cluster(dests[0].destination, rule_ns, host, port)
        else:
            clusters = []
            for rd in dests:
                wc = {
                    "name": self.destination_cluster(rd.destination, rule_ns, host, port),
                    "weight": rd.weight,
                }
                header_operations(rd.headers, wc, ROUTE_HEADERS)
                clusters.append(wc)
            action["weighted_clusters"] = {"clusters": clusters}
        if (rw := http.rewrite) is not None:
            # Istio rewrites the matched prefix, or the whole path of an exact or regex match.
            if rw.uri_regex_rewrite is not None:
                action["regex_rewrite"] = {
                    "pattern": {"regex": rw.uri_regex_rewrite.match},
                    "substitution": rw.uri_regex_rewrite.rewrite,
                }
            elif rw.uri:
                action["prefix_rewrite"] = rw.uri
            if rw.authority:
                action["host_rewrite_literal"] = rw.authority
        action["timeout"] = format_duration(http.timeout) if http.timeout is not None else "0s"
        targets = _targets(action)
        if hashing := route_hash_policy(self.world, targets, self.namespace, self.scope.labels):
            action["hash_policy"] = hashing
        policy = retry_policy(http.retries, hashing=bool(hashing))
        if policy is not None:
            action["retry_policy"] = policy
        mirrors = [(http.mirror, http.mirror_percentage)] if http.mirror is not None else []
        mirrors += [(m.destination, m.percentage) for m in http.mirrors]
        policies = []
        for dest, pct in mirrors:
            if pct is not None and pct.value == 0:
                continue  # Istio: a 0% mirror is no mirror
            mirror: dict[str, Any] = {
                "cluster": self.destination_cluster(dest, rule_ns, host, port)
            }
            if pct is not None and pct.value < 100:
                mirror["runtime_fraction"] = {"default_value": fractional_percent(pct.value)}
            policies.append(mirror)
        if policies:
            action["request_mirror_policies"] = policies
        return {"route": action}

    def route_extras(self, http: HTTPRoute) -> dict[str, Any]:
        """What a route carries besides its match and action: header edits (the route's,
        then its only destination's, as Istio merges them) and per-route filter config."""
        out: dict[str, Any] = {}
        header_operations(http.headers, out, ROUTE_HEADERS)
        dests = [d for d in http.route if len(http.route) == 1 or (d.weight or 0) > 0]
        if len(dests) == 1 and http.redirect is None and http.direct_response is None:
            header_operations(dests[0].headers, out, ROUTE_HEADERS)
        per_filter: dict[str, Any] = {}
        if http.cors_policy is not None:
            per_filter[CORS_FILTER] = enabled_filter(cors_config(http.cors_policy))
        if http.fault is not None:
            per_filter[FAULT_FILTER] = enabled_filter(fault_config(http.fault))
        if per_filter:
            out["typed_per_filter_config"] = per_filter
        return out

    def vs_routes(
        self, vs: ResourceOf[VirtualServiceSpec], host: str, port: int | None
    ) -> list[dict[str, Any]]:
        """The routes of one VirtualService for one host (and port, if a service port), with
        delegating routes replaced by their delegate's (see :mod:`tsunagi.mesh.delegation`)."""
        routes: list[dict[str, Any]] = []
        for expanded in expand(self.world.delegates, vs):
            http = expanded.http
            if (rd := http.redirect) is not None and (
                rd.redirect_code or 301
            ) not in REDIRECT_CODES:
                continue  # Envoy cannot send this code; Istio drops the route, apply warns
            for match in http.match or [None]:
                if match is not None and not self._applies(match, port):
                    continue
                route = {
                    "match": route_match(match),
                    **self.action(http, vs.namespace, host, port or 80),
                    **self.route_extras(http),
                }
                route["name"] = http.name or expanded.default_name
                routes.append(self._with_passthrough(route))
                if is_catch_all(match):
                    return routes
        return routes

    def _applies(self, match: HTTPMatchRequest, port: int | None) -> bool:
        """Whether a match can hold for sidecars of this scope on this port.

        As Istio's sourceMatchHTTP: a match naming gateways applies to sidecars when it names
        ``mesh`` (and its source fields are then not consulted); otherwise the sidecar's
        labels must include ``sourceLabels`` and its namespace equal ``sourceNamespace``.
        The scope keeps every label key that some ``sourceLabels`` names, so the labels
        compared here are the sidecar's own.
        """
        if match.port is not None and match.port != port:
            return False
        if match.gateways:
            return "mesh" in match.gateways
        labels = dict(self.scope.labels)
        if any(labels.get(k) != v for k, v in match.source_labels.items()):
            return False
        return not match.source_namespace or match.source_namespace == self.namespace

    def default_route(self, host: str, port: int) -> dict[str, Any]:
        cluster = outbound_cluster(host, port)
        hashing = route_hash_policy(self.world, [cluster], self.namespace, self.scope.labels)
        route: dict[str, Any] = {
            "name": "default",
            "match": {"prefix": "/"},
            "route": {
                "cluster": outbound_cluster(host, port),
                "timeout": "0s",
                "retry_policy": retry_policy(None, hashing=bool(hashing)),
            },
        }
        if hashing:
            route["route"]["hash_policy"] = hashing  # DestinationRule consistentHash
        return self._with_passthrough(route)

    def _with_passthrough(self, route: dict[str, Any]) -> dict[str, Any]:
        """``route``, turning on the dynamic forward proxy filter when it forwards to a
        PASSTHROUGH cluster (see :mod:`.passthrough`)."""
        action = route.get("route")
        if action is None:
            return route
        targets = _targets(action)
        if route_passes_through(self.world, targets, self.namespace, self.scope.labels):
            route.setdefault("typed_per_filter_config", {})[passthrough.FILTER_NAME] = (
                passthrough.ROUTE_CONFIG
            )
        return route

    def _bound(self, host: str, wildcards: bool) -> Iterator[ResourceOf[VirtualServiceSpec]]:
        """VirtualServices that bind ``host`` for sidecars of this namespace (bound to
        ``mesh``, exported here): the exact host's, then (``wildcards``) those of the
        wildcard hosts that cover it, most specific first."""
        candidates = [host]
        if wildcards:
            parts = host.split(".")
            candidates += ["*." + ".".join(parts[i:]) for i in range(1, len(parts))] + ["*"]
        for h in candidates:
            for vs in self.world.virtual_services.get(h, ()):
                # exportTo: a VirtualService not exported to this namespace does not exist here.
                if "mesh" in (vs.spec.gateways or ("mesh",)) and exported_to(
                    vs.spec.export_to, vs.namespace, self.namespace
                ):
                    yield vs

    def virtual_service_for(
        self, host: str, wildcards: bool = False
    ) -> ResourceOf[VirtualServiceSpec] | None:
        """The VirtualService that binds ``host`` for sidecars: an exact host first, then
        (for services) the most specific wildcard host (``*.example.com``) that covers it."""
        return next(self._bound(host, wildcards), None)

    def virtual_services_for(self, host: str) -> list[ResourceOf[VirtualServiceSpec]]:
        """Every VirtualService that binds ``host`` for sidecars (its own host or a wildcard
        covering it), in Istio's config order (creation time; here namespace, then name, as
        elsewhere). Istio reads the ``tcp:`` and ``tls:`` routes of all of them in that order
        (``getConfigsForHost``), where HTTP takes the first VirtualService's only."""
        found = {vs.key: vs for vs in self._bound(host, wildcards=True)}
        return sorted(found.values(), key=lambda v: (v.namespace, v.name))


PEER_HEADER_TO_ADD = {
    "header": {"key": PEER_HEADER, "value": f"%ENVIRONMENT({PEER_ENV})%"},
    "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
}
"""Who is calling, for the server sidecar's metrics (its ``source_*`` labels). Route configs
are shared by a namespace's sidecars; each Envoy fills in its own identity."""


def in_mesh(world: World, host: str) -> bool:
    """Whether ``host`` is served inside the mesh: a registered service, or a host only
    ServiceEntries declare with at least one ``location: MESH_INTERNAL``."""
    entries = world.service_entries.get(host, ())
    if not entries or any(se.spec.location == "MESH_INTERNAL" for se in entries):
        return host in world.services
    svc = world.services.get(host)
    ports = svc.ports if svc is not None else ()
    return any(ep.registered for p in ports for ep in world.endpoints.get((host, p), ()))


def _to_mesh(world: World, cluster: str, namespace: str, labels: Labels = ()) -> bool:
    ref = parse_outbound_cluster(cluster)
    return (
        ref is not None
        and in_mesh(world, ref.host)
        and not route_passes_through(world, [cluster], namespace, labels)
    )


def without_peer_header(
    world: World, route: dict[str, Any], namespace: str, labels: Labels = ()
) -> dict[str, Any]:
    """``route`` with the caller's identity header (added to every request by the route
    configuration, :data:`PEER_HEADER_TO_ADD`) removed where it leaves the mesh: toward an
    external host (MESH_EXTERNAL ServiceEntry) or PASSTHROUGH traffic, which must never
    learn the workload's name, and on a route that mirrors outside the mesh (mirrors copy
    the request's headers). Added once per route configuration and removed only where
    needed, because adding it on every route grew each sidecar's routes by ~10 % and the
    control plane's peak memory at 1,000 proxies by 0.5 GB. Returns a new dict when it
    changes anything: routes may be cached last-good values. ``labels``: the client's, for
    its DestinationRule lookup."""
    action = route.get("route")
    if action is None:
        return route
    to_mesh = partial(_to_mesh, world, namespace=namespace, labels=labels)
    mirrors = [m["cluster"] for m in action.get("request_mirror_policies", ())]
    leaves = not all(to_mesh(m) for m in mirrors) or (
        "cluster" in action and not to_mesh(action["cluster"])
    )
    if leaves:
        removed = [*route.get("request_headers_to_remove", ()), PEER_HEADER]
        return {**route, "request_headers_to_remove": removed}
    weighted = action.get("weighted_clusters")
    if weighted is None or all(to_mesh(c["name"]) for c in weighted["clusters"]):
        return route
    clusters = [
        c
        if to_mesh(c["name"])
        else {
            **c,
            "request_headers_to_remove": [*c.get("request_headers_to_remove", ()), PEER_HEADER],
        }
        for c in weighted["clusters"]
    ]
    return {**route, "route": {**action, "weighted_clusters": {**weighted, "clusters": clusters}}}


def outbound_route_configuration(
    world: World,
    scope: ClientScope | str,
    errors: list[TranslationError] | None = None,
    last_good: LastGood | None = None,
) -> dict[str, Any]:
    """The RouteConfiguration behind the outbound (HTTP_PROXY) listener.

    Each VirtualService is translated on its own for each host and port: one that fails keeps
    its last good routes from ``last_good`` (or, if it never translated, is left out and its
    service gets the default route); the failure is appended to ``errors``.
    """
    scope = ClientScope(scope) if isinstance(scope, str) else scope
    namespace = scope.namespace
    builder = RouteBuilder(world, scope)
    errors = [] if errors is None else errors
    vhosts: list[dict[str, Any]] = []
    seen: set[str] = set()

    def add(name: str, domains: list[str], routes: list[dict[str, Any]]) -> None:
        fresh = [d for d in domains if d not in seen]
        seen.update(fresh)
        if fresh:
            routes = [without_peer_header(world, r, namespace, scope.labels) for r in routes]
            vhosts.append({"name": name, "domains": fresh, "routes": routes})

    def routes_of(
        vs: ResourceOf[VirtualServiceSpec], host: str, port: int | None
    ) -> list[dict[str, Any]] | None:
        where = f"{host}:{port}" if port is not None else host
        return isolated(
            errors,
            last_good,
            ("routes", scope, vs.key, host, port),
            vs.key,
            lambda: (vs.key, *delegates_of(world.delegates, vs)),  # a delegate may be at fault
            lambda: (
                f"routes of {vs.kind} {vs.qualified_name} for {where} "
                f"(clients in namespace {namespace})"
            ),
            partial(builder.vs_routes, vs, host, port),
            None,
        )

    hidden = world.hidden_services(namespace)  # ServiceEntries not exported here
    for svc in world.services.values():
        if svc.hostname in hidden:
            continue
        vs = builder.virtual_service_for(svc.hostname, wildcards=True)
        for port in svc.ports:
            if not protocols.is_http(svc.protocol(port)):
                # No HTTP route pretends to serve a TCP port (TCP routing is not applied
                # yet): a request for it gets the proxy's 404, not a garbled upstream.
                continue
            routes = routes_of(vs, svc.hostname, port) if vs is not None else None
            if routes is None:
                routes = [builder.default_route(svc.hostname, port)]
            add(f"{svc.hostname}:{port}", service_domains(svc, port, namespace), routes)
    for host in world.virtual_services:
        if host in world.services:
            continue
        vs = builder.virtual_service_for(host)
        if vs is None or not vs.spec.http:
            # Only tls/tcp routes: no virtual host, which would claim the name (and its
            # CONNECTs, see :mod:`.connect`) from the catch-all with no route at all.
            continue
        if (routes := routes_of(vs, host, None)) is not None:
            add(host, virtual_host_domains(host, namespace), routes)
    # CONNECTs to TLS ports (see :mod:`.connect`), before the catch-alls claim their domains.
    # The client's labels: a selector DestinationRule's PASSTHROUGH changes the tunnel.
    connects = connect.connect_virtual_hosts(world, namespace, hidden, scope.labels)
    for name, domains, routes in connects:
        add(name, domains, routes)
    # Last, what no service's virtual host owns (see :mod:`.egress`).
    if not_http := egress.not_http_domains(world, namespace, hidden):
        add(egress.NOT_HTTP_ROUTE, not_http, [egress.not_http_route()])
    policy = outbound_policy(world, scope)
    name, last = egress.catch_all_route(policy)
    passes = partial(route_passes_through, world, namespace=namespace, labels=scope.labels)
    add(
        name,
        ["*"],
        [
            connect.unknown_host_route(policy),
            *egress.cidr_routes(world, hidden, passes),
            last,
        ],
    )
    return {
        "name": OUTBOUND_ROUTE,
        "virtual_hosts": vhosts,
        "validate_clusters": False,
        "request_headers_to_add": [PEER_HEADER_TO_ADD],
        # The most specific mutation last, so a route's removal of PEER_HEADER wins over the
        # route configuration's addition (Envoy's default applies the configuration's last).
        "most_specific_header_mutations_wins": True,
        # Envoy's default (4 KiB) would NACK directResponse bodies that validation allows.
        "max_direct_response_body_size_bytes": MAX_DIRECT_RESPONSE_BODY,
    }
