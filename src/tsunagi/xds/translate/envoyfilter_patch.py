"""Applying one EnvoyFilter's patches to one Envoy resource, following Istio's patchers
(``pilot/pkg/networking/core/envoyfilter``): which object a match selects and what each
operation does at each level.

How Istio's matches read on Tsunagi's resources (see README, "EnvoyFilter"):

- ``listener.portNumber`` is the service port of an inbound listener (``inbound|PORT``, the
  port ``tsunagi run --port`` names), and the listening port of the outbound listener;
- the outbound route configuration holds one virtual host per service port, named
  ``HOST:PORT`` as in Istio; ``routeConfiguration.portNumber`` selects those of that port;
- an inbound route configuration (``inbound|PORT``) answers to ``portNumber`` PORT and its
  virtual host to Istio's name ``inbound|http|PORT`` as well as its own;
- clusters are matched by their Istio names ``outbound|PORT|SUBSET|HOST``.

Every function works on a copy the caller owns and returns the result (``None``: removed).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf.message import Message

from tsunagi.api.envoyfilter import HCM_NAMES, EnvoyConfigObjectMatch, RouteConfigurationMatch
from tsunagi.xds.translate.proto_merge import M, copied, merge, merge_any

INBOUND_VHOST = "inbound|http|{}"
_ADDS = ("ADD", "INSERT_BEFORE", "INSERT_AFTER", "INSERT_FIRST")


@dataclass(frozen=True)
class Prepared:
    """One config patch, ready to apply: its value built as the Envoy message it names."""

    apply_to: str
    operation: str
    context: str
    match: EnvoyConfigObjectMatch | None
    value: Any  # the Envoy message, or None for REMOVE


def _set_list(field: Any, items: Sequence[Message]) -> None:
    kept = [copied(i) for i in items]  # items may be the field's own elements
    del field[:]
    field.extend(kept)


def _patch_object(
    obj: M, patches: Sequence[Prepared], level: str, matches: Callable[[Prepared, M], bool]
) -> M | None:
    """REMOVE, MERGE and REPLACE patches of ``level`` on one object, in order, each match
    read on the object as the patches before it left it, as Istio does (None: removed)."""
    for p in patches:
        if p.apply_to != level or not matches(p, obj):
            continue
        if p.operation == "REMOVE":
            return None
        if p.operation == "MERGE":
            merge(obj, p.value)
        elif p.operation == "REPLACE":
            obj = copied(p.value)
    return obj


def _each(items: Iterable[M], patch_one: Callable[[M], M | None]) -> list[M]:
    """A copy of each item through ``patch_one``, without those it removed."""
    return [r for r in (patch_one(copied(item)) for item in items) if r is not None]


def _patch_children(
    field: Any,
    patch_one: Callable[[Any], Any],
    patches: Sequence[Prepared],
    level: str,
    parent_matches: Callable[[Prepared], bool],
) -> None:
    """A repeated field's elements through ``patch_one`` (None: removed), then the values of
    ``level``'s ADD patches whose match selects the parent appended (unpatched, as Istio)."""
    added = [
        p.value
        for p in patches
        if p.apply_to == level and p.operation == "ADD" and parent_matches(p)
    ]
    _set_list(field, [*_each(field, patch_one), *added])


def _insert(
    items: list[M], value: M, op: str, matches: Callable[[M], bool], has_match: bool
) -> list[M]:
    """ADD / INSERT_* on an ordered list, as Istio: without a match, INSERT_BEFORE and
    INSERT_FIRST put the value first and INSERT_AFTER last; with one, nothing happens when
    no element matches."""
    if op == "ADD" or (op == "INSERT_AFTER" and not has_match):
        return [*items, copied(value)]
    if op in ("INSERT_BEFORE", "INSERT_FIRST") and not has_match:
        return [copied(value), *items]
    for i, item in enumerate(items):
        if matches(item):
            if op == "INSERT_AFTER":
                return [*items[: i + 1], copied(value), *items[i + 1 :]]
            if op == "INSERT_FIRST":
                return [copied(value), *items]
            return [*items[:i], copied(value), *items[i:]]
    return items


