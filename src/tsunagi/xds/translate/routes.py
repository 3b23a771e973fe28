"""Routes: the outbound RouteConfiguration, one virtual host per service port and per
VirtualService host, routes in rule order with first-match-wins."""

from __future__ import annotations

from functools import partial
from typing import Any

from tsunagi.api import (
    Destination,
    HTTPMatchRequest,
    HTTPRetry,
    HTTPRoute,
    ResourceOf,
    StringMatch,
    VirtualServiceSpec,
    format_duration,
    fqdn,
)
from tsunagi.mesh import World
from tsunagi.xds.translate.isolation import LastGood, TranslationError, isolated
from tsunagi.xds.translate.names import (
    OUTBOUND_ROUTE,
    outbound_cluster,
    service_domains,
    virtual_host_domains,
)
from tsunagi.xds.translate.protos import PREVIOUS_HOSTS_TYPE

# Istio's defaults, written out so that what Envoy runs is what we say it runs.
DEFAULT_RETRY_ON = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
DEFAULT_RETRIES = 2


def retry_policy(retries: HTTPRetry | None) -> dict[str, Any] | None:
    """Istio's default policy unless the route sets ``retries`` (attempts 0 disables it)."""
    attempts = DEFAULT_RETRIES if retries is None else retries.attempts
    if not attempts:
        return None
    policy: dict[str, Any] = {
        "retry_on": DEFAULT_RETRY_ON,
        "num_retries": attempts,
        "retry_host_predicate": [
            {
                "name": "envoy.retry_host_predicates.previous_hosts",
                "typed_config": {"@type": PREVIOUS_HOSTS_TYPE},
            }
        ],
        "host_selection_retry_max_attempts": "5",
        "retriable_status_codes": [503],
    }
    if retries is not None:
        if retries.retry_on:
            codes = [int(c) for c in retries.retry_on.split(",") if c.strip().isdigit()]
            kinds = [c.strip() for c in retries.retry_on.split(",") if not c.strip().isdigit()]
            if codes:
                kinds.append("retriable-status-codes")
            policy["retry_on"] = ",".join(kinds)
            policy["retriable_status_codes"] = codes
        if retries.per_try_timeout is not None:
            policy["per_try_timeout"] = format_duration(retries.per_try_timeout)
    return policy


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
    headers = []
    for name, m in (match.headers or {}).items():
        headers.append(_header(name, m))
    for name, m in (match.without_headers or {}).items():
        headers.append(_header(name, m, invert=True))
    for pseudo, pm in (
        (":method", match.method),
        (":authority", match.authority),
        (":scheme", match.scheme),
    ):
        if pm is not None:
            headers.append(_header(pseudo, pm))
    if headers:
        out["headers"] = headers
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


