"""Upstream listeners: ``tsunagi run --upstream SERVICE:PORT[@LOCALPORT]``.

Each upstream is a TCP listener on ``127.0.0.1:LOCALPORT`` whose connections go, bytes
untouched, to one service port (Consul's and Kuma's upstreams), for clients that cannot use
an HTTP proxy: databases, brokers, anything that is not HTTP, and HTTP services too.

Where a connection goes is Istio's outbound TCP routing for that service port: the
VirtualServices that bind the host for sidecars (all of them, in order: Istio reads the tcp
and tls routes of every one, unlike HTTP's), the first ``tcp:`` route whose match holds
(``port``, ``sourceLabels``, ``sourceNamespace``, ``gateways`` naming ``mesh``), a single
destination or weighted ones (``weighted_clusters``: the split is over new connections),
subsets from the DestinationRule; no VirtualService or no matching route: the service port's
own cluster. On a TLS or HTTPS port, ``tls:`` routes decide instead (Istio applies tcp
routes to the other ports only), by the SNI of the client's hello: one filter chain per
``sniHosts`` match, no chain for another name when some route matched, the port's own cluster
otherwise. A match with ``destinationSubnets`` never holds here: an upstream listener has
no destination address to compare (``apply`` says so).

Cluster-level policy (connection pools, outlier detection, load balancing) is already on the
destination clusters (:mod:`.policy`), so it holds for these connections too; the
DestinationRule's ``connectionPool.tcp.idleTimeout`` goes on each TCP proxy (Istio's place
for it: a connection with no bytes either way for that long is closed).

The routes are inline in the listener (a TCP proxy has no route discovery): when an
upstream's routing changes, Envoy drains the changed filter chain, and its open connections
end after the drain time; a listener whose routing did not change is not re-sent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2

from tsunagi import protocols
from tsunagi.api import RouteDestination, TCPRoute
from tsunagi.api.networking import L4MatchAttributes, TLSMatchAttributes
from tsunagi.mesh import ClientScope, Node, Upstream, World
from tsunagi.xds.translate import accesslog
from tsunagi.xds.translate.names import outbound_cluster
from tsunagi.xds.translate.policy import tcp_idle_timeout
from tsunagi.xds.translate.routes import RouteBuilder
from tsunagi.xds.translate.tcp_proxies import tcp_proxy

UPSTREAM_LISTENER_PREFIX = "upstream|"
TLS_INSPECTOR = {
    "name": "envoy.filters.listener.tls_inspector",
    "typed_config": {
        "@type": "type.googleapis.com/" + tls_inspector_pb2.TlsInspector.DESCRIPTOR.full_name
    },
}
"""Reads the SNI of a TLS client hello, for ``tls:`` routes (only on TLS ports: a client
that waits for the server to speak first would wait for it in vain)."""


def upstream_listener_name(up: Upstream) -> str:
    """``upstream|9000|tcp-echo.default.svc.cluster.local``: one per service port."""
    return f"{UPSTREAM_LISTENER_PREFIX}{up.port}|{up.host}"


def _match_holds(m: L4MatchAttributes | TLSMatchAttributes, port: int, node: Node) -> bool:
    """Istio's static L4/TLS match for a sidecar: every field given must hold (``gateways``
    must name ``mesh``; unlike HTTP matches, it does not excuse the source fields)."""
    if m.port is not None and m.port != port:
        return False
    if m.destination_subnets:
        return False  # no destination address on a local listener (see the module doc)
    if m.gateways and "mesh" not in m.gateways:
        return False
    if any(node.labels.get(k) != v for k, v in m.source_labels.items()):
        return False
    return not m.source_namespace or m.source_namespace == node.namespace


def _route_holds(route: TCPRoute, port: int, node: Node) -> bool:
    return not route.match or any(_match_holds(m, port, node) for m in route.match)


def route_targets(
    builder: RouteBuilder, dests: Sequence[RouteDestination], rule_ns: str, host: str, port: int
) -> list[tuple[str, int]]:
    """``(cluster, weight)`` of each destination of a tcp or tls route to ``host:port`` that
    Envoy can take: a zero weight is left out (Envoy requires at least 1), and a single
    destination takes everything. Gateways use it too (``gateway_chains.py``)."""
    out = []
    for d in dests:
        cluster = builder.destination_cluster(d.destination, rule_ns, host, port)
        weight = 100 if len(dests) == 1 else (d.weight or 0)
        if weight > 0:
            out.append((cluster, weight))
    return out


def resolved(world: World, up: Upstream) -> Upstream:
    """``up`` with its host spelled in full when it names a known service as
    ``name.namespace`` or ``name.namespace.svc`` (the aliases an HTTP client may use)."""
    if up.host in world.services:
        return up
    for suffix in (".svc.cluster.local", ".cluster.local"):
        if up.host + suffix in world.services:
            return Upstream(up.host + suffix, up.port, up.listen)
    return up


def upstream_targets(world: World, node: Node, up: Upstream) -> list[tuple[str, int]]:
    """Where new connections to ``up`` (a port that is not TLS; its host spelled in full:
    :func:`resolved`) go: ``(cluster, weight)`` pairs (one: no split)."""
    builder = RouteBuilder(world, ClientScope(node.namespace))
    for vs in builder.virtual_services_for(up.host):
        for route in vs.spec.tcp:
            if route.route and _route_holds(route, up.port, node):
                targets = route_targets(builder, route.route, vs.namespace, up.host, up.port)
                if targets:
                    return targets
                # every weight zero: Istio sends nothing there; the default serves
                return [(outbound_cluster(up.host, up.port), 100)]
    return [(outbound_cluster(up.host, up.port), 100)]


def sni_server_names(sni_hosts: Sequence[str]) -> list[str] | None:
    """Envoy's ``server_names`` for ``sniHosts``; None for a catch-all (``*``). A bare
    prefix wildcard (``*bar.com``) has no Envoy spelling and is left out."""
    names = [h.lower() for h in sni_hosts]
    if "*" in names:
        return None
    return [n for n in names if not n.startswith("*") or n.startswith("*.")]


def tls_chains(
    world: World, node: Node, up: Upstream, loggers: list[dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """Filter chains of an upstream to a TLS or HTTPS port (its host spelled in full:
    :func:`resolved`): Istio's ``tls:`` routes (of every VirtualService of the host, in
    order), one chain per SNI match that holds for this sidecar (the first route to claim a
    name keeps it, as Envoy refuses two chains matching the same name); with none, one chain
    to the service port's cluster for any SNI."""
    builder = RouteBuilder(world, ClientScope(node.namespace))
    stat_prefix = outbound_cluster(up.host, up.port)
    chains: list[dict[str, Any]] = []
    claimed: set[str] = set()
    catch_all = False
    every = builder.virtual_services_for(up.host)
    routes = [(vs.namespace, r) for vs in every for r in vs.spec.tls]
    for rule_ns, route in routes:
        for m in route.match:
            if catch_all or not _match_holds(m, up.port, node):
                continue
            targets = route_targets(builder, route.route, rule_ns, up.host, up.port)
            if not targets:
                continue
            names = sni_server_names(m.sni_hosts)
            idle = _idle_timeout(world, node, [c for c, _ in targets])
            proxy = tcp_proxy(stat_prefix, targets, loggers or [], idle)
            chain: dict[str, Any] = {"filters": [proxy]}
            if names is None:
                catch_all = True
            else:
                names = [n for n in dict.fromkeys(names) if n not in claimed]
                if not names:
                    continue
                claimed.update(names)
                chain["filter_chain_match"] = {"server_names": names}
            chains.append(chain)
    if not chains:
        default = [(stat_prefix, 100)]
        idle = _idle_timeout(world, node, [stat_prefix])
        chains.append({"filters": [tcp_proxy(stat_prefix, default, loggers or [], idle)]})
    return chains


