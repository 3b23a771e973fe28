"""Data plane: one upstream reached four ways, measured in interleaved rounds.

1. direct            client → upstream                       (the physical limit)
2. tsunagi           client → client sidecar → server sidecar → upstream, set up by
                     `tsunagi up` / `tsunagi run` exactly as a user would
3. envoy-pair        the same two hops, minimal hand-written static Envoy configs
4. haproxy-pair      the same two hops through HAProxy
"""

from __future__ import annotations

import http.client
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import configs, load
from benchmarks.controlplane import ControlPlane
from benchmarks.procs import (
    Procs,
    children,
    cpu_seconds,
    envoy_command,
    free_port,
    private_bytes,
    rss_bytes,
    tsunagi,
    wait_port,
)

SERVICES_FOR_MEMORY = 100


class Case:
    """One way to reach the upstream, and the proxy processes it costs."""

    def __init__(self, name: str, port: int, host: str, pids: list[int]) -> None:
        self.name, self.port, self.host, self.pids = name, port, host, pids

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"


def _envoy(procs: Procs, workdir: Path, name: str, doc: dict[str, Any]) -> int:
    path = configs.write_json(workdir / f"{name}.json", doc)
    proc = procs.start(
        name,
        envoy_command(path),
    )
    return proc.pid


def _answers(case: Case) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", case.port, timeout=2)
    try:
        conn.request("GET", "/", headers={"Host": case.host})
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def _wait_answers(case: Case, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not _answers(case):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{case.name} does not answer on port {case.port}")
        time.sleep(0.1)


class Setup:
    """Starts every case; remembers what tsunagi needs for the memory measurement."""

    def __init__(self, procs: Procs, workdir: Path) -> None:
        self.procs, self.workdir = procs, workdir
        self.cp: ControlPlane | None = None
        self.tsunagi_client: tuple[int, int] = (0, 0)  # (agent pid, envoy pid)

    def cases(self) -> list[Case]:
        up = free_port()
        _envoy(self.procs, self.workdir, "upstream", configs.upstream(up, free_port()))
        wait_port(up)
        cases = [Case("direct", up, "upstream", [])]
        s1, c1 = free_port(), free_port()
        pids = [
            _envoy(
                self.procs, self.workdir, "envoy-server", configs.forwarder(s1, free_port(), up)
            ),
            _envoy(
                self.procs, self.workdir, "envoy-client", configs.forwarder(c1, free_port(), s1)
            ),
        ]
        cases.append(Case("envoy-pair", c1, "upstream", pids))
        if load.have("haproxy"):
            s2, c2 = free_port(), free_port()
            pids = []
            for name, port, target in (("haproxy-server", s2, up), ("haproxy-client", c2, s2)):
                cfg = self.workdir / f"{name}.cfg"
                cfg.write_text(configs.haproxy(port, target))
                pids.append(self.procs.start(name, ["haproxy", "-f", str(cfg)]).pid)
            cases.append(Case("haproxy-pair", c2, "upstream", pids))
        cases.append(self._tsunagi())
        for case in cases:
            _wait_answers(case)
        return cases

    def _tsunagi(self) -> Case:
        self.cp = ControlPlane(self.procs, self.workdir)
        env = self.cp.env
        server = self.procs.start(
            "tsunagi-server",
            tsunagi(
                "run",
                "--service",
                "upstream",
                "--port",
                "80",
                "--concurrency",
                "1",
                "--name",
                "bench-server",
                "--",
                sys.executable,
                "-m",
                "benchmarks.upstream",
            ),
            env,
        )
        outbound = free_port()
        client = self.procs.start(
            "tsunagi-client",
            tsunagi(
                "run",
                "--service",
                "bench-client",
                "--port",
                "80",
                "--concurrency",
                "1",
                "--name",
                "bench-client",
                "--outbound-port",
                str(outbound),
                "--",
                sys.executable,
                "-c",
                "import time; time.sleep(10**6)",
            ),
            env,
        )
        case = Case("tsunagi", outbound, "upstream", [])
        _wait_answers(case)
        server_envoy = children(server.pid, "envoy")
        client_envoy = children(client.pid, "envoy")
        case.pids = [client.pid, *client_envoy, server.pid, *server_envoy]
        self.tsunagi_client = (client.pid, client_envoy[0])
        return case

    def grow_mesh(self, services: int) -> None:
        """Register ``services`` more services (one instance each) and wait for every ACK."""
        revision = 0
        for i in range(services):
            assert self.cp is not None
            reply = self.cp.call(
                "POST",
                "/v1/instances",
                {
                    "name": f"svc{i}-a",
                    "service": f"svc{i}",
                    "port": 8080,
                    "address": "127.0.0.1",
                    "target_port": 20000 + i,
                    "labels": {"version": "v1"},
                },
            )
            revision = reply["revision"]
        assert self.cp is not None
        self.cp.call("GET", f"/v1/wait?revision={revision}&timeout=60")


def measure(case: Case, seconds: float) -> dict[str, Any]:
    thr = load.max_throughput(case.url, case.host, seconds)
    cpu_before = sum(cpu_seconds(p) for p in case.pids)
    started = time.monotonic()
    lat = load.fixed_rate(case.url, case.host, seconds)
    elapsed = time.monotonic() - started
    cpu = sum(cpu_seconds(p) for p in case.pids) - cpu_before
    hops = 2 if case.pids else 0
    per_sidecar = cpu / elapsed / (lat.achieved_rps / 1000) / hops if hops else 0.0
    return {
        "rps": thr.rps,
        "p50_ms": lat.p50_ms,
        "p90_ms": lat.p90_ms,
        "p99_ms": lat.p99_ms,
        "errors": lat.errors,
        "achieved_rps": lat.achieved_rps,
        "cpu_per_1k_rps_per_sidecar": per_sidecar,
        "commands": [thr.command, lat.command],
    }


def run(quick: bool, workdir: Path) -> dict[str, Any]:
    """All cases, ``rounds`` times each, interleaved: A B C D A B C D …"""
    if not (load.have("wrk") and load.have("hey")):
        return {"skipped": "wrk and hey are needed: `make bench` installs them"}
    rounds, seconds = (1, 1.0) if quick else (5, 4.0)
    procs = Procs(workdir)
    try:
        setup = Setup(procs, workdir)
        cases = setup.cases()
        raw: dict[str, list[dict[str, Any]]] = {c.name: [] for c in cases}
        for r in range(rounds):
            for case in cases[r % len(cases) :] + cases[: r % len(cases)]:
                result = measure(case, seconds)
                raw[case.name].append(result)
                print(
                    f"  round {r + 1}/{rounds} {case.name:13} {result['rps']:9.0f} rps  "
                    f"p50 {result['p50_ms']:.2f} ms  p99 {result['p99_ms']:.2f} ms",
                    flush=True,
                )
        agent, envoy = setup.tsunagi_client
        envoy_pair_client = next(c for c in cases if c.name == "envoy-pair").pids[1]
        setup.grow_mesh(10 if quick else SERVICES_FOR_MEMORY)
        time.sleep(2)  # idle
        memory = {
            "services": 10 if quick else SERVICES_FOR_MEMORY,
            "tsunagi_envoy_private": private_bytes(envoy),
            "tsunagi_agent_private": private_bytes(agent),
            "tsunagi_envoy_rss": rss_bytes(envoy),
            "tsunagi_agent_rss": rss_bytes(agent),
            "minimal_envoy_private": private_bytes(envoy_pair_client),
            "minimal_envoy_rss": rss_bytes(envoy_pair_client),
        }
    finally:
        procs.stop_all()
    summary = {
        name: {
            k: load.median([x[k] for x in runs])
            for k in ("rps", "p50_ms", "p90_ms", "p99_ms", "cpu_per_1k_rps_per_sidecar")
        }
        for name, runs in raw.items()
    }
    for name, runs in raw.items():
        summary[name]["errors"] = sum(x["errors"] for x in runs)
        summary[name]["commands"] = runs[0]["commands"]
    return {"rounds": rounds, "seconds": seconds, "summary": summary, "raw": raw, "memory": memory}


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


def markdown(res: dict[str, Any]) -> str:
    if "skipped" in res:
        return f"## Data plane\n\nSkipped: {res['skipped']}\n"
    s = res["summary"]
    direct = s["direct"]
    pair = s["envoy-pair"]

    def added(name: str, key: str) -> float:
        return float(s[name][key] - direct[key])

    lines = [
        "## Data plane",
        "",
        f"Medians of {res['rounds']} interleaved rounds, {res['seconds']:.0f} s per measurement. "
        "Throughput: `wrk` (1 thread, 16 connections). Latency: `hey` at a fixed 1,000 req/s "
        "(10 workers x 100 req/s). Every proxy runs one worker thread. Upstream: Envoy "
        "answering 200 itself (`direct_response`).",
        "",
        "| case | max req/s | vs direct | p50 ms | p90 ms | p99 ms | added p50 ms | added p99 ms "
        "| CPU s per 1k req/s per proxy | errors |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, v in s.items():
        lines.append(
            f"| {name} | {v['rps']:.0f} | {v['rps'] / direct['rps']:.2f} | {v['p50_ms']:.2f} | "
            f"{v['p90_ms']:.2f} | {v['p99_ms']:.2f} | {added(name, 'p50_ms'):.2f} | "
            f"{added(name, 'p99_ms'):.2f} | {v['cpu_per_1k_rps_per_sidecar']:.3f} | {v['errors']} |"
        )
    t = s["tsunagi"]
    thr_ratio = t["rps"] / pair["rps"]
    p50_ratio = added("tsunagi", "p50_ms") / max(1e-9, added("envoy-pair", "p50_ms"))
    p99_ratio = added("tsunagi", "p99_ms") / max(1e-9, added("envoy-pair", "p99_ms"))
    m = res["memory"]
    total = m["tsunagi_envoy_private"] + m["tsunagi_agent_private"]

    def ok(good: bool) -> str:
        return "met" if good else "**missed**"

    lines += [
        "",
        "Goals (tsunagi against the minimal Envoy pair, same run):",
        "",
        f"- throughput ratio {thr_ratio:.2f} (goal ≥ 0.95): {ok(thr_ratio >= 0.95)}",
        f"- added p50 ratio {p50_ratio:.2f}, added p99 ratio {p99_ratio:.2f} (goal ≤ 1.1): "
        f"{ok(p50_ratio <= 1.1 and p99_ratio <= 1.1)}",
        "",
        f"Memory per sidecar, idle, in a {m['services']}-service mesh (private = unshared bytes, "
        "from `/proc/PID/smaps_rollup`):",
        "",
        "| process | private | RSS |",
        "|---|---|---|",
        f"| tsunagi Envoy | {_mb(m['tsunagi_envoy_private'])} | {_mb(m['tsunagi_envoy_rss'])} |",
        f"| tsunagi agent (Python) | {_mb(m['tsunagi_agent_private'])} | "
        f"{_mb(m['tsunagi_agent_rss'])} |",
        f"| **tsunagi sidecar total** | **{_mb(total)}** | |",
        f"| minimal static Envoy (baseline) | {_mb(m['minimal_envoy_private'])} | "
        f"{_mb(m['minimal_envoy_rss'])} |",
        "",
        f"Goal ≤ 30 MB private: {ok(total <= 30e6)}. Published anchors: Istio 1.24 sidecar "
        "~60 MB, Linkerd 2.11 proxy ~26 MB.",
        "",
        "Commands: " + "; ".join(f"`{c}`" for c in t["commands"]),
        "",
    ]
    return "\n".join(lines)
