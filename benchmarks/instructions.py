"""Instructions per request: the data plane's CPU cost, counted exactly.

Timed CPU on a small shared machine moves by 10-15 % from one round to the next (see the
data-plane suite's raw rounds), more than the margins its goals judge. The number of
instructions an Envoy executes for the same requests through the same config does not move:
each proxy runs under Valgrind's callgrind, its counters are zeroed after a warm-up, and the
instructions it executed for :data:`REQUESTS` requests (``hey``, 4 connections) are divided
by the requests. The Python agent is not counted here (the data-plane suite times it).

Cases, each two hops to the same upstream (an Envoy answering 200 itself, not counted):
``envoy-pair-mtls``, ``envoy-pair`` and ``envoy-pair-traced`` are the minimal static pairs
of the data-plane suite (mTLS between the hops, plain text, mTLS and a tracer),
``tsunagi`` and ``tsunagi-traced`` real ``tsunagi run`` sidecars (mTLS between them, as
shipped; the traced pair by a Telemetry resource at the same 1 %). The ingress path, front
proxy and server sidecar, mTLS between them: ``envoy-ingress`` static, ``tsunagi-ingress`` a
real ``tsunagi gateway`` and ``tsunagi run`` sidecar (the data-plane suite's cases of the
same names). Each case's server-side proxy must have accepted only TLS connections (plain
text only, for ``envoy-pair``) before anything is counted.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

from benchmarks import configs, dataplane
from benchmarks.controlplane import ControlPlane
from benchmarks.procs import Procs, children, envoy_binary, envoy_command, free_port, wait_port
from benchmarks.upstream import CONFIG_NAME as UPSTREAM_CONFIG

REQUESTS = 2000
QUICK_REQUESTS = 100
CASES = (
    "envoy-pair-mtls",
    "envoy-pair",
    "envoy-pair-traced",
    "envoy-ingress",
    "tsunagi",
    "tsunagi-traced",
    "tsunagi-ingress",
)
QUICK_CASES = ("envoy-pair-mtls", "tsunagi")
"""What a quick run counts (``make test`` proves the suite runs, within its time limit)."""
WARMUP = 200
CONNECTIONS = 4


def _callgrind(out_dir: Path) -> list[str]:
    # Not instrumented until :func:`count` switches it on: a sidecar must be ready within
    # the agent's 30 s, and with mTLS (its xDS connection, its clusters' TLS contexts) a
    # fully instrumented Envoy no longer always is. Counting starts from zero either way.
    return [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        f"--callgrind-out-file={out_dir}/cg.%p",
    ]


def _counted(out_dir: Path, pid: int) -> int:
    """Instructions in ``pid``'s newest dump (its counts since they were last zeroed)."""
    dumps = sorted(out_dir.glob(f"cg.{pid}.*"), key=lambda p: int(p.suffix[1:]))
    if not dumps:
        raise RuntimeError(f"callgrind wrote no dump for {pid} in {out_dir}")
    for line in dumps[-1].read_text(errors="replace").splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"no instruction total in {dumps[-1]}")


