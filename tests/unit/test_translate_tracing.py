"""The tracing fields of a sidecar's connection managers and its collector cluster."""

from __future__ import annotations

import pytest
from envoy.config.core.v3.base_pb2 import TrafficDirection
from envoy.config.listener.v3.listener_pb2 import Listener

from tsunagi.mesh import Node
from tsunagi.mesh import telemetry as tm
from tsunagi.xds.translate import tracing, translate_local

TRACED = tm.Tracing(sampling=0.5, collector=("127.0.0.1", 9411))
NODE = Node(id="pp", service="productpage", inbound={9080: (15006, 8080)})


def test_no_tracing_adds_nothing() -> None:
    quiet = tm.ProxyTelemetry()
    assert tracing.hcm_tracing(quiet, "outbound") == {}
    assert tracing.tracing_clusters(quiet) == []
    local = translate_local(NODE, quiet)
    assert set(local.clusters) == {"inbound|9080||"}
    assert all(not r.body.value.count(b"zipkin") for r in local.listeners.values())


def test_each_side_follows_its_own_setting() -> None:
    server_only = tm.ProxyTelemetry(server_tracing=TRACED)
    assert tracing.hcm_tracing(server_only, "outbound") == {}
    inbound = tracing.hcm_tracing(server_only, "inbound")["tracing"]
    assert inbound["random_sampling"] == {"value": 0.5}
    assert inbound["provider"]["typed_config"]["collector_cluster"] == tracing.COLLECTOR_CLUSTER
    assert [c["name"] for c in tracing.tracing_clusters(server_only)] == ["zipkin"]
    with pytest.raises(ValueError, match="direction"):
        tracing.hcm_tracing(server_only, "sideways")


def test_request_id_sampling_off_and_tags() -> None:
    t = tm.Tracing(
        sampling=1.0,
        collector=("127.0.0.1", 9411),
        custom_tags=(("pod", "environment", "HOSTNAME", "x"), ("team", "literal", "shop", "")),
        use_request_id=False,
    )
    fields = tracing.hcm_tracing(tm.ProxyTelemetry(tracing=t), "outbound")
    assert (
        fields["request_id_extension"]["typed_config"]["use_request_id_for_trace_sampling"] is False
    )
    assert fields["tracing"]["custom_tags"] == [
        {"tag": "pod", "environment": {"name": "HOSTNAME", "default_value": "x"}},
        {"tag": "team", "literal": {"value": "shop"}},
    ]


def test_collector_by_name_or_ipv6() -> None:
    named = tm.ProxyTelemetry(tracing=tm.Tracing(1.0, ("collector.local", 9411)))
    assert tracing.tracing_clusters(named)[0]["type"] == "STRICT_DNS"
    v6 = tm.ProxyTelemetry(tracing=tm.Tracing(1.0, ("::1", 9411)))
    assert tracing.tracing_clusters(v6)[0]["type"] == "STATIC"
    zipkin = tracing.hcm_tracing(v6, "outbound")["tracing"]["provider"]["typed_config"]
    assert zipkin["collector_hostname"] == "[::1]:9411"


def test_traced_listeners_say_their_direction() -> None:
    both = tm.ProxyTelemetry(tracing=TRACED, server_tracing=TRACED)
    local = translate_local(NODE, both)
    assert set(local.clusters) == {"inbound|9080||", "zipkin"}
    directions = {}
    for name, r in local.listeners.items():
        listener = Listener()
        assert r.body.Unpack(listener)
        directions[name] = TrafficDirection.Name(listener.traffic_direction)
    assert directions == {"outbound": "OUTBOUND", "inbound|9080": "INBOUND"}
    # an untraced listener keeps Envoy's default (UNSPECIFIED): nothing changes for it
    untraced = translate_local(NODE, tm.ProxyTelemetry(server_tracing=TRACED))
    listener = Listener()
    assert untraced.listeners["outbound"].body.Unpack(listener)
    assert listener.traffic_direction == 0