class RouteBuilder:
    """Routes for one client namespace; looks services up in the World."""

    def __init__(self, world: World, namespace: str) -> None:
        self.world = world
        self.namespace = namespace

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
            if r.scheme:
                redirect["scheme_redirect"] = r.scheme
            code = {
                301: "MOVED_PERMANENTLY",
                302: "FOUND",
                303: "SEE_OTHER",
                307: "TEMPORARY_REDIRECT",
                308: "PERMANENT_REDIRECT",
            }
            redirect["response_code"] = code.get(r.redirect_code or 301, "MOVED_PERMANENTLY")
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
            action["weighted_clusters"] = {
                "clusters": [
                    {
                        "name": self.destination_cluster(d.destination, rule_ns, host, port),
                        "weight": d.weight,
                    }
                    for d in dests
                ]
            }
        action["timeout"] = format_duration(http.timeout) if http.timeout is not None else "0s"
        policy = retry_policy(http.retries)
        if policy is not None:
            action["retry_policy"] = policy
        return {"route": action}

    def vs_routes(
        self, vs: ResourceOf[VirtualServiceSpec], host: str, port: int | None
    ) -> list[dict[str, Any]]:
        """The routes of one VirtualService for one host (and port, if a service port)."""
        routes: list[dict[str, Any]] = []
        for i, http in enumerate(vs.spec.http):
            if http.delegate is not None:
                continue  # delegation is not supported yet; apply warns about it
            for match in http.match or [None]:
                if match is not None and not self._applies(match, port):
                    continue
                route = {
                    "match": route_match(match),
                    **self.action(http, vs.namespace, host, port or 80),
                }
                route["name"] = http.name or f"{vs.namespace}/{vs.name}/{i}"
                routes.append(route)
                if is_catch_all(match):
                    return routes
        return routes

    def _applies(self, match: HTTPMatchRequest, port: int | None) -> bool:
        """Whether a match can hold for sidecars of this namespace on this port.

        Source labels would need a route configuration per workload; until then such a
        match never applies (apply warns), which is safer than applying it to everyone.
        """
        if match.port is not None and match.port != port:
            return False
        if match.gateways and "mesh" not in match.gateways:
            return False
        if match.source_namespace and match.source_namespace != self.namespace:
            return False
        return not match.source_labels

    def default_route(self, host: str, port: int) -> dict[str, Any]:
        policy = retry_policy(None)
        return {
            "name": "default",
            "match": {"prefix": "/"},
            "route": {
                "cluster": outbound_cluster(host, port),
                "timeout": "0s",
                "retry_policy": policy,
            },
        }

    def virtual_service_for(
        self, host: str, wildcards: bool = False
    ) -> ResourceOf[VirtualServiceSpec] | None:
        """The VirtualService that binds ``host`` for sidecars: an exact host first, then
        (for services) the most specific wildcard host (``*.example.com``) that covers it."""
        candidates = [host]
        if wildcards:
            parts = host.split(".")
            candidates += ["*." + ".".join(parts[i:]) for i in range(1, len(parts))] + ["*"]
        for h in candidates:
            for vs in self.world.virtual_services.get(h, ()):
                gateways = vs.spec.gateways or ("mesh",)
                if "mesh" in gateways:
                    return vs
        return None


def outbound_route_configuration(
    world: World,
    namespace: str,
    errors: list[TranslationError] | None = None,
    last_good: LastGood | None = None,
) -> dict[str, Any]:
    """The RouteConfiguration behind the outbound (HTTP_PROXY) listener.

    Each VirtualService is translated on its own for each host and port: one that fails keeps
    its last good routes from ``last_good`` (or, if it never translated, is left out and its
    service gets the default route); the failure is appended to ``errors``.
    """
    builder = RouteBuilder(world, namespace)
    errors = [] if errors is None else errors
    vhosts: list[dict[str, Any]] = []
    seen: set[str] = set()

    def add(name: str, domains: list[str], routes: list[dict[str, Any]]) -> None:
        fresh = [d for d in domains if d not in seen]
        seen.update(fresh)
        if fresh:
            vhosts.append({"name": name, "domains": fresh, "routes": routes})

    def routes_of(
        vs: ResourceOf[VirtualServiceSpec], host: str, port: int | None
    ) -> list[dict[str, Any]] | None:
        where = f"{host}:{port}" if port is not None else host
        return isolated(
            errors,
            last_good,
            ("routes", namespace, vs.key, host, port),
            vs.key,
            lambda: (vs.key,),
            lambda: (
                f"routes of {vs.kind} {vs.qualified_name} for {where} "
                f"(clients in namespace {namespace})"
            ),
            partial(builder.vs_routes, vs, host, port),
            None,
        )

    for svc in world.services.values():
        vs = builder.virtual_service_for(svc.hostname, wildcards=True)
        for port in svc.ports:
            routes = routes_of(vs, svc.hostname, port) if vs is not None else None
            if routes is None:
                routes = [builder.default_route(svc.hostname, port)]
            add(f"{svc.hostname}:{port}", service_domains(svc, port, namespace), routes)
    for host in world.virtual_services:
        if host in world.services:
            continue
        vs = builder.virtual_service_for(host)
        if vs is not None and (routes := routes_of(vs, host, None)) is not None:
            add(host, virtual_host_domains(host, namespace), routes)
    return {
        "name": OUTBOUND_ROUTE,
        "virtual_hosts": vhosts,
        "validate_clusters": False,
    }
