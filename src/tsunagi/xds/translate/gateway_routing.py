"""Routing as a gateway proxy judges it: which matches of a VirtualService hold on one
Gateway's server, and where a destination goes. Shared by the gateway's HTTP route tables
(``gateway.py``) and its TLS and TCP filter chains (``gateway_chains.py``)."""

from __future__ import annotations

from tsunagi.api import (
    Destination,
    HTTPMatchRequest,
    ResourceOf,
    VirtualServiceSpec,
)
from tsunagi.api.networking import L4MatchAttributes, TLSMatchAttributes
from tsunagi.mesh import ClientScope, World
from tsunagi.mesh import gateways as gw
from tsunagi.xds.translate.routes import RouteBuilder


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

    def names_gateway(self, gateways: tuple[str, ...]) -> bool:
        """Whether a match's ``gateways`` name the Gateway being served."""
        return any(
            g != gw.MESH and gw.gateway_ref(g, self.rule_namespace) == self.gateway
            for g in gateways
        )

    def _applies(self, match: HTTPMatchRequest, port: int | None) -> bool:
        if match.port is not None and match.port != port:
            return False
        if match.gateways:
            return self.names_gateway(match.gateways)
        labels = dict(self.scope.labels)
        if any(labels.get(k) != v for k, v in match.source_labels.items()):
            return False
        return not match.source_namespace or match.source_namespace == self.namespace

    def l4_applies(self, match: L4MatchAttributes | TLSMatchAttributes, port: int) -> bool:
        """A tcp or tls match on a gateway, as Istio judges it there (``l4SingleMatch``):
        the port and the gateways only."""
        if match.port is not None and match.port != port:
            return False
        return not match.gateways or self.names_gateway(match.gateways)

    def serve(self, gateway: tuple[str, str], vs: ResourceOf[VirtualServiceSpec]) -> None:
        """Judge the next routes for ``gateway``'s server, from ``vs``."""
        self.gateway = gateway
        self.rule_namespace = vs.namespace

    def destination_cluster(
        self, dest: Destination, rule_ns: str, vhost_host: str, port: int
    ) -> str:
        # The gateway's port is no service port: a destination without one takes the
        # service's only (or lowest) port, as Istio requires a port when there are several.
        return super().destination_cluster(dest, rule_ns, "", port)