def _hey(url: str, host: str, n: int) -> int:
    """Send ``n`` requests; how many were answered 200."""
    out = subprocess.run(
        ["hey", "-n", str(n), "-c", str(CONNECTIONS), "-host", host, url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for line in out.splitlines():
        if line.strip().startswith("[200]"):
            return int(line.split()[1])
    return 0


def _control(args: list[str]) -> None:
    subprocess.run(["callgrind_control", *args], capture_output=True, check=False)


def count(case: dataplane.Case, out_dir: Path, requests: int) -> list[float]:
    """Instructions per request of each of ``case``'s proxies, in its pids' order (they run
    under callgrind)."""
    pids = [str(p) for p in case.pids]
    _control(["-i", "on", *pids])
    _hey(case.url, case.host, WARMUP)
    time.sleep(1)
    _control(["-z", *pids])
    answered = _hey(case.url, case.host, requests)
    if answered != requests:
        raise RuntimeError(f"{case.name}: {answered} of {requests} requests answered 200")
    time.sleep(1)  # the last responses' logging and accounting
    _control(["-d", *pids])
    deadline = time.monotonic() + 30
    while True:
        try:
            totals = [_counted(out_dir, p) for p in case.pids]
            break
        except RuntimeError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    return [n / requests for n in totals]


def _sidecar_under_callgrind(agent: int, out_dir: Path) -> int:
    """The Envoy a `tsunagi run` agent started through the callgrind wrapper."""
    found = [p for p in children(agent) if (out_dir / f"cg.{p}").exists()]
    if len(found) != 1:
        raise RuntimeError(f"expected one sidecar Envoy under callgrind for {agent}: {found}")
    return found[0]


def _static_pair(
    setup: dataplane.Setup, out_dir: Path, name: str, upstream: int, traced: bool, mtls: bool
) -> dataplane.Case:
    if mtls:
        server_doc, client_doc, client = setup.mtls_pair(upstream)
        docs = [server_doc, client_doc]
    else:
        server, client = free_port(), free_port()
        docs = [configs.forwarder(server, free_port(), upstream)]
        docs.append(configs.forwarder(client, free_port(), server))
    if traced:
        docs = [configs.traced(d, upstream, outbound=i == 1) for i, d in enumerate(docs)]
    case = _static_case(setup.procs, setup.workdir, out_dir, name, client, "upstream", docs)
    dataplane.check_mtls(name, case.pids[1], mtls)
    return case


def _static_ingress(setup: dataplane.Setup, out_dir: Path, upstream: int) -> dataplane.Case:
    """The data-plane suite's ``envoy-ingress``: static front proxy → static sidecar, mTLS
    between them."""
    server, front = free_port(), free_port()
    server_id = setup.identity(dataplane.INGRESS_SERVICE)
    gateway_id = setup.identity(dataplane.INGRESS_GATEWAY)
    docs = [configs.mtls_server(configs.forwarder(server, free_port(), upstream), server_id)]
    doc = configs.front_proxy(front, free_port(), dataplane.INGRESS_HOST, server)
    docs.append(configs.mtls_client(doc, gateway_id, server_id, dataplane.INGRESS_SERVICE))
    name = "envoy-ingress"
    host = dataplane.INGRESS_HOST
    case = _static_case(setup.procs, setup.workdir, out_dir, name, front, host, docs)
    dataplane.check_mtls(name, case.pids[1])
    return case


def _static_case(
    procs: Procs,
    workdir: Path,
    out_dir: Path,
    name: str,
    port: int,
    host: str,
    docs: list[dict[str, Any]],
) -> dataplane.Case:
    """Two static Envoys under callgrind (``docs``: the server's, then the client's), the
    client listening on ``port``; the case's pids are the client's, then the server's."""
    pids = []
    for hop, doc in zip(("server", "client"), docs, strict=True):
        path = configs.write_json(workdir / f"{name}-{hop}.json", doc)
        pids.append(procs.start(f"{name}-{hop}", _callgrind(out_dir) + envoy_command(path)).pid)
    case = dataplane.Case(name, port, host, pids[::-1])
    dataplane.wait_answers(case, timeout=120)
    return case


def _wait_synced(cp: ControlPlane, name: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proxies = cp.call("GET", "/v1/proxies")["proxies"]
        if any(p["id"].startswith(name) and p["synced"] for p in proxies):
            return
        time.sleep(0.5)
    raise TimeoutError(f"{name}'s sidecar did not sync in {timeout:.0f}s")


def _tsunagi_cases(
    procs: Procs,
    workdir: Path,
    out_dir: Path,
    traced: bool,
    names: Collection[str] = ("tsunagi", "tsunagi-ingress"),
) -> list[dataplane.Case]:
    wrapper = workdir / "envoy-under-callgrind"
    # The server's app, the benchmark upstream, runs Envoy through TSUNAGI_ENVOY too: not
    # under callgrind, it is not counted and must not be slow.
    real = envoy_binary()
    wrapper.write_text(
        f'#!/bin/sh\ncase "$*" in *{UPSTREAM_CONFIG}*) exec {real} "$@";; esac\n'
        f'exec {" ".join(_callgrind(out_dir))} {real} "$@"\n'
    )
    wrapper.chmod(0o755)
    setup = dataplane.Setup(procs, workdir)
    setup.sidecar_env = {"TSUNAGI_ENVOY": str(wrapper)}
    setup.cp = cp = ControlPlane(procs, workdir)
    shapes = []
    if "tsunagi" in names:
        shapes.append(("tsunagi", "upstream", "bench-server", "bench-client"))
    if traced:
        shape = ("tsunagi-traced", dataplane.TRACED_HOST, "bench-traced-server")
        shapes.append((*shape, dataplane.TRACED_CLIENT))
        cp.apply_and_wait(dataplane.TRACING)
    cases = []
    # One sidecar at a time: Envoy starts slowly under callgrind, and the agents give it 30 s.
    for name, service, server_name, client_name in shapes:
        server = setup.server(service, server_name)
        _wait_synced(cp, server_name)
        client, outbound = setup.client(client_name)
        case = dataplane.Case(name, outbound, service, [])
        dataplane.wait_answers(case, timeout=120)
        case.pids = [_sidecar_under_callgrind(a, out_dir) for a in (client, server)]
        dataplane.check_mtls(name, case.pids[1])
        cases.append(case)
    if traced:
        dataplane.check_tracing(cases[-1].pids[0])
    if "tsunagi-ingress" in names:
        cases.append(_tsunagi_ingress(setup, cp, out_dir))
    return cases


def _tsunagi_ingress(setup: dataplane.Setup, cp: ControlPlane, out_dir: Path) -> dataplane.Case:
    """The data-plane suite's ``tsunagi-ingress``, its gateway and sidecar under callgrind."""
    case, gateway, server = setup.ingress(120, lambda name: _wait_synced(cp, name))
    case.pids = [_sidecar_under_callgrind(a, out_dir) for a in (gateway, server)]
    dataplane.check_mtls(case.name, case.pids[1])
    return case


def run(quick: bool, workdir: Path, cases: Collection[str] | None = None) -> dict[str, Any]:
    """Every case's (or only ``cases``') instructions per request per proxy, and the ratios
    the goals judge. Quick runs count only :data:`QUICK_CASES` unless ``cases`` says more:
    each sidecar or gateway under callgrind takes ~20 s to start on this machine."""
    chosen = set(cases if cases is not None else QUICK_CASES if quick else CASES)

    def want(name: str) -> bool:
        return name in chosen

    if not (shutil.which("valgrind") and shutil.which("hey")):
        return {"skipped": "valgrind and hey are needed: `make bench` installs them"}
    requests = QUICK_REQUESTS if quick else REQUESTS
    out_dir = workdir / "callgrind"
    out_dir.mkdir()
    procs = Procs(workdir)
    try:
        upstream = free_port()
        up_doc = configs.upstream(upstream, free_port())
        procs.start("upstream", envoy_command(configs.write_json(workdir / "up.json", up_doc)))
        wait_port(upstream)
        started = []
        static = dataplane.Setup(procs, workdir)  # for its certificates (MeshCA)
        for name, traced_pair, mtls in (
            ("envoy-pair-mtls", False, True),
            ("envoy-pair", False, False),
            ("envoy-pair-traced", True, True),
        ):
            if want(name):
                started.append(_static_pair(static, out_dir, name, upstream, traced_pair, mtls))
        if want("envoy-ingress"):
            started.append(_static_ingress(static, out_dir, upstream))
        names = [n for n in ("tsunagi", "tsunagi-ingress") if want(n)]
        traced = want("tsunagi-traced")
        if names or traced:
            started += _tsunagi_cases(procs, workdir, out_dir, traced, names)
        per_proxy = {c.name: count(c, out_dir, requests) for c in started}
    finally:
        procs.stop_all()
    per_request = {name: sum(n) / len(n) for name, n in per_proxy.items()}
    return {
        "requests": requests,
        "per_request": per_request,
        "per_proxy": per_proxy,
        "goals": goals(per_request),
        "valgrind": _version(),
    }


def _version() -> str:
    out = subprocess.run(["valgrind", "--version"], capture_output=True, text=True, check=False)
    return out.stdout.strip()


def goals(per_request: dict[str, float]) -> dict[str, float]:
    """Instruction ratios: tsunagi against the minimal pair with the same mTLS
    (``envoy-pair-mtls``; the plaintext ``envoy-pair`` in results from before tsunagi spoke
    mTLS), against the plaintext pair (``mtls_total_cpu_per_request_ratio``), the mTLS pair
    against the plaintext one (``mtls_pair_cpu_per_request_ratio``), the traced cases, and
    tsunagi-ingress against envoy-ingress (``ingress_cpu_per_request_ratio``), of the cases
    the run has."""
    out = {}
    if "tsunagi-ingress" in per_request and "envoy-ingress" in per_request:
        ingress = per_request["tsunagi-ingress"] / per_request["envoy-ingress"]
        out["ingress_cpu_per_request_ratio"] = ingress
    plain = per_request.get("envoy-pair")
    if plain and "envoy-pair-mtls" in per_request:
        out["mtls_pair_cpu_per_request_ratio"] = per_request["envoy-pair-mtls"] / plain
        if "tsunagi" in per_request:
            out["mtls_total_cpu_per_request_ratio"] = per_request["tsunagi"] / plain
    base = "envoy-pair-mtls" if "envoy-pair-mtls" in per_request else "envoy-pair"
    if base not in per_request or "tsunagi" not in per_request:
        return out
    pair = per_request[base]
    out["cpu_per_request_ratio"] = per_request["tsunagi"] / pair
    out["baseline_mtls"] = float(base == "envoy-pair-mtls")
    if "tsunagi-traced" in per_request:
        out["traced_cpu_per_request_ratio"] = per_request["tsunagi-traced"] / pair
    if "envoy-pair-traced" in per_request:
        traced_pair = per_request["envoy-pair-traced"]
        out["traced_pair_cpu_per_request_ratio"] = traced_pair / pair
        if "tsunagi-traced" in per_request:
            out["traced_vs_traced_pair_ratio"] = per_request["tsunagi-traced"] / traced_pair
    return out


def agent_share(dataplane_result: dict[str, Any] | None) -> float | None:
    """The agent's CPU per request as a fraction of the minimal pair's proxy CPU per request,
    from the data-plane suite's timed medians (the agent is Python: callgrind would count
    its interpreter start, not its work); ``None`` without those results."""
    summary = (dataplane_result or {}).get("summary", {})
    base = "envoy-pair-mtls" if "envoy-pair-mtls" in summary else "envoy-pair"
    try:
        agent = float(summary["tsunagi"]["agent_cpu_per_1k_rps_per_sidecar"])
        return agent / float(summary[base]["cpu_per_1k_rps_per_sidecar"])
    except (KeyError, TypeError, ZeroDivisionError):
        return None


def markdown(res: dict[str, Any], dataplane_result: dict[str, Any] | None = None) -> str:
    if "skipped" in res:
        return f"## Instructions per request\n\nSkipped: {res['skipped']}\n"
    per, g = res["per_request"], res["goals"]
    base = "envoy-pair-mtls" if "envoy-pair-mtls" in per else "envoy-pair"
    pair = per.get(base)

    def vs_pair(n: float) -> str:
        return f"{n / pair:.3f}" if pair else "-"

    # Each hop's count, where the results have them (older ones have only the mean).
    hops = {
        name: " | ".join(f"{n / 1000:.1f}k" for n in each)
        for name, each in res.get("per_proxy", {}).items()
        if len(each) == 2
    }

    lines = [
        "## Instructions per request",
        "",
        f"Each case's two proxies under callgrind ({res['valgrind']}; instrumented from the "
        "warm-up on, `--instr-atstart=no`, so sidecars start within the agent's 30 s); "
        "counters zeroed after "
        f"{WARMUP} warm-up requests, then {res['requests']:,} requests (`hey`, "
        f"{CONNECTIONS} connections); instructions per request per proxy. Exact and repeatable "
        "where timed CPU is not; Envoy only (the agent's CPU is in the data-plane table). "
        "mTLS between the two proxies in every case but envoy-pair (plain text: the "
        "reference); connections are kept alive, so the count is mostly the per-request cost "
        "of encryption, not handshakes.",
        "",
        f"| case | instructions per request per proxy | vs {base} | first hop (client "
        "sidecar or front proxy) | second hop (server sidecar) |",
        "|---|---|---|---|---|",
        *(
            f"| {name} | {n / 1000:.1f}k | {vs_pair(n)} | {hops.get(name, '- | -')} |"
            for name, n in per.items()
        ),
        "",
    ]
    share = agent_share(dataplane_result)
    envoy = g.get("cpu_per_request_ratio")
    if envoy is None:
        pass  # a run without tsunagi or the pair (--cases)
    elif share is None:
        lines.append(
            f"- tsunagi's Envoy against the minimal pair ({base}): {envoy:.3f} (goal ≤ "
            f"{dataplane.CPU_GOAL} with the agent's share, which the data-plane suite times)"
        )
    else:
        total = envoy + share
        verdict = "met" if total <= dataplane.CPU_GOAL else "**NOT met**"
        lines.append(
            f"- CPU per request, tsunagi against the minimal pair ({base}): Envoy {envoy:.3f} "
            f"+ the agent's timed share {share:.3f} (data-plane suite) = {total:.3f} (goal ≤ "
            f"{dataplane.CPU_GOAL}): {verdict}"
        )
    if "mtls_total_cpu_per_request_ratio" in g:
        lines.append(
            "- what mTLS costs in all: tsunagi against the plaintext envoy-pair "
            f"{g['mtls_total_cpu_per_request_ratio']:.3f}, the mTLS pair against it "
            f"{g['mtls_pair_cpu_per_request_ratio']:.3f}"
        )
    elif "mtls_pair_cpu_per_request_ratio" in g:
        lines.append(
            "- mTLS alone in the minimal pair (envoy-pair-mtls against envoy-pair): "
            f"{g['mtls_pair_cpu_per_request_ratio']:.3f}"
        )
    if "traced_pair_cpu_per_request_ratio" in g:
        lines.append(
            f"- Envoy's tracer at {configs.TRACE_SAMPLING:g} % in the minimal pair costs "
            f"{g['traced_pair_cpu_per_request_ratio']:.3f} times the pair: more than the "
            f"throughput goal's 1 / {dataplane.THROUGHPUT_GOAL} leaves, before any mesh feature"
        )
    if "traced_vs_traced_pair_ratio" in g:
        lines.append(
            f"- tsunagi traced against the same tracer in the minimal pair: "
            f"{g['traced_vs_traced_pair_ratio']:.3f}"
        )
    if "ingress_cpu_per_request_ratio" in g:
        lines.append(
            "- ingress, `tsunagi gateway` + sidecar against the static front proxy + sidecar "
            f"(tsunagi-ingress against envoy-ingress): {g['ingress_cpu_per_request_ratio']:.3f} "
            f"(the throughput goal ≥ {dataplane.THROUGHPUT_GOAL} leaves about "
            f"{1 / dataplane.THROUGHPUT_GOAL:.3f})"
        )
    return "\n".join([*lines, ""])
