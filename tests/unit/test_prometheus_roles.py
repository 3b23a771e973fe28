"""Prometheus discovery names a ``tsunagi gateway`` as a gateway, not a sidecar, and the
generated ``prometheus.yml``'s ``envoy-stats`` job still scrapes it (the job's keep rule
matched against each target's role, anchored as Prometheus anchors it)."""

from __future__ import annotations

import re
from pathlib import Path

from tsunagi.controlplane.prometheus import ROLE_LABEL, SIDECAR_JOB, config, targets
from tsunagi.registry import Instance


def _instance(name: str, kind: str, metrics_port: int) -> Instance:
    return Instance(
        name=name,
        service=name,
        namespace="default",
        port=0 if kind == "gateway" else 9080,
        address="127.0.0.1",
        target_port=0 if kind == "gateway" else 9081,
        metrics_port=metrics_port,
        kind=kind,
    )


def test_gateways_have_role_gateway_and_envoy_stats_keeps_both(tmp_path: Path) -> None:
    gw = _instance("ingress", "gateway", 15100)
    sc = _instance("web", "sidecar", 15101)
    groups = targets([gw, sc], "127.0.0.1:15014")
    roles = {g["labels"]["pod"]: g["labels"][ROLE_LABEL] for g in groups}
    assert roles["ingress"] == "gateway" and roles["web"] == "sidecar"

    token = tmp_path / "token"
    token.write_text("t")
    [job] = [
        j
        for j in config("http://127.0.0.1:15014", token)["scrape_configs"]
        if j["job_name"] == SIDECAR_JOB
    ]
    [keep] = job["relabel_configs"]
    assert keep["source_labels"] == [ROLE_LABEL] and keep["action"] == "keep"
    kept = {r for r in ("gateway", "sidecar", "control-plane") if re.fullmatch(keep["regex"], r)}
    assert kept == {"gateway", "sidecar"}
