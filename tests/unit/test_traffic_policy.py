"""DestinationRule trafficPolicy: Istio's merge order, and what apply still warns about.

The Envoy output for every field group is in the golden case
``tests/golden/cases/destination-rule-policy``; these tests pin the rules behind it.
"""

from __future__ import annotations

from typing import Any

from tsunagi.api import DestinationRuleSpec, load_documents
from tsunagi.mesh import World
from tsunagi.mesh.analysis import not_yet_enforced, passthrough_without_dns
from tsunagi.xds.translate.clusters import eds_cluster
from tsunagi.xds.translate.policy import apply, cluster_policy, hash_policy

from ..e2e.rules import destination_rule

RULE = destination_rule(
    """
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
    connectionPool: {tcp: {maxConnections: 10}}
    outlierDetection: {consecutive5xxErrors: 3}
    portLevelSettings:
    - port: {number: 9081}
      loadBalancer: {simple: RANDOM}
  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy:
      loadBalancer: {simple: LEAST_REQUEST}
  - name: v2
    labels: {version: v2}
    trafficPolicy:
      portLevelSettings:
      - port: {number: 9080}
        connectionPool: {http: {http1MaxPendingRequests: 1}}
"""
)


def spec(rule: str = RULE) -> DestinationRuleSpec:
    (resource,) = load_documents(rule, "rule.yaml")
    assert isinstance(resource.spec, DestinationRuleSpec)
    return resource.spec


def cluster(port: int, subset: str = "") -> dict[str, Any]:
    return apply(
        eds_cluster(f"outbound|{port}|{subset}|reviews"), cluster_policy(spec(), port, subset)
    )


def test_top_level_policy_applies_to_the_service_cluster() -> None:
    c = cluster(9080)
    assert c["lb_policy"] == "ROUND_ROBIN"
    assert c["circuit_breakers"]["thresholds"][0]["max_connections"] == 10
    assert c["outlier_detection"]["consecutive_5xx"] == 3


def test_a_subset_setting_replaces_only_the_setting_of_its_kind() -> None:
    c = cluster(9080, "v1")
    assert c["lb_policy"] == "LEAST_REQUEST"
    assert c["circuit_breakers"]["thresholds"][0]["max_connections"] == 10  # inherited
    assert c["outlier_detection"]["consecutive_5xx"] == 3  # inherited


def test_port_level_settings_replace_everything_and_do_not_inherit() -> None:
    top_port = cluster(9081)
    assert top_port["lb_policy"] == "RANDOM"
    assert "outlier_detection" not in top_port  # default, not the top level's
    assert top_port["circuit_breakers"]["thresholds"][0]["max_connections"] == 4294967295
    # The subset's own port-level entry wins over the subset and the top level.
    sub_port = cluster(9080, "v2")
    assert sub_port["lb_policy"] == "LEAST_REQUEST"  # the default
    assert sub_port["circuit_breakers"]["thresholds"][0]["max_pending_requests"] == 1
    assert "outlier_detection" not in sub_port
    # A subset with no port-level entry for the port: top-level port settings, then subset.
    assert cluster(9081, "v1")["lb_policy"] == "LEAST_REQUEST"
    assert cluster(9081, "v2")["lb_policy"] == "RANDOM"


def test_no_rule_or_no_policy_means_istio_defaults() -> None:
    plain = eds_cluster("outbound|9080||reviews")
    assert apply(eds_cluster("outbound|9080||reviews"), cluster_policy(None, 9080)) == plain
    assert hash_policy(cluster_policy(spec(), 9080)) is None


def test_consistent_hash_sets_the_ring_and_the_route_hash_policy() -> None:
    hashed = spec(
        destination_rule(
            """
  trafficPolicy:
    loadBalancer: {consistentHash: {httpHeaderName: x-user}}
"""
        )
    )
    policy = cluster_policy(hashed, 9080)
    assert hash_policy(policy) == [{"header": {"header_name": "x-user"}}]
    c = apply(eds_cluster("outbound|9080||reviews"), policy)
    assert c["lb_policy"] == "RING_HASH"
    assert c["ring_hash_lb_config"] == {"minimum_ring_size": "1024"}


def test_apply_warns_only_about_what_is_not_enforced() -> None:
    docs = load_documents(
        destination_rule(
            """
  trafficPolicy:
    loadBalancer:
      simple: PASSTHROUGH
    connectionPool: {tcp: {maxConnections: 1, idleTimeout: 1h}}
    outlierDetection: {consecutiveErrors: 5}
    tls: {mode: SIMPLE, credentialName: api-cert}
  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy:
      loadBalancer:
        localityLbSetting: {enabled: true}
"""
        ),
        "rule.yaml",
    )
    warnings = not_yet_enforced(docs)
    text = "\n".join(warnings)
    # SIMPLE is TLS origination (tests/e2e/test_egress.py); a credentialName only where
    # Istio applies it (tests/e2e/test_dr_credentials.py).
    assert (
        "spec.trafficPolicy.tls.credentialName applies only to gateways and to sidecars a "
        "workloadSelector selects" in text
    )
    assert "PASSTHROUGH" not in text  # enforced (tests/e2e/test_passthrough.py)
    assert "idleTimeout" not in text  # enforced (tests/golden/cases/tcp-idle-timeout)
    assert "localityLbSetting" not in text  # enforced (tests/unit/test_locality.py)
    assert (
        "spec.trafficPolicy.outlierDetection.consecutiveErrors is deprecated; "
        "use consecutiveGatewayErrors" in text
    )
    assert not any("maxConnections" in w or "trafficPolicy is not" in w for w in warnings)
    enforced = load_documents(RULE, "rule.yaml")
    assert not_yet_enforced(enforced) == []


def test_passthrough_is_a_forward_proxy_and_warns_for_mesh_services() -> None:
    rule = load_documents(
        destination_rule("  trafficPolicy: {loadBalancer: {simple: PASSTHROUGH}}")
    )
    spec = rule[0].spec
    assert isinstance(spec, DestinationRuleSpec)
    c = apply(eds_cluster("outbound|9080||reviews"), cluster_policy(spec, 9080))
    assert c["lb_policy"] == "CLUSTER_PROVIDED"
    assert c["cluster_type"]["name"] == "envoy.clusters.dynamic_forward_proxy"
    assert "eds_cluster_config" not in c and "type" not in c
    mesh_service = World.build(1, rule, [])
    [warning] = passthrough_without_dns(mesh_service, rule)
    assert "no ServiceEntry declares it" in warning
    entry = load_documents(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: r}\n"
        "spec: {hosts: [reviews], resolution: STATIC, endpoints: [{address: 10.0.0.1}],\n"
        "  ports: [{number: 9080, name: http, protocol: HTTP}]}\n"
    )
    assert passthrough_without_dns(World.build(1, [*rule, *entry], []), rule) == []
