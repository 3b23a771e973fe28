"""The data-plane benchmark measures what it says: the policy case's check reads the policy
out of a proxy's config, and the cases it compares are measured side by side.

Behaviour only, never how fast anything is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks import configs, dataplane
from benchmarks.dataplane import POLICY, POLICY_HOST, Case
from google.protobuf import json_format

from tsunagi.api import load_documents
from tsunagi.mesh import Node, World
from tsunagi.registry import Instance
from tsunagi.xds import resources as rs
from tsunagi.xds.translate import translate
from tsunagi.xds.translate.inbound_tls import downstream_context
from tsunagi.xds.translate.mesh_tls import mesh_sni, upstream_context


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
    names = ["direct", "envoy-pair", "envoy-pair-mtls", "envoy-pair-traced", "haproxy-pair"]
    names += ["envoy-ingress", "tsunagi", "tsunagi-policy", "tsunagi-traced", "tsunagi-ingress"]
    cases = [Case(n, 1, "h", []) for n in names]
    for r in range(6):
        order = [c.name for c in dataplane.round_order(cases, r)]
        assert sorted(order) == sorted(names)
        pair = order.index("envoy-pair-mtls")
        assert {order[pair - 1], order[pair + 1]} == {"tsunagi", "tsunagi-policy"}, order
        # The plaintext pair (what mTLS costs) right beside the policy case, in the same unit.
        policy = order.index("tsunagi-policy")
        assert "envoy-pair" in (order[policy - 1], order[(policy + 1) % len(order)]), order
        for base, partner in (
            ("envoy-pair-traced", "tsunagi-traced"),
            ("envoy-ingress", "tsunagi-ingress"),
        ):
            at = order.index(base)
            assert partner in order[at - 1 : at] + order[at + 1 : at + 2], order


def test_goals_judge_tsunagi_against_the_mtls_pair_and_say_what_mtls_costs() -> None:
    def case(rps: float, p50: float, cpu: float) -> dict[str, Any]:
        return {
            "rps": rps,
            "p50_ms": p50,
            "p90_ms": p50,
            "p99_ms": 2 * p50,
            "cpu_per_1k_rps_per_sidecar": cpu,
            "proxy_cpu_per_1k_rps_per_sidecar": cpu,
            "agent_cpu_per_1k_rps_per_sidecar": 0.0,
            "errors": 0,
            "commands": ["wrk", "hey"],
        }

    summary = {
        "direct": case(50000, 0.5, 0.0),
        "envoy-pair": case(10000, 1.5, 0.10),
        "envoy-pair-mtls": case(8000, 2.0, 0.12),
        "tsunagi": case(7600, 2.0, 0.12),
        "tsunagi-policy": case(7200, 2.5, 0.13),
    }
    g = dataplane.goals(summary)
    assert round(g["throughput_ratio"], 3) == 0.95
    assert round(g["policy_throughput_ratio"], 3) == 0.9
    assert round(g["mtls_total_throughput_ratio"], 3) == 0.76
    assert round(g["mtls_pair_throughput_ratio"], 3) == 0.8
    assert round(g["mtls_pair_cpu_per_request_ratio"], 3) == 1.2
    memory = {"services": 10}
    text = dataplane.markdown({"rounds": 1, "seconds": 1, "summary": summary, "memory": memory})
    assert "Goals (tsunagi against the minimal Envoy pair with the same mTLS" in text
    assert "what mTLS costs in all (tsunagi against the plaintext envoy-pair): throughput 0.76" in (
        text
    )


def test_the_static_mtls_pair_has_the_sidecars_tls_settings(tmp_path: Path) -> None:
    """Same TLS versions, ciphers, ALPN, SNI and SAN check as tsunagi's generated contexts;
    only where the certificates come from differs (files, not SDS)."""
    ca = configs.MeshCA(tmp_path)
    server_id, client_id = ca.identity("upstream"), ca.identity("bench-client")
    assert server_id.spiffe == "spiffe://cluster.local/ns/default/sa/upstream"
    client = configs.mtls_client(configs.forwarder(1, 2, 3), client_id, server_id, "upstream")
    server = configs.mtls_server(configs.forwarder(3, 4, 5), server_id)
    up = client["static_resources"]["clusters"][0]["transport_socket"]["typed_config"]
    down = server["static_resources"]["listeners"][0]["filter_chains"][0]["transport_socket"]
    down = down["typed_config"]
    sni = mesh_sni("upstream.default.svc.cluster.local", 80)
    tsunagi_up = upstream_context(sni, [server_id.spiffe], h2=False)
    tsunagi_down = downstream_context()
    for ours, theirs in ((up, tsunagi_up), (down, tsunagi_down)):
        assert ours["@type"] == theirs["@type"]
        assert ours.get("sni") == theirs.get("sni")
        assert ours.get("require_client_certificate") == theirs.get("require_client_certificate")
        mine, generated = ours["common_tls_context"], theirs["common_tls_context"]
        for key in ("tls_params", "alpn_protocols"):
            assert mine[key] == generated[key], key
    generated_san = tsunagi_up["common_tls_context"]["combined_validation_context"]
    assert (
        up["common_tls_context"]["validation_context"]["match_typed_subject_alt_names"]
        == generated_san["default_validation_context"]["match_typed_subject_alt_names"]
    )
    assert Path(up["common_tls_context"]["tls_certificates"][0]["certificate_chain"]["filename"])
    assert "BEGIN CERTIFICATE" in server_id.cert.read_text()


def test_a_run_of_some_cases_measures_each_of_them() -> None:
    # `--cases tsunagi-ingress` without its baseline: measured anyway, every round.
    cases = [Case(n, 1, "h", []) for n in ("direct", "tsunagi-ingress")]
    for r in range(3):
        assert sorted(c.name for c in dataplane.round_order(cases, r)) == [
            "direct",
            "tsunagi-ingress",
        ]


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
    assert "ingress_throughput_ratio" not in dataplane.goals(summary)


def test_ingress_is_judged_against_the_static_front_proxy_alone() -> None:
    def case(rps: float, p50: float, cpu: float) -> dict[str, Any]:
        return {
            "rps": rps,
            "p50_ms": p50,
            "p90_ms": p50,
            "p99_ms": 2 * p50,
            "cpu_per_1k_rps_per_sidecar": cpu,
            "proxy_cpu_per_1k_rps_per_sidecar": cpu,
            "agent_cpu_per_1k_rps_per_sidecar": 0.0,
            "errors": 0,
            "commands": ["wrk", "hey"],
        }

    # A run of only the ingress cases (`--cases envoy-ingress,tsunagi-ingress`).
    summary = {
        "direct": case(50000, 0.5, 0.0),
        "envoy-ingress": case(10000, 1.5, 0.10),
        "tsunagi-ingress": case(9000, 2.5, 0.11),
    }
    g = dataplane.goals(summary)
    assert round(g["ingress_throughput_ratio"], 3) == 0.9
    assert round(g["ingress_added_p50_ratio"], 3) == 2.0
    assert round(g["ingress_cpu_per_request_ratio"], 3) == 1.1
    assert "throughput_ratio" not in g  # no tsunagi sidecar pair in this run
    memory = {"services": 10, "gateway_envoy_private": 17e6, "gateway_agent_private": 7e6}
    memory |= {"gateway_envoy_rss": 70e6, "gateway_agent_rss": 14e6}
    memory |= {"front_proxy_private": 15e6, "front_proxy_rss": 68e6}
    text = dataplane.markdown({"rounds": 1, "seconds": 1, "summary": summary, "memory": memory})
    assert "throughput ratio 0.90 (goal ≥ 0.95): **NOT met**" in text
    assert "| **tsunagi gateway total** | **24.0 MB** | |" in text
    assert "| minimal static front proxy (baseline) | 15.0 MB | 68.0 MB |" in text


def test_ingress_yaml_routes_its_host_to_the_service_at_the_benchmark_gateway() -> None:
    """What tsunagi-ingress applies binds :data:`INGRESS_HOST` to the service at a gateway
    with the benchmark's labels (and nowhere else), as the static front proxy does."""
    port = 20999
    upstream = Instance.from_document(
        {
            "name": "up-a",
            "service": dataplane.INGRESS_SERVICE,
            "namespace": "default",
            "port": 80,
            "address": "127.0.0.1",
            "target_port": 20001,
        }
    )
    world = World.build(1, load_documents(dataplane.ingress_yaml(port), "b.yaml"), [upstream])
    key, value = dataplane.INGRESS_LABEL
    meta = {"kind": "gateway", "namespace": "default", "service": dataplane.INGRESS_GATEWAY}
    meta |= {"labels": {key: value}, "gateway_address": "127.0.0.1"}
    routes = {
        name: json_format.MessageToDict(r.body, preserving_proto_field_name=True)
        for name, r in translate(world, Node.from_metadata("gw-1", meta)).of(rs.ROUTE).items()
    }
    (vhost,) = routes[f"http.{port}"]["virtual_hosts"]
    assert vhost["domains"] == [dataplane.INGRESS_HOST]
    cluster = f"outbound|80||{dataplane.INGRESS_SERVICE}.default.svc.cluster.local"
    assert [r["route"]["cluster"] for r in vhost["routes"]] == [cluster]
    # The static front proxy routes the same host to its sidecar, and no other.
    front = configs.front_proxy(port, 1, dataplane.INGRESS_HOST, 2)
    hcm = front["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    (static_vhost,) = hcm["typed_config"]["route_config"]["virtual_hosts"]
    assert static_vhost["domains"] == [dataplane.INGRESS_HOST]