def _idle_timeout(world: World, node: Node, targets: Sequence[str]) -> str | None:
    # Its DestinationRule lookup: a rule whose workloadSelector picks it comes first.
    labels = world.rule_labels(node.namespace, node.labels.items())
    return tcp_idle_timeout(world, targets, node.namespace, labels)


def _is_tls(world: World, up: Upstream) -> bool:
    svc = world.services.get(up.host)
    return svc is not None and svc.protocol(up.port) in (protocols.TLS, protocols.HTTPS)


def upstream_listeners(world: World, node: Node) -> list[dict[str, Any]]:
    """One TCP proxy listener per ``--upstream`` of ``node``, reporting as its telemetry
    says."""
    loggers = accesslog.tcp_access_loggers(node, world.telemetry_for(node), outbound=True)
    out = []
    for up in sorted(node.upstreams):
        name = upstream_listener_name(up)
        up = resolved(world, up)
        listener: dict[str, Any] = {
            "name": name,
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": up.listen}},
        }
        if _is_tls(world, up):  # Istio: tls routes on TLS ports, tcp routes on the others
            listener["listener_filters"] = [TLS_INSPECTOR]
            listener["filter_chains"] = tls_chains(world, node, up, loggers)
        else:
            targets = upstream_targets(world, node, up)
            stat_prefix = outbound_cluster(up.host, up.port)
            idle = _idle_timeout(world, node, [c for c, _ in targets])
            proxy = tcp_proxy(stat_prefix, targets, loggers, idle)
            listener["filter_chains"] = [{"filters": [proxy]}]
        out.append(listener)
    return out


def upstream_key(node: Node) -> tuple[Any, ...]:
    """What :func:`upstream_listeners` reads of ``node`` (with the World's routing and the
    node's telemetry; the access log names the node)."""
    labels: Mapping[str, str] = node.labels
    return (
        node.id,
        node.namespace,
        tuple(sorted(labels.items())),
        tuple(sorted(node.upstreams)),
        node.metrics_log,
    )
