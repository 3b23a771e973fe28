"""A gateway proxy's listeners and routes: one listener per Gateway server port, on the
gateway's address (at the listen port ``tsunagi gateway --port`` maps it to). Plain-text
HTTP ports have one route table over RDS (``http.PORT``, as Istio names it); TLS and TCP
ports have filter chains by SNI (``gateway_chains.py``), an HTTPS server's chain with its
own route table (``https.PORT.PORTNAME.GATEWAY.NS``).

Which Gateways, servers, VirtualServices and hosts apply is :mod:`tsunagi.mesh.gateways` and
:mod:`tsunagi.mesh.gateway_ports` (Istio's rules); the routes themselves are the sidecars'
route translation, judged for a gateway (``gateway_routing.py``). Clusters and endpoints
are the shared ones every proxy gets. A request for a host no virtual host serves gets
Envoy's 404, as from an Istio gateway.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from tsunagi.api import GatewaySpec, ResourceOf, Server, VirtualServiceSpec
from tsunagi.api.checks_networking import MAX_DIRECT_RESPONSE_BODY
from tsunagi.mesh import ClientScope, World
from tsunagi.mesh import gateways as gw
from tsunagi.mesh.delegation import delegates_of
from tsunagi.mesh.gateway_ports import PortServers, merge_ports
from tsunagi.xds.translate import authz, gateway_chains, jwt_authn
from tsunagi.xds.translate.gateway_routing import GatewayRouteBuilder
from tsunagi.xds.translate.isolation import LastGood, ResourceKey, TranslationError, isolated
from tsunagi.xds.translate.listeners import HCM_DEFAULTS, OUTBOUND_FILTERS
from tsunagi.xds.translate.protos import HCM_TYPE
from tsunagi.xds.translate.routes import PEER_HEADER_TO_ADD, without_peer_header

CATCH_ALL = {"prefix": "/"}
"""The Envoy match of a route that takes every request."""


def gateway_listener(port: int) -> str:
    """``gateway|8080``: the listener of one server port."""
    return f"gateway|{port}"


def gateway_route(port: int) -> str:
    """``http.8080``: the route configuration of one HTTP server port (Istio's name)."""
    return f"http.{port}"


def served_ports(world: World, scope: ClientScope) -> list[PortServers]:
    """The ports a gateway of ``scope`` listens on, with the servers each serves."""
    return merge_ports(gw.selected(world.gateways, dict(scope.labels)))[0]


def _combine(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Routes of two VirtualServices for one host on a gateway (Istio merges them there):
    each one's catch-all routes after every other route, so neither hides the other."""
    every = [*old, *new]
    catch_all = [r for r in every if r.get("_catch_all")]
    return [r for r in every if not r.get("_catch_all")] + catch_all


def route_configuration(
    world: World,
    scope: ClientScope,
    ps: PortServers,
    errors: list[TranslationError] | None = None,
    last_good: LastGood | None = None,
    route_name: str | None = None,
) -> dict[str, Any]:
    """The RouteConfiguration ``route_name`` (``http.PORT`` by default) of the HTTP servers
    ``ps`` holds (all of a plain-text port's, or one HTTPS server): one virtual host per
    host that the servers and their bound VirtualServices both serve."""
    errors = [] if errors is None else errors
    builder = GatewayRouteBuilder(world, scope)
    vhosts: dict[str, dict[str, Any]] = {}
    every_vs = world.virtual_services_in_order
    for g, server in ps.servers:
        redirect = server.tls is not None and server.tls.https_redirect
        for binding in gw.server_bindings(g, server, every_vs, scope.namespace):
            vs = binding.vs
            builder.serve((g.namespace, g.name), vs)
            for host in binding.hosts:
                routes = isolated(
                    errors,
                    last_good,
                    ("gateway-routes", scope, g.key, vs.key, host, ps.port),
                    vs.key,
                    partial(_blame, world, vs),
                    partial(
                        "routes of VirtualService {} for {} on gateway port {} ({})".format,
                        vs.qualified_name,
                        host,
                        ps.port,
                        g.qualified_name,
                    ),
                    partial(_marked_routes, builder, vs, host, ps.port),
                    None,
                )
                if not routes:
                    continue
                vhost = vhosts.get(host)
                if vhost is None:
                    vhost = vhosts[host] = {
                        "name": f"{host}:{ps.port}",
                        "domains": [host],  # any port: ignore_port_in_host_matching
                        "routes": routes,
                    }
                else:
                    vhost["routes"] = _combine(vhost["routes"], routes)
                if redirect:
                    vhost["require_tls"] = "ALL"  # Envoy answers 301 to https://
        if redirect:
            # A redirect-only server (nothing bound, the usual http → https Gateway) still
            # redirects every host it names, as Istio's gateway code does.
            for host in server.hosts:
                name = gw.server_host(host, g.namespace)[1]
                vhosts.setdefault(
                    name,
                    {"name": f"{name}:{ps.port}", "domains": [name], "routes": [],
                     "require_tls": "ALL"},
                )  # fmt: skip
    for vhost in vhosts.values():
        vhost["routes"] = [
            without_peer_header(
                world,
                {k: v for k, v in r.items() if k != "_catch_all"},
                scope.namespace,
                scope.labels,
            )
            for r in vhost["routes"]
        ]
    return {
        "name": route_name or gateway_route(ps.port),
        "virtual_hosts": list(vhosts.values()),
        # Istio's gateways: a Host header's port (the client's view of the port, which a
        # load balancer in front may change) does not decide the virtual host.
        "ignore_port_in_host_matching": True,
        # The gateway's identity to in-mesh backends, as a sidecar's (their metrics name it
        # as the caller); removed on routes that leave the mesh, the removal winning.
        "request_headers_to_add": [PEER_HEADER_TO_ADD],
        "most_specific_header_mutations_wins": True,
        "validate_clusters": False,
        "max_direct_response_body_size_bytes": MAX_DIRECT_RESPONSE_BODY,
    }


def _blame(world: World, vs: ResourceOf[VirtualServiceSpec]) -> tuple[ResourceKey, ...]:
    return (vs.key, *delegates_of(world.delegates, vs))  # a delegate may be at fault


def _marked_routes(
    builder: GatewayRouteBuilder, vs: ResourceOf[VirtualServiceSpec], host: str, port: int
) -> list[dict[str, Any]]:
    """The VirtualService's routes for ``host``, a catch-all one marked for :func:`_combine`."""
    routes = builder.vs_routes(vs, host, port)
    return [{**r, "_catch_all": True} if r.get("match") == CATCH_ALL else r for r in routes]


def _hcm(
    port: int, route_name: str, tls: bool = False, security: tuple[dict[str, Any], ...] = ()
) -> dict[str, Any]:
    """The HTTP connection manager of a server port, on route table ``route_name`` (its
    access loggers and tracing are the node's, added by :func:`.gateway_telemetry.report`),
    with the ``security`` filters first (JWT validation: :func:`.jwt_authn.gateway_filters`)."""
    config: dict[str, Any] = {
        "@type": HCM_TYPE,
        "stat_prefix": f"gateway_{port}",
        "codec_type": "AUTO",
        **HCM_DEFAULTS,
        "rds": {
            "route_config_name": route_name,
            "config_source": {"ads": {}, "resource_api_version": "V3"},
        },
        "http_filters": [*security, *OUTBOUND_FILTERS],
        # The gateway is the edge: the client's address is the peer's, not a header's.
        "use_remote_address": True,
    }
    if tls:
        # Istio's gateway default: backends learn the client certificate (MUTUAL) in
        # x-forwarded-client-cert, and a client cannot forge that header.
        config["forward_client_cert_details"] = "SANITIZE_SET"
        config["set_current_client_cert_details"] = {
            "subject": True,
            "cert": True,
            "dns": True,
            "uri": True,
        }
    return {"name": "envoy.filters.network.http_connection_manager", "typed_config": config}


def listen_port(scope: ClientScope, port: int) -> int:
    """Where a gateway of ``scope`` listens for its servers on ``port``: the listen port of
    ``tsunagi gateway --port PORT:LISTENPORT``, as Istio binds a Gateway's service port's
    targetPort; the port itself when no ``--port`` names it. Names (listener, route table,
    stats) and VirtualService port matches keep the server's own ``port.number``."""
    return dict(scope.gateway_ports).get(port, port)


def _address(scope: ClientScope, port: int) -> dict[str, Any]:
    """Where the listener of server port ``port`` binds: the gateway's address, at
    :func:`listen_port`."""
    return {"socket_address": {"address": scope.gateway, "port_value": listen_port(scope, port)}}


def listener(
    scope: ClientScope, port: int, security: tuple[dict[str, Any], ...] = ()
) -> dict[str, Any]:
    """The listener of one plain-text HTTP server port, on the gateway's address."""
    hcm = _hcm(port, gateway_route(port), security=security)
    return {
        "name": gateway_listener(port),
        "address": _address(scope, port),
        "filter_chains": [{"filters": [hcm]}],
    }


def _security(world: World, scope: ClientScope, port: int) -> tuple[dict[str, Any], ...]:
    """JWT validation, then authorization, as on a sidecar's inbound side. Both go before
    CORS and fault (:data:`.listeners.OUTBOUND_FILTERS`), in Istio's order
    (``buildHTTPConnectionManager``): a CORS preflight is judged like any request."""
    return (*jwt_authn.gateway_filters(world, scope), *authz.gateway_filters(world, scope, port))


def chained_listener(
    world: World, scope: ClientScope, ps: PortServers
) -> tuple[dict[str, Any], list[tuple[str, PortServers]]] | None:
    """The listener of a TLS or TCP port, with ``(name, the one server it is for)`` of each
    route table its HTTPS chains read; None when no server there has a chain (Envoy
    refuses a listener without one, so the port stays closed, as in Istio)."""
    every_vs = world.virtual_services_in_order

    def bindings(g: ResourceOf[GatewaySpec], server: Server) -> list[gw.Binding]:
        return gw.server_bindings(g, server, every_vs, scope.namespace)

    builder = GatewayRouteBuilder(world, scope)
    http = partial(_hcm, ps.port, tls=True, security=_security(world, scope, ps.port))
    rbac = authz.gateway_network_filters(world, scope, ps.port)
    made = gateway_chains.port_chains(builder, ps, bindings, http, rbac)
    chains = made.chains
    if not chains:
        return None
    out: dict[str, Any] = {"name": gateway_listener(ps.port), "address": _address(scope, ps.port)}
    inspector = gateway_chains.listener_filters(chains)
    if inspector:
        out["listener_filters"] = inspector
    out["filter_chains"] = chains
    return out, made.route_tables


def gateway_parts(
    world: World,
    scope: ClientScope,
    errors: list[TranslationError] | None = None,
    last_good: LastGood | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(listeners, route configurations)`` of a gateway of ``scope``, its routing scope
    (without what names the node, so that replicas share them and what ``last_good`` keeps
    per piece is bounded): each node's loggers and tracer are added to copies of the
    listeners afterwards (:func:`.gateway_telemetry.report`)."""
    errors = [] if errors is None else errors
    listeners, routes = [], []
    bound: dict[int, int] = {}  # listen port → the server port listening there
    for ps in served_ports(world, scope):
        taken = bound.setdefault(listen_port(scope, ps.port), ps.port)
        if taken != ps.port:
            errors.append(_listen_port_taken(scope, ps, taken))
            continue
        if ps.kind == "http":
            listeners.append(listener(scope, ps.port, _security(world, scope, ps.port)))
            routes.append(route_configuration(world, scope, ps, errors, last_good))
            continue
        chained = isolated(
            errors,
            last_good,
            ("gateway-listener", scope, ps.port, _port_blame(ps)),
            _port_blame(ps),
            partial(_port_blame, ps),
            partial("the listener of gateway port {}".format, ps.port),
            partial(chained_listener, world, scope, ps),
            None,
        )
        if chained is None:
            continue
        port_listener, tables = chained
        listeners.append(port_listener)
        for name, one in tables:
            routes.append(route_configuration(world, scope, one, errors, last_good, name))
    return listeners, routes


def _listen_port_taken(scope: ClientScope, ps: PortServers, taken: int) -> TranslationError:
    """Servers on ``ps.port`` cannot listen: ``--port taken:LISTEN`` already put server port
    ``taken`` where ``ps.port`` itself listens (one socket cannot be two listeners)."""
    lp = listen_port(scope, ps.port)
    return TranslationError(
        _port_blame(ps),
        f"the listener of gateway port {ps.port}",
        f"port {lp} already listens for server port {taken} (tsunagi gateway --port "
        f"{taken}:{listen_port(scope, taken)}); give the servers on port "
        f"{ps.port} another port, or map it elsewhere with --port {ps.port}:FREEPORT",
        False,
    )


def _port_blame(ps: PortServers) -> tuple[ResourceKey, ...]:
    return tuple(dict.fromkeys(g.key for g, _ in ps.servers))
