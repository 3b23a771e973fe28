"""The internal listeners behind CONNECT routes (see :mod:`.connect`): one per TLS or HTTPS
service port, reading the tunnelled client hello's SNI and routing it with ``tls:`` routes, and
the static clusters whose one endpoint is that listener (``envoy_internal_address``).

The routing part is the same for every proxy of a namespace (up to the labels that ``tls``
matches' ``sourceLabels`` read, those of a DestinationRule ``workloadSelector`` that selects
it, and the outbound policy), so it is made once per such scope
(:func:`connect_listener_docs`); only the access loggers are the proxy's own (they name it and
write to its metrics pipe), added by :func:`with_loggers`.
"""

from __future__ import annotations

import json
from typing import Any

from tsunagi.mesh import Node, Upstream, World
from tsunagi.mesh.outbound_policy import ALLOW_ANY
from tsunagi.xds.translate.clusters import static_cluster
from tsunagi.xds.translate.connect import connect_name, tls_ports
from tsunagi.xds.translate.names import outbound_cluster
from tsunagi.xds.translate.policy import Labels, tcp_idle_timeout
from tsunagi.xds.translate.reporting import tcp_proxy_logging
from tsunagi.xds.translate.tcp_proxies import TCP_PROXY_TYPE, tcp_proxy
from tsunagi.xds.translate.upstream_listeners import TLS_INSPECTOR, tls_chains


def sni_routed_ports(
    world: World, namespace: str, labels: Labels = ()
) -> tuple[tuple[str, int], ...]:
    """``(host, port)`` of the TLS ports whose CONNECTs from ``namespace`` go to an internal
    listener (those that pass through need none): the same for every proxy of a namespace
    (``labels``: those its DestinationRule lookup reads, :meth:`~tsunagi.mesh.World.
    rule_labels`), so a mesh without them costs each proxy nothing more."""
    every = tls_ports(world, namespace, world.hidden_services(namespace), labels)
    return tuple((p.service.hostname, p.port) for p in every if not p.passes_through)


def connect_listener_docs(
    world: World,
    namespace: str,
    labels: tuple[tuple[str, str], ...],
    policy: str,
    ports: tuple[tuple[str, int], ...],
) -> tuple[str, ...]:
    """Each port's internal listener without access loggers, as canonical JSON: the same for
    every proxy of ``namespace`` whose labels agree on ``labels`` (those in
    :attr:`~tsunagi.mesh.World.tls_source_label_keys`, and those its DestinationRule lookup
    reads, :meth:`~tsunagi.mesh.World.rule_labels`) and whose outbound policy is
    ``policy``, so proxies share it, and a change that leaves it equal leaves their packed
    listeners alone.

    A hello whose SNI no ``tls`` route claims: with ``ALLOW_ANY`` it goes on to the CONNECT
    target (the listener's own host, through its cluster), as Istio's outbound listener
    sends what no filter chain matches to PassthroughCluster; with ``REGISTRY_ONLY`` no chain
    takes it and Envoy closes the tunnel (Istio's BlackHoleCluster)."""
    who = Node(id="", namespace=namespace, labels=dict(labels))
    out = []
    for host, port in ports:
        name = connect_name(host, port)
        chains = tls_chains(world, who, Upstream(host, port, 0), [])
        listener: dict[str, Any] = {
            "name": name,
            "internal_listener": {},
            "listener_filters": [TLS_INSPECTOR],
            "filter_chains": chains,
        }
        if policy == ALLOW_ANY and all("filter_chain_match" in c for c in chains):
            cluster = outbound_cluster(host, port)
            idle = tcp_idle_timeout(world, [cluster], namespace, labels)
            default = tcp_proxy(cluster, [(cluster, 100)], [], idle)
            listener["default_filter_chain"] = {"filters": [default]}
        out.append(json.dumps(listener, sort_keys=True))
    return tuple(out)


def with_loggers(doc: str, loggers: list[dict[str, Any]]) -> dict[str, Any]:
    """The listener of :func:`connect_listener_docs` with ``loggers`` (the proxy's own: its
    metrics pipe, its access log) on every TCP proxy."""
    listener: dict[str, Any] = json.loads(doc)
    if not loggers:
        return listener
    chains = [*listener["filter_chains"]]
    if "default_filter_chain" in listener:
        chains.append(listener["default_filter_chain"])
    logging = tcp_proxy_logging(loggers)
    for chain in chains:
        for f in chain["filters"]:
            config = f["typed_config"]
            if config.get("@type") == TCP_PROXY_TYPE:
                config.update(logging)
    return listener


def internal_clusters(ports: tuple[tuple[str, int], ...]) -> list[dict[str, Any]]:
    """The clusters that reach the internal listeners of ``ports``: the same for every
    proxy."""
    out = []
    for host, port in ports:
        name = connect_name(host, port)
        out.append(
            static_cluster(name, {"envoy_internal_address": {"server_listener_name": name}}, "1s")
        )
    return out
