"""A gateway proxy's listeners and routes: one listener per Gateway server port, on the
gateway's address, with its routes over RDS (``http.PORT``, as Istio names them).

Which Gateways, VirtualServices and hosts apply is :mod:`tsunagi.mesh.gateways` (Istio's
rules); the routes themselves are the sidecars' route translation (:class:`RouteBuilder`),
judged for a gateway: a match naming ``gateways`` must name this one. Clusters and endpoints
are the shared ones every proxy gets. A request for a host no virtual host serves gets
Envoy's 404, as from an Istio gateway.

Servers that need TLS (HTTPS, TLS) and non-HTTP ones are not served yet: ``apply`` says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

from tsunagi.api import (
    Destination,
    GatewaySpec,
    HTTPMatchRequest,
    ResourceOf,
    Server,
    VirtualServiceSpec,
)
from tsunagi.api.checks_networking import MAX_DIRECT_RESPONSE_BODY
from tsunagi.mesh import ClientScope, World
from tsunagi.mesh import gateways as gw
from tsunagi.mesh.delegation import delegates_of
from tsunagi.xds.translate.isolation import LastGood, ResourceKey, TranslationError, isolated
from tsunagi.xds.translate.listeners import OUTBOUND_FILTERS
from tsunagi.xds.translate.protos import HCM_TYPE
from tsunagi.xds.translate.routes import PEER_HEADER_TO_ADD, RouteBuilder, without_peer_header

CATCH_ALL = {"prefix": "/"}
"""The Envoy match of a route that takes every request."""


def gateway_listener(port: int) -> str:
    """``gateway|8080``: the listener of one server port."""
    return f"gateway|{port}"


def gateway_route(port: int) -> str:
    """``http.8080``: the route configuration of one HTTP server port (Istio's name)."""
    return f"http.{port}"


@dataclass(frozen=True)
class PortServers:
    """The servers of the selected Gateways on one port, in Gateway order."""

    port: int
    servers: tuple[tuple[ResourceOf[GatewaySpec], Server], ...]


def served_ports(world: World, scope: ClientScope) -> list[PortServers]:
    """The ports a gateway of ``scope`` listens on, with the HTTP servers on each (servers
    that need TLS or are not HTTP are left out until they are supported)."""
    by_port: dict[int, list[tuple[ResourceOf[GatewaySpec], Server]]] = {}
    for g in gw.selected(gw.gateways_of(world.resources), dict(scope.labels)):
        for server in g.spec.servers:
            if gw.is_http_server(server):
                by_port.setdefault(server.port.number, []).append((g, server))
    return [PortServers(p, tuple(s)) for p, s in sorted(by_port.items())]


class GatewayRouteBuilder(RouteBuilder):
    """Routes as a gateway runs them: a match that names ``gateways`` applies when it names
    the Gateway being served; ``sourceLabels``/``sourceNamespace`` compare the gateway's."""

    def __init__(self, world: World, scope: ClientScope) -> None:
        super().__init__(world, scope)
        self.gateway: tuple[str, str] = ("", "")
        """The Gateway ``(namespace, name)`` whose server the routes are for."""
        self.rule_namespace = ""
        """The namespace of the VirtualService being translated (its ``gateways`` are
        relative to it)."""

    def _applies(self, match: HTTPMatchRequest, port: int | None) -> bool:
        if match.port is not None and match.port != port:
            return False
        if match.gateways:
            return any(
                g != gw.MESH and gw.gateway_ref(g, self.rule_namespace) == self.gateway
                for g in match.gateways
            )
        labels = dict(self.scope.labels)
        if any(labels.get(k) != v for k, v in match.source_labels.items()):
            return False
        return not match.source_namespace or match.source_namespace == self.namespace

    def destination_cluster(
        self, dest: Destination, rule_ns: str, vhost_host: str, port: int
    ) -> str:
        # The gateway's port is no service port: a destination without one takes the
        # service's only (or lowest) port, as Istio requires a port when there are several.
        return super().destination_cluster(dest, rule_ns, "", port)


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
) -> dict[str, Any]:
    """The RouteConfiguration of one HTTP server port: one virtual host per host that the
    servers there and their bound VirtualServices both serve."""
    errors = [] if errors is None else errors
    builder = GatewayRouteBuilder(world, scope)
    vhosts: dict[str, dict[str, Any]] = {}
    every_vs = sorted(
        {vs.key: vs for vss in world.virtual_services.values() for vs in vss}.values(),
        key=lambda v: (v.namespace, v.name),
    )
    for g, server in ps.servers:
        redirect = server.tls is not None and server.tls.https_redirect
        for binding in gw.server_bindings(g, server, every_vs, scope.namespace):
            vs = binding.vs
            builder.gateway = (g.namespace, g.name)
            builder.rule_namespace = vs.namespace
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
                world, {k: v for k, v in r.items() if k != "_catch_all"}, scope.namespace
            )
            for r in vhost["routes"]
        ]
    return {
        "name": gateway_route(ps.port),
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


def listener(scope: ClientScope, port: int) -> dict[str, Any]:
    """The listener of one HTTP server port, on the gateway's address."""
    hcm = {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": HCM_TYPE,
            "stat_prefix": f"gateway_{port}",
            "codec_type": "AUTO",
            "rds": {
                "route_config_name": gateway_route(port),
                "config_source": {"ads": {}, "resource_api_version": "V3"},
            },
            "http_filters": list(OUTBOUND_FILTERS),
            # The gateway is the edge: the client's address is the peer's, not a header's.
            "use_remote_address": True,
        },
    }
    return {
        "name": gateway_listener(port),
        "address": {"socket_address": {"address": scope.gateway, "port_value": port}},
        "filter_chains": [{"filters": [hcm]}],
    }


def gateway_parts(
    world: World,
    scope: ClientScope,
    errors: list[TranslationError] | None = None,
    last_good: LastGood | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(listeners, route configurations)`` of a gateway of ``scope``."""
    ports = served_ports(world, scope)
    listeners = [listener(scope, ps.port) for ps in ports]
    routes = [route_configuration(world, scope, ps, errors, last_good) for ps in ports]
    return listeners, routes
