"""Typed model for ``networking.istio.io/v1alpha3`` EnvoyFilter, Istio's escape hatch.

Only the shape lives here; the rules Istio enforces across fields are in
:mod:`.checks_envoyfilter`. A patch's ``value`` stays a plain mapping (Istio's ``Struct``):
which Envoy message it is depends on ``applyTo`` (see :mod:`.envoy_values`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field

from .common import INT32_MAX, IstioModel, PolicyTargetReference, RE2Regex, WorkloadSelector

ApplyTo = Literal[
    "LISTENER",
    "FILTER_CHAIN",
    "NETWORK_FILTER",
    "HTTP_FILTER",
    "ROUTE_CONFIGURATION",
    "VIRTUAL_HOST",
    "HTTP_ROUTE",
    "CLUSTER",
    "EXTENSION_CONFIG",
]
Operation = Literal[
    "MERGE", "ADD", "REMOVE", "INSERT_BEFORE", "INSERT_AFTER", "INSERT_FIRST", "REPLACE"
]
PatchContext = Literal["ANY", "SIDECAR_INBOUND", "SIDECAR_OUTBOUND", "GATEWAY"]

LISTENER_CLASS = frozenset({"LISTENER", "FILTER_CHAIN", "NETWORK_FILTER", "HTTP_FILTER"})
"""``applyTo`` values that patch a listener or something in it (they take a listener match)."""
ROUTE_CLASS = frozenset({"ROUTE_CONFIGURATION", "VIRTUAL_HOST", "HTTP_ROUTE"})
"""``applyTo`` values that patch a route configuration or something in it."""
INSERTS = ("INSERT_BEFORE", "INSERT_AFTER", "INSERT_FIRST")
ORDERED = frozenset({"NETWORK_FILTER", "HTTP_FILTER", "HTTP_ROUTE"})
"""``applyTo`` values whose objects sit in ordered lists; on the others Istio reads an
INSERT_* operation as ADD."""
#: applyTo → operations that do something (Istio's patchers ignore the others).
OPERATIONS: dict[str, tuple[str, ...]] = {
    "LISTENER": ("MERGE", "ADD", "REMOVE", *INSERTS),
    "FILTER_CHAIN": ("MERGE", "ADD", "REMOVE", *INSERTS),
    "NETWORK_FILTER": ("MERGE", "ADD", "REMOVE", *INSERTS, "REPLACE"),
    "HTTP_FILTER": ("MERGE", "ADD", "REMOVE", *INSERTS, "REPLACE"),
    "ROUTE_CONFIGURATION": ("MERGE",),
    "VIRTUAL_HOST": ("MERGE", "ADD", "REMOVE", *INSERTS, "REPLACE"),
    "HTTP_ROUTE": ("MERGE", "ADD", "REMOVE", *INSERTS),
    "CLUSTER": ("MERGE", "ADD", "REMOVE", *INSERTS),
    # Istio makes an extension config from ADD only (InsertedExtensionConfigurations)
    "EXTENSION_CONFIG": ("ADD",),
}

HCM_NAMES = ("envoy.filters.network.http_connection_manager", "envoy.http_connection_manager")
"""The HTTP connection manager's filter name, and the deprecated one Istio still accepts."""
Port = int
"""Match ports are uint32 in Istio; 0 means "any"."""


class ProxyMatch(IstioModel):
    """``match.proxy``: which proxies (by Istio version and metadata) a patch is for."""

    proxy_version: RE2Regex | None = None
    metadata: Mapping[str, str] = Field(default_factory=dict)


class SubFilterMatch(IstioModel):
    """``...filter.subFilter``: an HTTP filter inside the connection manager, by name."""

    name: str = ""


class FilterMatch(IstioModel):
    """``...filterChain.filter``: a network filter, by name."""

    name: str = ""
    sub_filter: SubFilterMatch | None = None


class FilterChainMatch(IstioModel):
    """``match.listener.filterChain``."""

    name: str = ""
    sni: str = ""
    transport_protocol: str = ""
    application_protocols: str = ""
    filter: FilterMatch | None = None
    destination_port: int = Field(default=0, ge=0, le=65535, strict=True)


class ListenerMatch(IstioModel):
    """``match.listener``."""

    port_number: Port = Field(default=0, ge=0, le=65535, strict=True)
    port_name: str = ""
    filter_chain: FilterChainMatch | None = None
    listener_filter: str = ""
    name: str = ""


class RouteMatch(IstioModel):
    """``match.routeConfiguration.vhost.route``."""

    name: str = ""
    action: Literal["ANY", "ROUTE", "REDIRECT", "DIRECT_RESPONSE"] = "ANY"


class VirtualHostMatch(IstioModel):
    """``match.routeConfiguration.vhost``."""

    name: str = ""
    domain_name: str = ""
    route: RouteMatch | None = None


class RouteConfigurationMatch(IstioModel):
    """``match.routeConfiguration``."""

    port_number: Port = Field(default=0, ge=0, le=65535, strict=True)
    port_name: str = ""
    gateway: str = ""
    vhost: VirtualHostMatch | None = None
    name: str = ""


class ClusterMatch(IstioModel):
    """``match.cluster``."""

    port_number: Port = Field(default=0, ge=0, le=65535, strict=True)
    service: str = ""
    subset: str = ""
    name: str = ""


class EnvoyConfigObjectMatch(IstioModel):
    """``configPatches[].match``: at most one of listener, routeConfiguration, cluster."""

    context: PatchContext = "ANY"
    proxy: ProxyMatch | None = None
    listener: ListenerMatch | None = None
    route_configuration: RouteConfigurationMatch | None = None
    cluster: ClusterMatch | None = None


class Patch(IstioModel):
    """``configPatches[].patch``."""

    operation: Operation | None = None
    value: Mapping[str, Any] | None = None
    filter_class: Literal["UNSPECIFIED", "AUTHN", "AUTHZ", "STATS"] = "UNSPECIFIED"


class EnvoyConfigObjectPatch(IstioModel):
    """One entry of ``configPatches``."""

    apply_to: ApplyTo | None = None
    match: EnvoyConfigObjectMatch | None = None
    patch: Patch | None = None


class EnvoyFilterSpec(IstioModel):
    """``EnvoyFilter.spec``."""

    workload_selector: WorkloadSelector | None = None
    target_refs: tuple[PolicyTargetReference, ...] = ()
    config_patches: tuple[EnvoyConfigObjectPatch, ...] = ()
    priority: int = Field(default=0, ge=-INT32_MAX - 1, le=INT32_MAX, strict=True)