def _replace(items: list[M], value: M, matches: Callable[[M], bool]) -> list[M]:
    for i, item in enumerate(items):
        if matches(item):
            return [*items[:i], copied(value), *items[i + 1 :]]
    return items


def _patch_filters(
    items: list[M], patches: Sequence[Prepared], name_of: Callable[[Prepared], str]
) -> list[M]:
    """Network or HTTP filter patches (already matched down to the list's parent) on a
    filter list, as Istio: first ADD, INSERT_*, REPLACE and REMOVE in order, then MERGE on
    each filter left. ``name_of`` is the filter name a patch matches (empty: any); INSERT_FIRST
    puts the value first whatever it names, REPLACE and REMOVE need a name."""
    for p in patches:
        name = name_of(p)
        if p.operation in _ADDS:
            has_match = bool(name) and p.operation != "INSERT_FIRST"
            items = _insert(items, p.value, p.operation, _named(name), has_match)
        elif p.operation == "REPLACE" and name:
            items = _replace(items, p.value, _named(name))
        elif p.operation == "REMOVE" and name:
            items = [i for i in items if i.name != name]
    out = []
    for item in items:
        item = copied(item)
        for p in patches:
            if p.operation == "MERGE" and _named(name_of(p))(item):
                _merge_filter(item, p.value)
        out.append(item)
    return out


# ------------------------------------------------------------------------------ listeners


def listener_port(lis: listener_pb2.Listener) -> int:
    """The port a listener match names: the service port of ``inbound|PORT``, else the
    listening port."""
    if lis.name.startswith("inbound|"):
        return int(lis.name.split("|")[1])
    return int(lis.address.socket_address.port_value)


def _listener_match(p: Prepared, lis: listener_pb2.Listener) -> bool:
    lm = p.match.listener if p.match is not None else None
    if lm is None:
        return True
    if lm.name and lm.name != lis.name:
        return False
    return not lm.port_number or lm.port_number == listener_port(lis)


def _chain_match(p: Prepared, fc: listener_components_pb2.FilterChain) -> bool:
    lm = p.match.listener if p.match is not None else None
    m = lm.filter_chain if lm is not None else None
    if m is None:
        return True
    fcm = fc.filter_chain_match
    if m.name and m.name != fc.name:
        return False
    if m.sni and m.sni not in fcm.server_names:
        return False
    if m.transport_protocol and m.transport_protocol != fcm.transport_protocol:
        return False
    if m.application_protocols and not all(
        a in fcm.application_protocols for a in m.application_protocols.split(",")
    ):
        return False
    return not m.destination_port or (
        fcm.HasField("destination_port") and fcm.destination_port.value == m.destination_port
    )


def _filter_name(p: Prepared) -> str:
    lm = p.match.listener if p.match is not None else None
    fc = lm.filter_chain if lm is not None else None
    return fc.filter.name if fc is not None and fc.filter is not None else ""


def _sub_filter_name(p: Prepared) -> str:
    lm = p.match.listener if p.match is not None else None
    fc = lm.filter_chain if lm is not None else None
    f = fc.filter if fc is not None else None
    return f.sub_filter.name if f is not None and f.sub_filter is not None else ""


def _named(name: str) -> Callable[[Any], bool]:
    return lambda item: not name or item.name == name


def patch_listener(
    lis: listener_pb2.Listener, patches: Sequence[Prepared]
) -> listener_pb2.Listener | None:
    """LISTENER (MERGE, REMOVE) and everything below it for one listener."""
    patched = _patch_object(lis, patches, "LISTENER", _listener_match)
    if patched is None:
        return None
    _patch_children(
        patched.filter_chains,
        lambda fc: _patch_chain(patched, fc, patches),
        patches,
        "FILTER_CHAIN",
        lambda p: _listener_match(p, patched),
    )
    return patched


