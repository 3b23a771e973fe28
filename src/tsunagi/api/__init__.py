"""Istio API resources: typed models, YAML loading and validation.

Public entry points::

    resources = load_documents(yaml_text, filename="reviews.yaml")
    vs = resources[0].spec            # e.g. a VirtualServiceSpec
    vs.http[0].route[0].destination.host

Errors are reported as :class:`ValidationFailed` holding :class:`FieldError` items.
"""

from __future__ import annotations

from .checks_common import Issue
from .common import (
    LabelSelector,
    Percent,
    PolicyTargetReference,
    PortSelector,
    ResourceOf,
    StringMatch,
    WorkloadSelector,
)
from .durations import (
    DurationError,
    format_duration,
    parse_duration,
    to_seconds_nanos,
    to_timedelta,
)
from .envoyfilter import EnvoyFilterSpec
from .errors import FieldError, ValidationFailed
from .hosts import fqdn
from .kinds import KIND_INFO, KINDS, KindInfo, check_spec
from .loader import DEFAULT_NAMESPACE, Resource, load_documents, parse_document
from .networking import (
    ClientTLSSettings,
    ConnectionPoolSettings,
    ConsistentHashLB,
    CorsPolicy,
    Delegate,
    Destination,
    DestinationRuleSpec,
    GatewaySpec,
    HeaderOperations,
    Headers,
    HTTPDirectResponse,
    HTTPFaultInjection,
    HTTPMatchRequest,
    HTTPMirrorPolicy,
    HTTPRedirect,
    HTTPRetry,
    HTTPRewrite,
    HTTPRoute,
    HTTPRouteDestination,
    LoadBalancerSettings,
    LocalityLoadBalancerSetting,
    OutlierDetection,
    Port,
    PortTrafficPolicy,
    RouteDestination,
    Server,
    ServerTLSSettings,
    ServiceEntrySpec,
    SidecarSpec,
    Subset,
    TCPRoute,
    TLSRoute,
    TrafficPolicy,
    VirtualServiceSpec,
    WorkloadEntrySpec,
)
from .security import (
    AuthorizationPolicySpec,
    JWTRule,
    PeerAuthenticationSpec,
    RequestAuthenticationSpec,
    Rule,
)
from .telemetry import TelemetrySpec

__all__ = [
    "DEFAULT_NAMESPACE",
    "KINDS",
    "KIND_INFO",
    "AuthorizationPolicySpec",
    "ClientTLSSettings",
    "ConnectionPoolSettings",
    "ConsistentHashLB",
    "CorsPolicy",
    "Delegate",
    "Destination",
    "DestinationRuleSpec",
    "DurationError",
    "EnvoyFilterSpec",
    "FieldError",
    "GatewaySpec",
    "HTTPDirectResponse",
    "HTTPFaultInjection",
    "HTTPMatchRequest",
    "HTTPMirrorPolicy",
    "HTTPRedirect",
    "HTTPRetry",
    "HTTPRewrite",
    "HTTPRoute",
    "HTTPRouteDestination",
    "HeaderOperations",
    "Headers",
    "Issue",
    "JWTRule",
    "KindInfo",
    "LabelSelector",
    "LoadBalancerSettings",
    "LocalityLoadBalancerSetting",
    "OutlierDetection",
    "PeerAuthenticationSpec",
    "Percent",
    "PolicyTargetReference",
    "Port",
    "PortSelector",
    "PortTrafficPolicy",
    "RequestAuthenticationSpec",
    "Resource",
    "ResourceOf",
    "RouteDestination",
    "Rule",
    "Server",
    "ServerTLSSettings",
    "ServiceEntrySpec",
    "SidecarSpec",
    "StringMatch",
    "Subset",
    "TCPRoute",
    "TLSRoute",
    "TelemetrySpec",
    "TrafficPolicy",
    "ValidationFailed",
    "VirtualServiceSpec",
    "WorkloadEntrySpec",
    "WorkloadSelector",
    "check_spec",
    "format_duration",
    "fqdn",
    "load_documents",
    "parse_document",
    "parse_duration",
    "to_seconds_nanos",
    "to_timedelta",
]
