"""Filter chains of a gateway's TLS and TCP ports, as Istio's gateway builds them.

On a TLS port (HTTPS and TLS servers) the client's SNI picks the chain:

- a server that ends the TLS (``SIMPLE``, ``MUTUAL``, ``OPTIONAL_MUTUAL``) has one chain for
  its hosts, with its ``credentialName``'s certificate over SDS (``kubernetes://NAME``, one
  per name of ``credentialNames``; for client certificates the CA ``kubernetes://NAME-cacert``
  of the first name; the secrets themselves come
  with the gateway's snapshot, never inside the listener). An HTTPS server's chain is an HTTP
  connection manager on the server's own route table (``https.PORT.PORTNAME.GATEWAY.NS``, as
  Istio names it); a TLS server's is a TCP proxy along its VirtualServices' ``tcp:`` routes;
- an ``ISTIO_MUTUAL`` server ends mesh mTLS: the gateway's own workload certificate, and a
  client certificate the mesh's roots sign (the SDS files every proxy's agent writes, see
  :mod:`tsunagi.proxy_contract`), checked against ``subjectAltNames`` when set;
- a ``PASSTHROUGH`` server leaves the TLS alone: one chain per ``tls:`` route match of its
  VirtualServices, by the match's ``sniHosts``, to a TCP proxy.

A TCP port (TCP, MONGO, REDIS, MYSQL servers) has one chain: a TCP proxy along the first
``tcp:`` route that holds. On a gateway, a tcp or tls match holds by ``port`` and
``gateways`` only (Istio's ``l4SingleMatch``), and the first VirtualService (by namespace,
then name) with a route that holds decides. No route: no chain, and a port with no chain is
not opened (Envoy refuses a listener without one), as in Istio. AuthorizationPolicy's
network RBAC filters come before every TCP proxy (HTTPS chains get the HTTP ones).

Two chains of a port never match the same name (Envoy would refuse the listener): the first,
in server order, keeps it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from envoy.extensions.transport_sockets.tls.v3 import tls_pb2

from tsunagi import proxy_contract as pc
from tsunagi.api import GatewaySpec, ResourceOf, Server
from tsunagi.mesh import gateway_ports as ports
from tsunagi.mesh import gateways as gw
from tsunagi.xds.translate.gateway_routing import GatewayRouteBuilder
from tsunagi.xds.translate.names import credential_ca_secret, credential_secret
from tsunagi.xds.translate.policy import tcp_idle_timeout
from tsunagi.xds.translate.san import san_matchers
from tsunagi.xds.translate.tcp_proxies import tcp_proxy
from tsunagi.xds.translate.upstream_listeners import TLS_INSPECTOR, route_targets, sni_server_names

DOWNSTREAM_TLS_TYPE = "type.googleapis.com/" + tls_pb2.DownstreamTlsContext.DESCRIPTOR.full_name
ADS = {"ads": {}, "resource_api_version": "V3"}
ALPN_HTTP = ["h2", "http/1.1"]
"""What an HTTPS server offers in ALPN, as Istio's gateway: HTTP/2 when the client can."""
HANDSHAKE_TIMEOUT = "15s"
"""Istio's gateway bound on a TLS handshake (slow-handshake attacks hold no memory longer)."""
MIN_TLS = "TLSv1_2"
"""Istio's documented default ``minProtocolVersion`` (Envoy's server default too), written
out so that it holds whatever Envoy's default becomes."""

HttpFilter = Callable[[str], dict[str, Any]]
"""The HTTP connection manager filter of a route table name (``gateway.py`` owns HTTP)."""


def https_route(port: int, g: ResourceOf[GatewaySpec], server: Server) -> str:
    """``https.443.https-shop.shop-gw.default``: the route table of one HTTPS server."""
    return f"https.{port}.{server.port.name}.{g.name}.{g.namespace}"


def _version(v: str) -> str:
    """Istio's ``TLSV1_2`` is Envoy's ``TLSv1_2``."""
    return v.replace("TLSV", "TLSv")