def _patch_chain(
    lis: listener_pb2.Listener,
    fc: listener_components_pb2.FilterChain,
    patches: Sequence[Prepared],
) -> listener_components_pb2.FilterChain | None:
    def selects(p: Prepared, chain: listener_components_pb2.FilterChain) -> bool:
        return _listener_match(p, lis) and _chain_match(p, chain)

    patched = _patch_object(fc, patches, "FILTER_CHAIN", selects)
    if patched is None:
        return None
    mine = [p for p in patches if p.apply_to == "NETWORK_FILTER" and selects(p, patched)]
    filters = _patch_filters(list(patched.filters), mine, _filter_name)
    for f in filters:
        if f.name in HCM_NAMES and f.HasField("typed_config"):
            _patch_hcm(lis, patched, f, patches)
    _set_list(patched.filters, filters)
    return patched


def _merge_filter(dst: Any, src: Any) -> None:
    """MERGE of a network or HTTP filter: a new name replaces the old one, and the typed
    configs are merged as messages (Istio skips filters without a typed config)."""
    if not dst.HasField("typed_config"):
        return
    if src.name:
        dst.name = src.name
    if src.HasField("typed_config"):
        merge_any(dst.typed_config, src.typed_config)


def _patch_hcm(
    lis: listener_pb2.Listener,
    fc: listener_components_pb2.FilterChain,
    f: listener_components_pb2.Filter,
    patches: Sequence[Prepared],
) -> None:
    hcm = hcm_pb2.HttpConnectionManager()
    f.typed_config.Unpack(hcm)
    mine = [
        p
        for p in patches
        if p.apply_to == "HTTP_FILTER"
        and _listener_match(p, lis)
        and _chain_match(p, fc)
        and _named(_filter_name(p))(f)
    ]
    _set_list(hcm.http_filters, _patch_filters(list(hcm.http_filters), mine, _sub_filter_name))
    if hcm.HasField("route_config"):
        # Inline routes (inbound listeners) are patched where Istio builds them
        patched = patch_route_configuration(copied(hcm.route_config), patches)
        hcm.route_config.CopyFrom(patched)
    f.typed_config.Pack(hcm)


# --------------------------------------------------------------------------------- routes


def _vhost_port(rc: route_pb2.RouteConfiguration, vh: route_components_pb2.VirtualHost) -> int:
    if rc.name.startswith("inbound|"):
        return int(rc.name.split("|")[1])
    _, sep, port = vh.name.rpartition(":")
    return int(port) if sep and port.isdigit() else 0


def _rc_port(rm: RouteConfigurationMatch, rc: route_pb2.RouteConfiguration) -> int | None:
    """The port a route configuration match asks for (0: any), or None if its name rules
    ``rc`` out. Istio names outbound route configurations by port ("9080") and inbound ones
    ``inbound|PORT||``; ours are ``outbound`` (every port) and ``inbound|PORT``, so Istio's
    names are read as what they stand for."""
    if rm.gateway or rm.port_name:
        return None  # which Gateway server made a route is not tracked yet (apply warns)
    port = rm.port_number
    if rm.name and rm.name != rc.name:
        inbound = rc.name.startswith("inbound|")
        if not inbound and rm.name.isdigit():
            named = int(rm.name)
        elif inbound and rm.name == rc.name + "||":
            named = 0
        else:
            return None
        if port and named and port != named:
            return None
        port = port or named
    return port


def _rc_match(p: Prepared, rc: route_pb2.RouteConfiguration) -> bool:
    rm = p.match.route_configuration if p.match is not None else None
    if rm is None:
        return True
    port = _rc_port(rm, rc)
    if port is None:
        return False
    return not port or any(_vhost_port(rc, vh) == port for vh in rc.virtual_hosts)


