"""A gateway's telemetry, without processes: what its scope carries, the loggers and tracer
its listeners get (Istio's client side), the marker of its access log lines, and its agent's
metrics with the gateway as the source."""

from __future__ import annotations

import http.client
import re
from types import MappingProxyType

from tsunagi import proxy_contract as pc
from tsunagi.agent.metrics import Aggregator, Identity
from tsunagi.agent.metrics_server import MetricsServer
from tsunagi.api import load_documents
from tsunagi.mesh import ClientScope, Node, World
from tsunagi.mesh.telemetry import (
    ACCESS_LOG_JSON,
    ACCESS_LOG_TEXT,
    GatewayReporting,
    MeshTelemetry,
    ProxyTelemetry,
    Tracing,
)
from tsunagi.xds.translate import accesslog, gateway_telemetry

GATEWAY = Node(
    id="edge-abc123.shop",
    namespace="shop",
    service="edge",
    labels=MappingProxyType({"istio": "ingressgateway"}),
    kind=pc.GATEWAY_KIND,
    metrics_log="/run/metrics.fifo",
)
TRACED = Tracing(sampling=100.0, collector=("127.0.0.1", 9411))


def scope(telemetry: ProxyTelemetry, metrics_log: str = "/run/metrics.fifo") -> ClientScope:
    reporting = GatewayReporting("edge-abc123.shop", metrics_log, telemetry)
    return ClientScope("shop", gateway="127.0.0.1", reporting=reporting)


def test_a_scope_without_reporting_adds_nothing() -> None:
    bare = ClientScope("shop", gateway="127.0.0.1")
    assert gateway_telemetry.hcm_fields(bare) == {}
    assert gateway_telemetry.tcp_loggers(bare) == []
    # Nothing to report (no FIFO, no access log, no tracing): nothing either.
    quiet = scope(ProxyTelemetry(), metrics_log="")
    assert gateway_telemetry.hcm_fields(quiet) == {}
    assert gateway_telemetry.tcp_loggers(quiet) == []


def test_http_reports_as_the_client_side_with_its_own_hop_in_traces() -> None:
    fields = gateway_telemetry.hcm_fields(scope(ProxyTelemetry(ACCESS_LOG_TEXT, tracing=TRACED)))
    loggers = fields["access_log"]
    lines = [
        lg["typed_config"]["log_format"]["text_format_source"]["inline_string"] for lg in loggers
    ]
    # The source side's metric line (reporter="source"), every request's, to the agent's FIFO.
    assert lines[0].split("\t")[0] == "s" and "filter" not in loggers[0]
    assert loggers[0]["typed_config"].get("path") == "/run/metrics.fifo"
    # Istio's access log, marked with the gateway's id.
    assert lines[1].startswith("[gateway edge-abc123.shop] [%START_TIME%]")
    assert fields["tracing"]["spawn_upstream_span"] is True
    assert fields["tracing"]["random_sampling"] == {"value": 100.0}


def test_tcp_proxies_get_the_outbound_tcp_line_and_the_log() -> None:
    loggers = gateway_telemetry.tcp_loggers(scope(ProxyTelemetry(ACCESS_LOG_JSON)))
    metric = loggers[0]["typed_config"]["log_format"]["text_format_source"]["inline_string"]
    assert metric.split("\t")[0] == pc.METRICS_LINE_TCP_SOURCE
    assert metric.rstrip("\n").split("\t")[-3:] == [
        "%UPSTREAM_CLUSTER%",
        "%UPSTREAM_HOST%",
        "%UPSTREAM_PEER_URI_SAN%",
    ]
    json_format = loggers[1]["typed_config"]["log_format"]["json_format"]
    assert json_format[accesslog.GATEWAY_KEY] == "edge-abc123.shop"
    assert accesslog.SIDECAR_KEY not in json_format


def test_only_the_client_side_of_telemetry_applies_to_a_gateway() -> None:
    # Istio's gateway listeners are in CLIENT workload mode: a SERVER-only access log and
    # SERVER-only tracing leave the gateway alone.
    server_only = ProxyTelemetry(ACCESS_LOG_TEXT, access_log_mode="SERVER", server_tracing=TRACED)
    fields = gateway_telemetry.hcm_fields(scope(server_only, metrics_log=""))
    assert fields == {}