def tls_context(server: Server, http: bool) -> dict[str, Any]:
    """The DownstreamTlsContext of a server that ends TLS with its ``credentialName`` (or
    ``credentialNames``: one certificate each, the CA from the first)."""
    tls, names = server.tls, ports.credentials(server)
    mode = ports.tls_mode(server)
    assert tls is not None and (names or mode == "ISTIO_MUTUAL")  # see ports.unsupported()
    params: dict[str, Any] = {"tls_minimum_protocol_version": MIN_TLS}
    if tls.min_protocol_version not in (None, "TLS_AUTO"):
        params["tls_minimum_protocol_version"] = _version(tls.min_protocol_version)
    if tls.max_protocol_version not in (None, "TLS_AUTO"):
        params["tls_maximum_protocol_version"] = _version(tls.max_protocol_version)
    ciphers, _ = ports.cipher_suites(server)
    if ciphers:
        params["cipher_suites"] = ciphers
    common: dict[str, Any] = {
        "tls_params": params,
        "tls_certificate_sds_secret_configs": [
            {"name": credential_secret(n), "sds_config": ADS} for n in names
        ]
        or [pc.sds_secret_config(pc.WORKLOAD_SECRET)],
    }
    # Istio offers h2,http/1.1 on every server it ends TLS for, TLS servers forwarding bytes
    # along tcp routes too. Not here: such a server does not know its backend's protocol,
    # and a client that can speak h2 (curl, browsers) would then send HTTP/2 frames to a
    # backend that may speak HTTP/1.1 only. Without ALPN, clients keep their default.
    if http:
        common["alpn_protocols"] = ALPN_HTTP
    ctx: dict[str, Any] = {"@type": DOWNSTREAM_TLS_TYPE, "common_tls_context": common}
    if mode in ("MUTUAL", "OPTIONAL_MUTUAL", "ISTIO_MUTUAL"):
        checks: dict[str, Any] = {}
        if tls.subject_alt_names:
            checks["match_typed_subject_alt_names"] = san_matchers(tls.subject_alt_names)
        if tls.verify_certificate_spki:
            checks["verify_certificate_spki"] = list(tls.verify_certificate_spki)
        if tls.verify_certificate_hash:
            checks["verify_certificate_hash"] = list(tls.verify_certificate_hash)
        common["combined_validation_context"] = {
            "default_validation_context": checks,
            "validation_context_sds_secret_config": (
                {"name": credential_ca_secret(names[0]), "sds_config": ADS}
                if names
                else pc.sds_secret_config(pc.ROOT_CA_SECRET)
            ),
        }
        # OPTIONAL_MUTUAL: a certificate, when sent, must verify; none is fine too.
        ctx["require_client_certificate"] = mode != "OPTIONAL_MUTUAL"
    return ctx


class _Chains:
    """The chains of one port, each name matched by one chain only."""

    def __init__(self) -> None:
        self.chains: list[dict[str, Any]] = []
        self._claimed: set[str] = set()

    def add(
        self,
        names: list[str] | None,
        filters: list[dict[str, Any]],
        tls: dict[str, Any] | None = None,
    ) -> bool:
        """Add a chain for SNI ``names`` (None: any name, and none); False when a name is
        already matched by an earlier chain (the first keeps it)."""
        keys = ["*"] if names is None else names
        if not keys or any(k in self._claimed for k in keys):
            return False
        self._claimed.update(keys)
        chain: dict[str, Any] = {}
        if names is not None:
            chain["filter_chain_match"] = {"server_names": names}
        chain["filters"] = filters
        if tls is not None:
            chain["transport_socket"] = {
                "name": "envoy.transport_sockets.tls",
                "typed_config": tls,
            }
            chain["transport_socket_connect_timeout"] = HANDSHAKE_TIMEOUT
        self.chains.append(chain)
        return True


def _server_names(server: Server) -> list[str] | None:
    return sni_server_names(ports.sni_hosts(server))


def _stat_prefix(targets: list[tuple[str, int]], port: int) -> str:
    return targets[0][0] if len(targets) == 1 else f"gateway_{port}"


