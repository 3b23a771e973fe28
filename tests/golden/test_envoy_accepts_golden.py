"""Every golden output is accepted by real Envoy (`envoy --mode validate`).

xDS-only references are made static for validation: EDS clusters get their assignment
inline, the outbound listener gets its route configuration inline, and a filter that loads
its config over ECDS gets that extension config's inline. Everything else is
exactly what translation produced. The runtime is the sidecar bootstrap's, so that limits
it sets (RE2 program size) are those Envoy validates against.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tsunagi.agent.bootstrap import ProxyIdentity, bootstrap
from tsunagi.agent.envoy import envoy_binary

CASES = sorted(p for p in (Path(__file__).parent / "cases").iterdir() if p.is_dir())


def static_bootstrap(expected: dict[str, Any]) -> dict[str, Any]:
    def plain(doc: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in doc.items() if k != "@type"}

    assignments = {e["cluster_name"]: plain(e) for e in expected["endpoints"]}
    routes = {r["name"]: plain(r) for r in expected["routes"]}
    clusters = []
    for c in map(plain, expected["clusters"]):
        if c.get("type") == "EDS":
            c.pop("eds_cluster_config")
            c["type"] = "STATIC"
            c["load_assignment"] = assignments[c["name"]]
        clusters.append(c)
    extensions = {e["name"]: e["typed_config"] for e in expected.get("extension_configs", [])}

    def inline(filters: list[dict[str, Any]]) -> None:
        for f in filters:
            if "config_discovery" in f:
                f.pop("config_discovery")
                f["typed_config"] = extensions[f["name"]]

    listeners = []
    for lst in map(plain, expected["listeners"]):
        for chain in lst["filter_chains"]:
            inline(chain["filters"])
            for f in chain["filters"]:
                hcm = f["typed_config"]
                if "rds" in hcm:
                    hcm["route_config"] = routes[hcm.pop("rds")["route_config_name"]]
                inline(hcm.get("http_filters", []))
        listeners.append(lst)
    sidecar = bootstrap(ProxyIdentity("golden", "golden", "default"), "127.0.0.1", 1, 1)
    return {
        "static_resources": {"clusters": clusters, "listeners": listeners},
        "layered_runtime": sidecar["layered_runtime"],
    }


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_envoy_accepts_translation(case: Path, tmp_path: Path) -> None:
    expected = yaml.safe_load((case / "expected.yaml").read_text())
    config = tmp_path / "bootstrap.json"
    config.write_text(json.dumps(static_bootstrap(expected)))
    result = subprocess.run(
        [
            envoy_binary(),
            "--mode",
            "validate",
            "-c",
            str(config),
            "--use-dynamic-base-id",
            "--log-level",
            "error",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
