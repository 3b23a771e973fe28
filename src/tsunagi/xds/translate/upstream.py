"""Which HTTP version a cluster speaks to its endpoints, from the port's protocol.

Istio's rule (``setUpstreamProtocol``, then the DestinationRule's connection pool): ports
whose protocol is HTTP2, GRPC or GRPC-WEB get HTTP/2 upstreams, whatever
``h2UpgradePolicy`` says (``DO_NOT_UPGRADE`` only keeps HTTP/1.1 ports from being upgraded);
``connectionPool.http.useClientProtocol`` still wins and uses the client's protocol, which
for a gRPC client is HTTP/2 anyway. Other ports keep what :mod:`.policy` decided (HTTP/1.1
unless the rule upgrades them).

Inbound, the cluster to the local app speaks HTTP/2 without TLS (h2c) on the same ports:
a gRPC server expects nothing else.
"""

from __future__ import annotations

from typing import Any

from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2

from tsunagi import protocols
from tsunagi.xds.translate.policy import HTTP_OPTIONS, ClusterPolicy

_OPTIONS_TYPE = (
    "type.googleapis.com/" + http_protocol_options_pb2.HttpProtocolOptions.DESCRIPTOR.full_name
)


def _explicit_h2(cluster: dict[str, Any], h2: dict[str, Any]) -> dict[str, Any]:
    typed = cluster.setdefault("typed_extension_protocol_options", {})
    current = typed.get(HTTP_OPTIONS, {})
    options: dict[str, Any] = {
        "@type": _OPTIONS_TYPE,
        "explicit_http_config": {"http2_protocol_options": h2},
    }
    # Idle timeout, max requests per connection and the like hold for either version.
    if "common_http_protocol_options" in current:
        options["common_http_protocol_options"] = current["common_http_protocol_options"]
    typed[HTTP_OPTIONS] = options
    return cluster


def outbound(cluster: dict[str, Any], protocol: str, policy: ClusterPolicy) -> dict[str, Any]:
    """``cluster`` (already under ``policy``) speaking the HTTP version ``protocol`` needs;
    changed in place and returned."""
    if not protocols.is_http2(protocol):
        return cluster
    http = policy.connection_pool.http if policy.connection_pool is not None else None
    if http is not None and http.use_client_protocol:
        return cluster  # the client's protocol, as policy set it
    h2: dict[str, Any] = {}
    if http is not None and http.max_concurrent_streams:
        h2["max_concurrent_streams"] = http.max_concurrent_streams
    return _explicit_h2(cluster, h2)


def inbound(cluster: dict[str, Any], protocol: str) -> dict[str, Any]:
    """The inbound ``cluster`` to the local app: h2c for HTTP/2 protocols."""
    return _explicit_h2(cluster, {}) if protocols.is_http2(protocol) else cluster
