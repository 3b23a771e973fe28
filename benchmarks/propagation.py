"""Propagation: from `apply` to the last ACK, with 10 and 50 real Envoy sidecars.

The sidecars are real Envoys started from the same bootstrap `tsunagi run` writes (without an
app: only their config matters here). The baseline, measured in the same run, is the same
apply-and-wait with no proxy connected: what the API, store and translation cost alone.

The replicated case runs two `tsunagi up --store etcd://…` replicas on one real etcd member
(etcd's defaults: every write is fsynced) with the largest number of sidecars split between
them, half on each replica's xDS port. The applies alternate between the replicas, each
waited for through the replica it went to, which waits for the other's proxies too: so every
sample includes the etcd write, the other replica's watch and its push.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import tsunagi.demo
from benchmarks import etcd
from benchmarks.configs import write_json
from benchmarks.controlplane import ControlPlane, shared_secrets
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
    files in its own directory (Envoy's working directory), and mTLS to xDS (to ``cp``'s
    port alone: a replicated run chooses which replica each sidecar talks to)."""
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


def _populate(cp: ControlPlane) -> None:
    """Reviews v1 and v2 (instances nobody serves: only config matters) and their subsets."""
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


def _wait_synced(cp: ControlPlane, size: int) -> None:
    deadline = time.monotonic() + 60
    while not cp.synced(size):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{size} sidecars did not sync: {cp.unsynced()}")
        time.sleep(0.1)


def _changes(planes: list[ControlPlane], changes: int) -> list[float]:
    """Seconds from each apply to the last ACK, the applies going to ``planes`` in turn."""
    samples = []
    for n in range(changes):
        w = 10 + (n % 9) * 10
        samples.append(planes[n % len(planes)].apply_and_wait(SPLIT % (w, 100 - w)))
    return samples


def run(quick: bool, workdir: Path) -> dict[str, Any]:
    sizes = [2, 4] if quick else [10, 50]
    changes = 5 if quick else 30
    procs = Procs(workdir)
    results: dict[str, Any] = {"changes": changes, "sizes": {}}
    try:
        cp = ControlPlane(procs, workdir)
        _populate(cp)
        started = 0
        for size in [0, *sizes]:
            start_sidecars(procs, workdir, cp, started, size - started)
            started = size
            _wait_synced(cp, size)
            results["sizes"][str(size)] = _pcts(_changes([cp], changes))
            print(
                f"  {size:3} sidecars: p50 {results['sizes'][str(size)]['p50_ms']:.1f} ms, "
                f"p99 {results['sizes'][str(size)]['p99_ms']:.1f} ms",
                flush=True,
            )
    finally:
        procs.stop_all()
    results["replicated"] = run_replicated(sizes[-1], changes, workdir / "replicated")
    return results


def run_replicated(size: int, changes: int, workdir: Path) -> dict[str, Any]:
    """``size`` sidecars split between two replicas on a fresh etcd; the applies alternate
    between the replicas. Every process is stopped by its pid at the end, etcd last."""
    reason = etcd.unavailable()
    if reason is not None:
        print(f"  replicated: skipped: {reason}", flush=True)
        return {"skipped": reason}
    workdir.mkdir(parents=True, exist_ok=True)
    server = etcd.start_cluster(workdir, 1)
    procs = Procs(workdir)
    try:
        store = f"{server.url}/propagation"
        first = ControlPlane(procs, workdir, store, name="replica-a")
        second = ControlPlane(
            procs, workdir, store, name="replica-b", extra_args=shared_secrets(first.state)
        )
        planes = [first, second]
        _populate(first)
        half = size // 2
        start_sidecars(procs, workdir, first, 0, half)
        start_sidecars(procs, workdir, second, half, size - half)
        _wait_synced(first, size)
        result: dict[str, Any] = {"sidecars": size, **_pcts(_changes(planes, changes))}
        everyone = first.call("GET", "/v1/proxies")["proxies"]
        result["by_replica"] = {
            name: sum(p["replica"] == f"127.0.0.1:{cp.api_port}" for p in everyone)
            for name, cp in zip(("a", "b"), planes, strict=True)
        }
    finally:
        procs.stop_all()  # the replicas first: a clean exit revokes each one's lease
        server.stop()
    print(
        f"  {size:3} sidecars on two replicas: p50 {result['p50_ms']:.1f} ms, "
        f"p99 {result['p99_ms']:.1f} ms",
        flush=True,
    )
    return result


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
    rep = res.get("replicated")
    if rep is None:
        return "\n".join(lines)
    if "skipped" in rep:
        return "\n".join([*lines, f"The replicated case was skipped: {rep['skipped']}.", ""])
    verdict = "met" if rep["p99_ms"] <= 100 else "**missed**"
    split = " + ".join(f"{n} on {name.upper()}" for name, n in rep["by_replica"].items())
    lines += [
        "### Across two replicas",
        "",
        "Two `tsunagi up --store etcd://…` replicas on one real etcd member (its defaults: "
        f"every write fsynced), {rep['sidecars']} sidecars ({split}). The applies alternate "
        "between the replicas, each waited for through the replica it went to: every sample "
        "includes the etcd transaction, the other replica's watch and both replicas' pushes.",
        "",
        "| sidecars | p50 ms | p99 ms | max ms | p50 / one process |",
        "|---|---|---|---|---|",
        f"| {rep['sidecars']} | {rep['p50_ms']:.1f} | {rep['p99_ms']:.1f} | "
        f"{rep['max_ms']:.1f} | {rep['p50_ms'] / last['p50_ms']:.2f} |",
        "",
        f"Goal p99 ≤ 100 ms: {verdict} ({rep['p99_ms']:.1f} ms).",
        "",
    ]
    return "\n".join(lines)