def _tcp_proxy(
    builder: GatewayRouteBuilder, targets: list[tuple[str, int]], port: int
) -> dict[str, Any]:
    """A TCP proxy to ``targets``; its access loggers are the node's, added by
    :func:`.gateway_telemetry.report`."""
    # The DestinationRule lookup is the gateway proxy's, as for its clusters.
    idle = tcp_idle_timeout(
        builder.world, [c for c, _ in targets], builder.namespace, builder.scope.labels
    )
    return tcp_proxy(_stat_prefix(targets, port), targets, [], idle)


def _tcp_targets(
    builder: GatewayRouteBuilder, bindings: list[gw.Binding], g: ResourceOf[GatewaySpec], port: int
) -> list[tuple[str, int]]:
    """Where the first ``tcp:`` route that holds on this server sends connections."""
    for b in bindings:
        builder.serve((g.namespace, g.name), b.vs)
        for route in b.vs.spec.tcp:
            holds = not route.match or any(builder.l4_applies(m, port) for m in route.match)
            if holds and route.route:
                return route_targets(builder, route.route, b.vs.namespace, "", port)
    return []


def _passthrough(
    chains: _Chains,
    builder: GatewayRouteBuilder,
    bindings: list[gw.Binding],
    g: ResourceOf[GatewaySpec],
    port: int,
    tcp_filters: tuple[dict[str, Any], ...],
) -> None:
    """One chain per ``tls:`` route match that holds, by its ``sniHosts``, ``tcp_filters``
    before its TCP proxy."""
    for b in bindings:
        builder.serve((g.namespace, g.name), b.vs)
        for route in b.vs.spec.tls:
            for m in route.match:
                if not route.route or not builder.l4_applies(m, port):
                    continue
                targets = route_targets(builder, route.route, b.vs.namespace, "", port)
                if targets:
                    proxy = _tcp_proxy(builder, targets, port)
                    chains.add(sni_server_names(m.sni_hosts), [*tcp_filters, proxy])


@dataclass(frozen=True)
class PortChains:
    """The filter chains of one port, and the route tables its HTTPS chains read."""

    chains: list[dict[str, Any]] = field(default_factory=list)
    route_tables: list[tuple[str, ports.PortServers]] = field(default_factory=list)
    """``(route table name, the one server it is for)`` of each HTTPS chain, in chain order."""


def port_chains(
    builder: GatewayRouteBuilder,
    ps: ports.PortServers,
    bindings: Callable[[ResourceOf[GatewaySpec], Server], list[gw.Binding]],
    http_filter: HttpFilter,
    tcp_filters: tuple[dict[str, Any], ...] = (),
) -> PortChains:
    """The filter chains of a TLS or TCP port, with the route tables they name; ``bindings``
    gives the VirtualServices bound to a server (with the hosts they serve there).
    ``tcp_filters`` (authorization) go before each TCP proxy, as in Istio's gateway."""
    chains = _Chains()
    tables: list[tuple[str, ports.PortServers]] = []
    for g, server in ps.servers:
        bound = bindings(g, server)
        if ps.kind == "tcp":
            targets = _tcp_targets(builder, bound, g, ps.port)
            if targets:
                chains.add(None, [*tcp_filters, _tcp_proxy(builder, targets, ps.port)])
        elif ports.https_table(server):
            table = https_route(ps.port, g, server)
            filters = [http_filter(table)]
            if chains.add(_server_names(server), filters, tls_context(server, http=True)):
                tables.append((table, ports.PortServers(ps.port, ps.kind, ((g, server),))))
        elif not ports.terminates(server):
            _passthrough(chains, builder, bound, g, ps.port, tcp_filters)
        else:  # a TLS server ending the TLS: its bytes go on along tcp routes
            targets = _tcp_targets(builder, bound, g, ps.port)
            if targets:
                proxy = _tcp_proxy(builder, targets, ps.port)
                filters = [*tcp_filters, proxy]
                chains.add(_server_names(server), filters, tls_context(server, http=False))
    return PortChains(chains.chains, tables)


def listener_filters(chains: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The TLS inspector when a chain matches by SNI or offers ALPN (Istio's rule); none
    for plain TCP, whose clients may wait for the server to speak first."""
    for c in chains:
        alpn = c.get("transport_socket", {}).get("typed_config", {})
        if "filter_chain_match" in c or alpn.get("common_tls_context", {}).get("alpn_protocols"):
            return [TLS_INSPECTOR]
    return []
