"""The data-plane benchmark measures what it says: the policy case's check reads the policy
out of a proxy's config, and the cases it compares are measured side by side.

Behaviour only, never how fast anything is.
"""

from __future__ import annotations

from typing import Any

from benchmarks import dataplane
from benchmarks.dataplane import POLICY, POLICY_HOST, Case
from google.protobuf import json_format

from tsunagi.api import load_documents
from tsunagi.mesh import Node, World
from tsunagi.registry import Instance
from tsunagi.xds import resources as rs
from tsunagi.xds.translate import translate


def _dump(config: str) -> dict[str, Any]:
    """What the benchmark client's sidecar would show on /config_dump for ``config``: its
    translated clusters and routes, in Envoy's JSON (proto field names, defaults left out)."""
    instances = [
        Instance.from_document(
            {
                "name": f"{svc}-a",
                "service": svc,
                "namespace": "default",
                "port": 80,
                "address": "127.0.0.1",
                "target_port": 20000 + i,
                "labels": {"app": svc},
            }
        )
        for i, svc in enumerate(("upstream", POLICY_HOST))
    ]
    node = Node.from_metadata(
        "bench-client.default",
        {
            "namespace": "default",
            "service": "bench-client",
            "inbound": {"80": {"listen": 15006, "app": 8080}},
        },
    )
    world = World.build(1, load_documents(config, "bench.yaml"), instances)
    snap = translate(world, node)

    def plain(type_url: str) -> list[dict[str, Any]]:
        return [
            json_format.MessageToDict(r.body, preserving_proto_field_name=True)
            for r in snap.of(type_url).values()
        ]

    return {
        "configs": [
            {"dynamic_active_clusters": [{"cluster": c} for c in plain(rs.CLUSTER)]},
            {"dynamic_route_configs": [{"route_config": r} for r in plain(rs.ROUTE)]},
        ]
    }


def test_policy_check_finds_the_policy_in_the_translated_config() -> None:
    assert dataplane.policy_problems(_dump(POLICY)) == []


def test_policy_check_names_what_is_missing() -> None:
    problems = dataplane.policy_problems(_dump(""))
    text = "; ".join(problems)
    for missing in (
        "max_connections",
        "consecutive_5xx",
        "base_ejection_time",
        "num_retries",
        "per_try_timeout",
        "request header x-bench-policy",
    ):
        assert missing in text, text
    assert "lb_policy" not in text  # least request is tsunagi's default too, as Istio's


def test_tsunagi_cases_are_measured_beside_their_baselines_every_round() -> None:
    names = ["direct", "envoy-pair", "envoy-pair-traced", "haproxy-pair"]
    names += ["tsunagi", "tsunagi-policy", "tsunagi-traced"]
    cases = [Case(n, 1, "h", []) for n in names]
    for r in range(6):
        order = [c.name for c in dataplane.round_order(cases, r)]
        assert sorted(order) == sorted(names)
        pair = order.index("envoy-pair")
        assert {order[pair - 1], order[pair + 1]} == {"tsunagi", "tsunagi-policy"}, order
        traced = order.index("envoy-pair-traced")
        beside = order[traced - 1 : traced] + order[traced + 1 : traced + 2]
        assert "tsunagi-traced" in beside, order


def test_goals_judge_the_policy_case_against_the_pair_and_against_tsunagi() -> None:
    def case(rps: float, p50: float, cpu: float) -> dict[str, float]:
        return {
            "rps": rps,
            "p50_ms": p50,
            "p99_ms": 2 * p50,
            "cpu_per_1k_rps_per_sidecar": cpu,
            "proxy_cpu_per_1k_rps_per_sidecar": cpu,
        }

    summary = {
        "direct": case(50000, 0.5, 0.0),
        "envoy-pair": case(10000, 1.5, 0.10),
        "tsunagi": case(10000, 1.5, 0.10),
        "tsunagi-policy": case(9000, 2.0, 0.12),
    }
    g = dataplane.goals(summary)
    assert g["throughput_ratio"] == 1.0
    assert round(g["policy_throughput_ratio"], 3) == 0.9
    assert round(g["policy_added_p50_ratio"], 3) == 1.5
    assert round(g["policy_cpu_per_request_ratio"], 3) == 1.2
    assert round(g["policy_vs_tsunagi_throughput_ratio"], 3) == 0.9
    # Results from before the policy case still render.
    del summary["tsunagi-policy"]
    assert "policy_throughput_ratio" not in dataplane.goals(summary)
