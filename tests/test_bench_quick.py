"""`make bench` must keep working: its quick mode runs every suite at tiny sizes.

This checks that the benchmarks run and produce numbers, never how fast anything is.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.e2e
def test_quick_benchmarks_run_and_report(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    files = {p.name for p in tmp_path.glob("*.json")}
    assert {"dataplane-quick.json", "propagation-quick.json", "scale-quick.json"} <= files
    prop = json.loads((tmp_path / "propagation-quick.json").read_text())["results"]
    assert all(v["n"] == prop["changes"] for v in prop["sizes"].values())
    # Its replicated case had sidecars on both replicas (or says why it could not run).
    rep = prop["replicated"]
    if "skipped" not in rep:
        assert rep["n"] == prop["changes"], rep
        assert rep["by_replica"] == {"a": 2, "b": 2}, rep
    dp = json.loads((tmp_path / "dataplane-quick.json").read_text())["results"]
    if "skipped" not in dp:
        for case in ("tsunagi", "tsunagi-ingress", "envoy-ingress"):
            assert dp["summary"][case]["errors"] == 0, case
            assert dp["summary"][case]["rps"] > 0, case
        assert dp["memory"]["gateway_envoy_private"] > 0
    assert "## Propagation" in result.stdout
    # The scale suite runs its replicated case too (or says why it could not).
    scale = json.loads((tmp_path / "scale-quick.json").read_text())["results"]
    assert set(scale["runs"]) == {"sotw", "delta", "replicated"}
    assert "## Scale" in result.stdout
    assert "Against the single process of this run" in result.stdout or (
        "The replicated run was skipped: " in result.stdout
    )
