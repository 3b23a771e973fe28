"""DestinationRule model and validation rules."""

from __future__ import annotations

import textwrap

import pytest

from tsunagi.api import DestinationRuleSpec, ValidationFailed, load_documents

from .examples import DR_ALL_FIELDS

BOOKINFO_REVIEWS_DR = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
spec:
  host: reviews
  trafficPolicy:
    loadBalancer:
      simple: RANDOM
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
    trafficPolicy:
      loadBalancer:
        simple: ROUND_ROBIN
  - name: v3
    labels:
      version: v3
"""


def _dr(spec: str) -> str:
    body = textwrap.indent(textwrap.dedent(spec).strip(), "  ")
    return (
        "apiVersion: networking.istio.io/v1beta1\nkind: DestinationRule\n"
        f"metadata:\n  name: dr\nspec:\n{body}\n"
    )


def _load(spec: str) -> DestinationRuleSpec:
    [res] = load_documents(_dr(spec))
    assert isinstance(res.spec, DestinationRuleSpec)
    return res.spec


def _errors(spec: str) -> dict[str, str]:
    with pytest.raises(ValidationFailed) as info:
        load_documents(_dr(spec))
    return {e.path: e.reason for e in info.value.errors}


def test_bookinfo_reviews_subsets() -> None:
    [res] = load_documents(BOOKINFO_REVIEWS_DR)
    spec = res.spec
    assert isinstance(spec, DestinationRuleSpec)
    assert spec.host == "reviews"
    assert [s.name for s in spec.subsets] == ["v1", "v2", "v3"]
    assert spec.subsets[0].labels == {"version": "v1"}
    assert spec.traffic_policy is not None and spec.traffic_policy.load_balancer is not None
    assert spec.traffic_policy.load_balancer.simple == "RANDOM"
    v2 = spec.subsets[1].traffic_policy
    assert v2 is not None and v2.load_balancer is not None
    assert v2.load_balancer.simple == "ROUND_ROBIN"


def test_full_traffic_policy_parses() -> None:
    spec = _load(DR_ALL_FIELDS)
    tp = spec.traffic_policy
    assert tp is not None
    assert tp.load_balancer is not None and tp.load_balancer.consistent_hash is not None
    ch = tp.load_balancer.consistent_hash
    assert ch.http_cookie is not None and ch.http_cookie.ttl == 0.0
    assert ch.ring_hash is not None and ch.ring_hash.minimum_ring_size == 1024
    assert tp.load_balancer.warmup_duration_secs == 30.0
    assert tp.connection_pool is not None and tp.connection_pool.tcp is not None
    assert tp.connection_pool.tcp.connect_timeout == pytest.approx(0.03)
    assert tp.connection_pool.tcp.max_connection_duration == 3600.0
    assert tp.outlier_detection is not None
    assert tp.outlier_detection.consecutive_5xx_errors == 7
    assert tp.outlier_detection.base_ejection_time == 900.0
    assert tp.tls is not None and tp.tls.mode == "SIMPLE"
    assert [p.port.number for p in tp.port_level_settings if p.port] == [80, 443]


def test_host_required() -> None:
    errs = _errors("subsets: [{name: v1}]")
    assert errs["spec.host"] == "required field is missing"


def test_duplicate_subset_names() -> None:
    errs = _errors(
        """
        host: reviews
        subsets:
        - {name: v1, labels: {version: v1}}
        - {name: v1, labels: {version: v2}}
        """
    )
    assert errs == {"spec.subsets[1].name": "duplicate subset name 'v1'"}


def test_subset_name_must_be_dns_label() -> None:
    errs = _errors("host: reviews\nsubsets: [{name: V_1}]")
    assert "DNS-1123" in errs["spec.subsets[0].name"]


def test_subset_without_labels_is_allowed() -> None:
    # Istio accepts a subset without labels (it then selects every endpoint).
    assert _load("host: reviews\nsubsets: [{name: all}]").subsets[0].labels == {}


def test_outlier_percent_ranges() -> None:
    errs = _errors(
        "host: r\ntrafficPolicy:\n"
        "  outlierDetection: {maxEjectionPercent: 101, minHealthPercent: -1}"
    )
    assert (
        errs["spec.trafficPolicy.outlierDetection.maxEjectionPercent"] == "must be <= 100, got 101"
    )
    assert errs["spec.trafficPolicy.outlierDetection.minHealthPercent"] == "must be >= 0, got -1"


def test_load_balancer_simple_and_consistent_hash_conflict() -> None:
    errs = _errors(
        "host: r\ntrafficPolicy:\n"
        "  loadBalancer: {simple: RANDOM, consistentHash: {useSourceIp: true}}"
    )
    assert "only one of simple and consistentHash" in errs["spec.trafficPolicy.loadBalancer"]


def test_load_balancer_needs_a_policy() -> None:
    errs = _errors("host: r\ntrafficPolicy:\n  loadBalancer: {}")
    assert "simple or consistentHash" in errs["spec.trafficPolicy.loadBalancer"]


def test_consistent_hash_needs_exactly_one_key() -> None:
    errs = _errors(
        "host: r\ntrafficPolicy:\n  loadBalancer:\n    consistentHash: "
        "{httpHeaderName: x-user, useSourceIp: true}"
    )
    assert "only one hash key" in errs["spec.trafficPolicy.loadBalancer.consistentHash"]


def test_locality_distribute_weights_sum_to_100() -> None:
    errs = _errors(
        """
        host: r
        trafficPolicy:
          loadBalancer:
            localityLbSetting:
              distribute:
              - {from: "a/*", to: {"a/*": 50, "b/*": 20}}
        """
    )
    path = "spec.trafficPolicy.loadBalancer.localityLbSetting.distribute[0].to"
    assert errs[path] == "weights must add up to 100, got 70"


def test_mutual_tls_requires_cert_and_key() -> None:
    errs = _errors("host: r\ntrafficPolicy:\n  tls: {mode: MUTUAL}")
    assert "spec.trafficPolicy.tls.clientCertificate" in errs
    assert "spec.trafficPolicy.tls.privateKey" in errs
    _load("host: r\ntrafficPolicy:\n  tls: {mode: MUTUAL, credentialName: client-cred}")


def test_tls_mode_enum() -> None:
    errs = _errors("host: r\ntrafficPolicy:\n  tls: {mode: STRICT}")
    reason = errs["spec.trafficPolicy.tls.mode"]
    for mode in ("DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL"):
        assert mode in reason


def test_port_level_settings_need_unique_ports() -> None:
    errs = _errors(
        """
        host: r
        trafficPolicy:
          portLevelSettings:
          - port: {number: 80}
            loadBalancer: {simple: RANDOM}
          - port: {number: 80}
            loadBalancer: {simple: LEAST_REQUEST}
          - loadBalancer: {simple: RANDOM}
        """
    )
    assert "duplicate port 80" in errs["spec.trafficPolicy.portLevelSettings[1].port.number"]
    assert "port is required" in errs["spec.trafficPolicy.portLevelSettings[2].port"]


def test_connection_pool_durations_and_negatives() -> None:
    errs = _errors(
        "host: r\ntrafficPolicy:\n  connectionPool:\n"
        "    tcp: {maxConnections: -1, connectTimeout: 10}"
    )
    assert errs["spec.trafficPolicy.connectionPool.tcp.maxConnections"] == "must be >= 0, got -1"
    assert "duration" in errs["spec.trafficPolicy.connectionPool.tcp.connectTimeout"]


def test_local_origin_failures_need_split() -> None:
    errs = _errors(
        "host: r\ntrafficPolicy:\n  outlierDetection: {consecutiveLocalOriginFailures: 3}"
    )
    assert (
        "splitExternalLocalOriginErrors"
        in errs["spec.trafficPolicy.outlierDetection.consecutiveLocalOriginFailures"]
    )


def test_subset_traffic_policy_is_validated() -> None:
    errs = _errors(
        "host: r\nsubsets:\n- name: v1\n  trafficPolicy: {loadBalancer: {simple: FASTEST}}"
    )
    assert "ROUND_ROBIN" in errs["spec.subsets[0].trafficPolicy.loadBalancer.simple"]
