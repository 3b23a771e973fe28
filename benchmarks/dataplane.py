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
    cmdline,
    cpu_used,
    envoy_command,
    free_port,
    private_bytes,
    rss_bytes,
    thread_cpu_seconds,
    tsunagi,
    wait_port,
)
from benchmarks.upstream import CONFIG_NAME as UPSTREAM_CONFIG

SERVICES_FOR_MEMORY = 100
HOPS = 2
"""Proxies on the path in every case but ``direct``: the client's and the server's."""
CPU_GOAL = 1.1
"""Tsunagi's CPU per request (Envoy + agent) may be at most this times the minimal pair's."""


class Case:
    """One way to reach the upstream, and the processes it costs: ``pids`` are the proxies
    (one per hop), ``agent_pids`` the per-sidecar helpers that are part of the sidecar's cost
    (tsunagi's Python agent; the hand-written pairs have none)."""

    def __init__(
        self, name: str, port: int, host: str, pids: list[int], agent_pids: list[int] | None = None
    ) -> None:
        self.name, self.port, self.host, self.pids = name, port, host, pids
        self.agent_pids = agent_pids or []

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


def _sidecar_envoy(agent: int) -> int:
    """The Envoy a `tsunagi run` agent started. The agent's app is a child called ``envoy``
    too here (``benchmarks.upstream`` execs one): its CPU is the upstream's, which no other
    case counts, so it must not be taken for the sidecar's."""
    found = [p for p in children(agent, "envoy") if UPSTREAM_CONFIG not in " ".join(cmdline(p))]
    if len(found) != 1:
        raise RuntimeError(f"expected one sidecar Envoy under agent {agent}, found {found}")
    return found[0]


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
        client_envoy, server_envoy = _sidecar_envoy(client.pid), _sidecar_envoy(server.pid)
        case.pids = [client_envoy, server_envoy]
        case.agent_pids = [client.pid, server.pid]
        self.tsunagi_client = (client.pid, client_envoy)
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
    """Throughput (wrk), then latency and CPU at a fixed rate (hey).

    CPU is process time (every thread, user + system) over the fixed-rate run divided by the
    requests it answered: CPU seconds per 1,000 requests, which is also CPU seconds per
    second at 1,000 req/s. Per proxy: divided by the hops. ``cpu_*`` counts the proxy and
    its agent (the sidecar's whole cost), ``proxy_cpu_*`` the proxy process alone.
    """
    thr = load.max_throughput(case.url, case.host, seconds)
    every = [*case.pids, *case.agent_pids]
    before = {p: thread_cpu_seconds(p) for p in every}
    lat = load.fixed_rate(case.url, case.host, seconds)
    used = {p: cpu_used(before[p], thread_cpu_seconds(p)) for p in every}

    def per_1k(pids: list[int]) -> float:
        if not case.pids:
            return 0.0
        return sum(used[p] for p in pids) / max(1, lat.requests) * 1000 / HOPS

    return {
        "rps": thr.rps,
        "p50_ms": lat.p50_ms,
        "p90_ms": lat.p90_ms,
        "p99_ms": lat.p99_ms,
        "errors": lat.errors,
        "achieved_rps": lat.achieved_rps,
        "requests": lat.requests,
        "cpu_per_1k_rps_per_sidecar": per_1k(every),
        "proxy_cpu_per_1k_rps_per_sidecar": per_1k(case.pids),
        "agent_cpu_per_1k_rps_per_sidecar": per_1k(case.agent_pids),
        "commands": [thr.command, lat.command],
    }


def round_order(cases: list[Case], r: int) -> list[Case]:
    """Round ``r``'s order: the cases rotated by one each round, except that tsunagi is
    always measured right beside the envoy pair (after it in even rounds, before it in odd
    ones), so the ratios the goals judge compare measurements taken moments apart on a
    machine whose load drifts."""
    units = [
        [c, *(t for t in cases if t.name == "tsunagi")] if c.name == "envoy-pair" else [c]
        for c in cases
        if c.name != "tsunagi"
    ]
    k = r % len(units)
    return [c for u in units[k:] + units[:k] for c in (u if r % 2 == 0 else u[::-1])]


def run(quick: bool, workdir: Path) -> dict[str, Any]:
    """All cases, ``rounds`` times each, interleaved (see :func:`round_order`)."""
    if not (load.have("wrk") and load.have("hey")):
        return {"skipped": "wrk and hey are needed: `make bench` installs them"}
    rounds, seconds = (1, 1.0) if quick else (5, 4.0)
    procs = Procs(workdir)
    try:
        setup = Setup(procs, workdir)
        cases = setup.cases()
        raw: dict[str, list[dict[str, Any]]] = {c.name: [] for c in cases}
        for r in range(rounds):
            for case in round_order(cases, r):
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
            for k in (
                "rps",
                "p50_ms",
                "p90_ms",
                "p99_ms",
                "cpu_per_1k_rps_per_sidecar",
                "proxy_cpu_per_1k_rps_per_sidecar",
                "agent_cpu_per_1k_rps_per_sidecar",
            )
        }
        for name, runs in raw.items()
    }
    for name, runs in raw.items():
        summary[name]["errors"] = sum(x["errors"] for x in runs)
        summary[name]["commands"] = runs[0]["commands"]
    return {
        "rounds": rounds,
        "seconds": seconds,
        "summary": summary,
        "goals": goals(summary, raw),
        "raw": raw,
        "memory": memory,
    }