TELEMETRY = """
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: ingress, namespace: shop}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  tracing:
  - randomSamplingPercentage: 25
  accessLogging:
  - providers: [{name: envoy}]
"""


def test_the_gateways_scope_carries_its_telemetry_selected_by_labels() -> None:
    mesh = MeshTelemetry(collector=("127.0.0.1", 9411))
    world = World.build(1, load_documents(TELEMETRY, "t.yaml"), [], mesh)
    reporting = world.scope_of(GATEWAY).reporting
    assert reporting is not None
    assert (reporting.proxy, reporting.metrics_log) == ("edge-abc123.shop", "/run/metrics.fifo")
    assert reporting.telemetry.access_log == ACCESS_LOG_TEXT
    assert reporting.telemetry.tracing is not None
    assert reporting.telemetry.tracing.sampling == 25.0
    tags = dict((t[0], t[2]) for t in reporting.telemetry.tracing.custom_tags)
    assert tags["istio.canonical_service"] == "edge"
    # Sidecars' scopes carry nothing of the kind (their listeners read their node).
    sidecar = Node(id="web-1.shop", namespace="shop", service="web")
    assert world.scope_of(sidecar).reporting is None
    # Another gateway (other labels) is not selected.
    other = Node(id="egress-1.shop", namespace="shop", service="egress", kind=pc.GATEWAY_KIND)
    other_reporting = world.scope_of(other).reporting
    assert other_reporting is not None and other_reporting.telemetry.access_log == ""


def test_access_log_markers_tell_gateways_from_sidecars() -> None:
    assert accesslog.access_log_marker(GATEWAY) == "[gateway edge-abc123.shop] "
    sidecar = Node(id="web-1.shop", namespace="shop")
    assert accesslog.access_log_marker(sidecar) == "[sidecar web-1.shop] "


def test_the_gateways_agent_counts_requests_with_the_gateway_as_source() -> None:
    peer = "reviews-v1;default;reviews;v1;Kubernetes"
    agg = Aggregator(
        Identity("edge", "shop", {"istio": "ingressgateway"}),
        resolve=lambda hosts: {h: peer for h in hosts if h == "127.0.0.1:15006"},
    )
    cluster = "outbound|9080||reviews.default.svc.cluster.local"
    line = "\t".join(("s", cluster, "127.0.0.1:15006", "200", "-", "-", "3", "80", "300"))
    agg.feed([line, line, "\t".join(("s", "-", "-", "404", "NR", "-", "0", "0", "0"))])
    text = agg.render()
    found = {}
    for m in re.finditer(r"^istio_requests_total\{(.*)\} (\S+)$", text, re.M):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        found[labels["response_code"]] = (labels, float(m.group(2)))
    labels, count = found["200"]
    assert count == 2
    assert labels["reporter"] == "source"
    assert (labels["source_workload"], labels["source_canonical_service"]) == ("edge", "edge")
    assert labels["source_workload_namespace"] == "shop"
    assert labels["source_app"] == "unknown"  # no app label, as Istio reports it
    assert (labels["destination_workload"], labels["destination_app"]) == ("reviews-v1", "reviews")
    assert labels["destination_service"] == "reviews.default.svc.cluster.local"
    # Envoy's own 404 (no virtual host): counted, the destination unknown.
    labels, count = found["404"]
    assert count == 1 and labels["destination_service"] == "unknown"
    assert labels["response_flags"] == "NR"


def test_the_metrics_endpoint_listens_on_the_address_it_registers() -> None:
    agg = Aggregator(Identity("edge", "shop", {}))
    server = MetricsServer(0, agg, envoy_admin_port=1, address="127.0.0.2")
    server.start()
    try:
        c = http.client.HTTPConnection("127.0.0.2", server.port, timeout=5)
        c.request("GET", "/stats/istio")
        assert c.getresponse().status == 200
        c.close()
    finally:
        server.close()
