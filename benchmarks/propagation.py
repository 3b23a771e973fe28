"""Propagation: from `apply` to the last ACK, with 10 and 50 real Envoy sidecars.

The sidecars are real Envoys started from the same bootstrap `tsunagi run` writes (without an
app: only their config matters here). The baseline, measured in the same run, is the same
apply-and-wait with no proxy connected: what the API, store and translation cost alone.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import tsunagi.demo
from benchmarks.configs import write_json
from benchmarks.controlplane import ControlPlane
from benchmarks.procs import Procs, envoy_command, free_port
from tsunagi.agent.bootstrap import ProxyIdentity, bootstrap
from tsunagi.agent.csr import key_and_csr
from tsunagi.agent.sds_files import write_secrets
from tsunagi.spiffe import spiffe_id

# The Bookinfo demo's DestinationRules: reviews has subsets v1, v2 and v3.
SUBSETS = (Path(tsunagi.demo.__file__).parent / "rules" / "destination-rules.yaml").read_text()

SPLIT = """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v1}
      weight: %d
    - destination: {host: reviews, subset: v2}
      weight: %d
"""


def start_sidecars(procs: Procs, workdir: Path, cp: ControlPlane, first: int, count: int) -> None:
    """Each sidecar gets what its agent would: a certificate for a key made here, as SDS
    files in its own directory (Envoy's working directory), and mTLS to xDS."""
    trust = cp.call("GET", "/v1/bootstrap")
    for i in range(first, first + count):
        ident = ProxyIdentity(
            node_id=f"bench-{i}.default",
            service=f"bench-{i}",
            namespace="default",
            labels={"app": f"bench-{i}"},
            outbound_port=free_port(),
            inbound={80: (free_port(), free_port())},
            service_account=f"bench-{i}",
        )
        home = workdir / f"sidecar-{i}"
        home.mkdir(exist_ok=True)
        identity = spiffe_id(trust["trust"]["trustDomain"], "default", ident.service_account)
        key, csr = key_and_csr(identity)
        signed = cp.call(
            "POST",
            "/v1/certificates",
            {"csr": csr.decode(), "namespace": "default", "serviceAccount": ident.service_account},
        )
        write_secrets(
            str(home), signed["certificateChain"], key.decode(), signed["rootCertificates"]
        )
        config = bootstrap(
            ident, "127.0.0.1", cp.xds_port, free_port(), True, trust["xds"]["serverName"]
        )
        path = write_json(home / "envoy.json", config)
        procs.start(f"sidecar-{i}", envoy_command(path), cwd=home)


def _pcts(samples: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in samples)
    return {
        "p50_ms": statistics.median(ms),
        "p99_ms": ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))],
        "max_ms": ms[-1],
        "n": len(ms),
    }


def run(quick: bool, workdir: Path) -> dict[str, Any]:
    sizes = [2, 4] if quick else [10, 50]
    changes = 5 if quick else 30
    procs = Procs(workdir)
    results: dict[str, Any] = {"changes": changes, "sizes": {}}
    try:
        cp = ControlPlane(procs, workdir)
        for i, version in enumerate(("v1", "v2")):
            cp.call(
                "POST",
                "/v1/instances",
                {
                    "name": f"reviews-{version}",
                    "service": "reviews",
                    "port": 9080,
                    "target_port": 20000 + i,
                    "labels": {"version": version},
                },
            )
        cp.apply_and_wait(SUBSETS)
        started = 0
        for size in [0, *sizes]:
            start_sidecars(procs, workdir, cp, started, size - started)
            started = size
            deadline = time.monotonic() + 60
            while not cp.synced(size):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{size} sidecars did not sync: {cp.unsynced()}")
                time.sleep(0.1)
            samples = []
            for n in range(changes):
                w = 10 + (n % 9) * 10
                samples.append(cp.apply_and_wait(SPLIT % (w, 100 - w)))
            results["sizes"][str(size)] = _pcts(samples)
            print(
                f"  {size:3} sidecars: p50 {results['sizes'][str(size)]['p50_ms']:.1f} ms, "
                f"p99 {results['sizes'][str(size)]['p99_ms']:.1f} ms",
                flush=True,
            )
    finally:
        procs.stop_all()
    return results


def markdown(res: dict[str, Any]) -> str:
    sizes = res["sizes"]
    base = sizes["0"]
    lines = [
        "## Propagation",
        "",
        f"Time from sending `apply` to the last sidecar's ACK (`/v1/wait`, as `apply --wait` "
        f"does), over {res['changes']} changes of a reviews traffic split. Sidecars are real "
        "Envoys (delta ADS) with the bootstrap `tsunagi run` writes. Baseline: the same with no "
        "sidecar connected (API + store + translation alone), measured in the same run.",
        "",
        "| sidecars | p50 ms | p99 ms | max ms | p50 / baseline |",
        "|---|---|---|---|---|",
    ]
    for size, v in sizes.items():
        lines.append(
            f"| {size} | {v['p50_ms']:.1f} | {v['p99_ms']:.1f} | {v['max_ms']:.1f} | "
            f"{v['p50_ms'] / base['p50_ms']:.2f} |"
        )
    last = sizes[max(sizes, key=int)]
    verdict = "met" if last["p99_ms"] <= 100 else "**missed**"
    lines += [
        "",
        f"Goal p99 ≤ 100 ms at 50 sidecars: {verdict} ({last['p99_ms']:.1f} ms). "
        "For scale, Istio's debounce alone waits 100 ms before it starts.",
        "",
    ]
    return "\n".join(lines)
