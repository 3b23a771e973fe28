"""Turning Envoy-shaped dicts into messages, so translators read like Envoy's own docs.

Importing the modules below registers their types, which ``typed_config`` entries need.
"""

from __future__ import annotations

from typing import Any, TypeVar

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.clusters.dynamic_forward_proxy.v3 import cluster_pb2 as dfp_cluster_pb2
from envoy.extensions.filters.http.cors.v3 import cors_pb2
from envoy.extensions.filters.http.dynamic_forward_proxy.v3 import (
    dynamic_forward_proxy_pb2,
)
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2,
)
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2
from envoy.extensions.retry.priority.previous_priorities.v3 import (
    previous_priorities_config_pb2,
)
from google.protobuf import json_format
from google.protobuf.message import Message

Cluster = cluster_pb2.Cluster
ClusterLoadAssignment = endpoint_pb2.ClusterLoadAssignment
Listener = listener_pb2.Listener
RouteConfiguration = route_pb2.RouteConfiguration

HCM_TYPE = (
    "type.googleapis.com/" + http_connection_manager_pb2.HttpConnectionManager.DESCRIPTOR.full_name
)
ROUTER_TYPE = "type.googleapis.com/" + router_pb2.Router.DESCRIPTOR.full_name
FAULT_TYPE = "type.googleapis.com/" + fault_pb2.HTTPFault.DESCRIPTOR.full_name
CORS_TYPE = "type.googleapis.com/" + cors_pb2.Cors.DESCRIPTOR.full_name
FILTER_CONFIG_TYPE = "type.googleapis.com/" + route_components_pb2.FilterConfig.DESCRIPTOR.full_name
DFP_FILTER_TYPE = (
    "type.googleapis.com/" + dynamic_forward_proxy_pb2.FilterConfig.DESCRIPTOR.full_name
)
DFP_ROUTE_TYPE = (
    "type.googleapis.com/" + dynamic_forward_proxy_pb2.PerRouteConfig.DESCRIPTOR.full_name
)
DFP_CLUSTER_TYPE = "type.googleapis.com/" + dfp_cluster_pb2.ClusterConfig.DESCRIPTOR.full_name
CORS_POLICY_TYPE = "type.googleapis.com/" + cors_pb2.CorsPolicy.DESCRIPTOR.full_name
PREVIOUS_HOSTS_TYPE = (
    "type.googleapis.com/" + previous_hosts_pb2.PreviousHostsPredicate.DESCRIPTOR.full_name
)
PREVIOUS_PRIORITIES_TYPE = (
    "type.googleapis.com/"
    + previous_priorities_config_pb2.PreviousPrioritiesConfig.DESCRIPTOR.full_name
)

M = TypeVar("M", bound=Message)


def build(message_type: type[M], fields: dict[str, Any]) -> M:
    """Parse an Envoy JSON-shaped dict into ``message_type``; unknown fields are a bug."""
    message: M = message_type()
    json_format.ParseDict(fields, message)
    return message