def goals(
    s: dict[str, Any], raw: dict[str, list[dict[str, Any]]] | None = None
) -> dict[str, float]:
    """Tsunagi against the minimal Envoy pair, from one run's medians. The CPU ratios are the
    median of each round's ratio (tsunagi and the pair are measured back to back) when the
    rounds are given, else the ratio of the medians."""
    direct, pair, t = s["direct"], s["envoy-pair"], s["tsunagi"]

    def added_ratio(key: str) -> float:
        return float((t[key] - direct[key]) / max(1e-9, pair[key] - direct[key]))

    def cpu_ratio(key: str) -> float:
        total = "cpu_per_1k_rps_per_sidecar"  # older results have only the total
        if raw is not None and len(raw["tsunagi"]) == len(raw["envoy-pair"]):
            return float(
                load.median(
                    [
                        x.get(key, x[total]) / max(1e-9, y.get(key, y[total]))
                        for x, y in zip(raw["tsunagi"], raw["envoy-pair"], strict=True)
                    ]
                )
            )
        return float(t.get(key, t[total]) / max(1e-9, pair.get(key, pair[total])))

    return {
        "throughput_ratio": float(t["rps"] / pair["rps"]),
        "added_p50_ratio": added_ratio("p50_ms"),
        "added_p99_ratio": added_ratio("p99_ms"),
        "cpu_per_request_ratio": cpu_ratio("cpu_per_1k_rps_per_sidecar"),
        "cpu_per_request_ratio_envoy_only": cpu_ratio("proxy_cpu_per_1k_rps_per_sidecar"),
        "cpu_per_request_goal": CPU_GOAL,
    }


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


def markdown(res: dict[str, Any]) -> str:
    if "skipped" in res:
        return f"## Data plane\n\nSkipped: {res['skipped']}\n"
    s = res["summary"]
    direct = s["direct"]

    def added(name: str, key: str) -> float:
        return float(s[name][key] - direct[key])

    lines = [
        "## Data plane",
        "",
        f"Medians of {res['rounds']} interleaved rounds, {res['seconds']:.0f} s per measurement. "
        "Throughput: `wrk` (1 thread, 16 connections). Latency: `hey` at a fixed 1,000 req/s "
        "(10 workers x 100 req/s). Every proxy runs one worker thread. Upstream: Envoy "
        "answering 200 itself (`direct_response`), not counted in any case. CPU: process time "
        "(all threads, user + system) during the fixed-rate run, per 1,000 requests answered "
        "(= CPU s per second at 1k req/s), per proxy; tsunagi's includes its Python agent "
        "(split out in the last two columns).",
        "",
        "| case | max req/s | vs direct | p50 ms | p90 ms | p99 ms | added p50 ms | added p99 ms "
        "| CPU s per 1k req/s per proxy | of which proxy | of which agent | errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, v in s.items():
        total = v["cpu_per_1k_rps_per_sidecar"]
        proxy = v.get("proxy_cpu_per_1k_rps_per_sidecar", total)
        agent = v.get("agent_cpu_per_1k_rps_per_sidecar", 0.0)
        lines.append(
            f"| {name} | {v['rps']:.0f} | {v['rps'] / direct['rps']:.2f} | {v['p50_ms']:.2f} | "
            f"{v['p90_ms']:.2f} | {v['p99_ms']:.2f} | {added(name, 'p50_ms'):.2f} | "
            f"{added(name, 'p99_ms'):.2f} | {total:.3f} | {proxy:.3f} | {agent:.3f} | "
            f"{v['errors']} |"
        )
    t = s["tsunagi"]
    g = goals(s, res.get("raw"))
    thr_ratio, p50_ratio = g["throughput_ratio"], g["added_p50_ratio"]
    p99_ratio = g["added_p99_ratio"]
    cpu_ratio, cpu_envoy = g["cpu_per_request_ratio"], g["cpu_per_request_ratio_envoy_only"]
    m = res["memory"]
    total = m["tsunagi_envoy_private"] + m["tsunagi_agent_private"]

    def ok(good: bool) -> str:
        return "met" if good else "**NOT met**"

    lines += [
        "",
        "Goals (tsunagi against the minimal Envoy pair, same run):",
        "",
        f"- throughput ratio {thr_ratio:.2f} (goal ≥ 0.95): {ok(thr_ratio >= 0.95)}",
        f"- added p50 ratio {p50_ratio:.2f}, added p99 ratio {p99_ratio:.2f} (goal ≤ 1.1): "
        f"{ok(p50_ratio <= 1.1 and p99_ratio <= 1.1)}",
        f"- CPU per request ratio {cpu_ratio:.2f} (goal ≤ {CPU_GOAL}): {ok(cpu_ratio <= CPU_GOAL)}"
        f" — Envoy + agent per sidecar against one static Envoy; Envoy alone {cpu_envoy:.2f}",
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