def _vhost_match(
    p: Prepared, rc: route_pb2.RouteConfiguration, vh: route_components_pb2.VirtualHost
) -> bool:
    rm = p.match.route_configuration if p.match is not None else None
    if rm is None:
        return True
    wanted = _rc_port(rm, rc)
    port = _vhost_port(rc, vh)
    if wanted is None or (wanted and port != wanted):
        return False
    m = rm.vhost
    if m is None:
        return True
    names = {vh.name}
    if rc.name.startswith("inbound|"):
        names.add(INBOUND_VHOST.format(port))
    if m.name and m.name not in names:
        return False
    return not m.domain_name or m.domain_name in vh.domains


_ACTIONS = {"ROUTE": "route", "REDIRECT": "redirect", "DIRECT_RESPONSE": "direct_response"}


def _route_match(p: Prepared, r: route_components_pb2.Route) -> bool:
    rm = p.match.route_configuration if p.match is not None else None
    m = rm.vhost.route if rm is not None and rm.vhost is not None else None
    if m is None:
        return True
    if m.name and m.name != r.name:
        return False
    return m.action == "ANY" or r.WhichOneof("action") == _ACTIONS[m.action]


def _has_route_match(p: Prepared) -> bool:
    rm = p.match.route_configuration if p.match is not None else None
    return rm is not None and rm.vhost is not None and rm.vhost.route is not None


def patch_route_configuration(
    rc: route_pb2.RouteConfiguration, patches: Sequence[Prepared]
) -> route_pb2.RouteConfiguration:
    """ROUTE_CONFIGURATION (MERGE), VIRTUAL_HOST and HTTP_ROUTE patches."""
    for p in patches:
        # Istio applies only MERGE at this level (validation refuses the others)
        if p.apply_to == "ROUTE_CONFIGURATION" and p.operation == "MERGE" and _rc_match(p, rc):
            merge(rc, p.value)
    _patch_children(
        rc.virtual_hosts,
        lambda vh: _patch_vhost(rc, vh, patches),
        patches,
        "VIRTUAL_HOST",
        lambda p: _rc_match(p, rc),
    )
    return rc


def _patch_vhost(
    rc: route_pb2.RouteConfiguration,
    vh: route_components_pb2.VirtualHost,
    patches: Sequence[Prepared],
) -> route_components_pb2.VirtualHost | None:
    patched = _patch_object(vh, patches, "VIRTUAL_HOST", lambda p, v: _vhost_match(p, rc, v))
    if patched is None:
        return None
    mine = [p for p in patches if p.apply_to == "HTTP_ROUTE" and _vhost_match(p, rc, patched)]
    # As Istio: MERGE and REMOVE on the routes there are, then the inserts
    routes = _each(patched.routes, lambda r: _patch_object(r, mine, "HTTP_ROUTE", _route_match))
    for p in mine:
        if p.operation in _ADDS:
            routes = _insert(
                routes, p.value, p.operation, partial(_route_match, p), _has_route_match(p)
            )
    _set_list(patched.routes, routes)
    return patched


# ------------------------------------------------------------------------------- clusters


def _cluster_match(p: Prepared, c: cluster_pb2.Cluster) -> bool:
    cm = p.match.cluster if p.match is not None else None
    if cm is None:
        return True
    if cm.name and cm.name != c.name:
        return False
    parts = c.name.split("|")
    _, port, subset, host = parts if len(parts) == 4 else ("", "", "", "")
    if cm.port_number and str(cm.port_number) != port:
        return False
    if cm.service and cm.service != host:
        return False
    return not cm.subset or cm.subset == subset


def patch_cluster(
    c: cluster_pb2.Cluster, patches: Sequence[Prepared]
) -> cluster_pb2.Cluster | None:
    """CLUSTER MERGE and REMOVE for one cluster (ADD is done once per proxy)."""
    return _patch_object(c, patches, "CLUSTER", _cluster_match)
