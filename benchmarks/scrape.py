"""What the control plane's own scrape of every sidecar costs (issue 8: "the scale benchmark
reports the control plane's cost of scraping 1,000 sidecars").

A separate process serves ``sidecars`` metrics pages, one path per sidecar, each as a
sidecar of a mesh calling a few services serves its lean ``/stats/istio`` page (what the
control plane scrapes): Istio's request count and duration histogram (Envoy's default
buckets) for both reporters, with Istio's full label set (canonical and cluster labels
included), as the agent renders them. This process runs the control plane's own
:class:`~tsunagi.telemetry.scrape.Scraper` against them for several rounds, each page's
counters growing between rounds, and reports per round: wall time, this process's CPU time
(the fetches and the parsing; the serving process is not counted), samples kept; and the
series store's memory (the growth of this process's RSS: ``tracemalloc`` would triple the
CPU figures) once steady.

Run: ``python -m benchmarks.scrape [--sidecars N] [--rounds R]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any

from benchmarks import procs

BUCKETS: tuple[float, ...] = (0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)
BUCKETS += (10000, 30000, 60000, 300000, 600000, 1800000, 3600000)
"""Envoy's default histogram bounds (ms), as the sidecars' Istio histograms use them."""

CALLEES = 3
"""Services each simulated sidecar calls (and the callers each one serves)."""


def _labels(reporter: str, me: int, peer: int, code: int) -> str:
    src, dst = (me, peer) if reporter == "source" else (peer, me)
    return (
        f'reporter="{reporter}",source_workload="svc-{src}-v1",'
        f'source_canonical_service="svc-{src}",source_canonical_revision="v1",'
        f'source_workload_namespace="ns",source_principal="spiffe://cluster.local/ns/ns/sa/'
        f'svc-{src}",source_app="svc-{src}",source_version="v1",source_cluster="Kubernetes",'
        f'destination_workload="svc-{dst}-v1",destination_workload_namespace="ns",'
        f'destination_principal="spiffe://cluster.local/ns/ns/sa/svc-{dst}",'
        f'destination_app="svc-{dst}",destination_version="v1",'
        f'destination_service="svc-{dst}.ns.svc.cluster.local",'
        f'destination_canonical_service="svc-{dst}",destination_canonical_revision="v1",'
        f'destination_service_name="svc-{dst}",destination_service_namespace="ns",'
        f'destination_cluster="Kubernetes",request_protocol="http",response_code="{code}",'
        f'grpc_response_status="",response_flags="-",connection_security_policy="mutual_tls"'
    )


def page(sidecar: int, scale: int) -> str:
    """One sidecar's ``/stats/istio`` page after ``scale`` units of traffic."""
    rows = [
        (_labels(reporter, sidecar, sidecar + k, code), share * scale)
        for reporter in ("source", "destination")
        for k in range(1, CALLEES + 1)
        for code, share in ((200, 95), (503, 5))
    ]
    out = ["# TYPE istio_requests_total counter"]
    out += [f"istio_requests_total{{{labels}}} {n}" for labels, n in rows]
    hist = "istio_request_duration_milliseconds"
    out.append(f"# TYPE {hist} histogram")
    for labels, n in rows:
        for i, le in enumerate(BUCKETS):
            bound = int(le) if le == int(le) else le  # as the agent writes it: 1, 0.5, 300000
            out.append(f'{hist}_bucket{{{labels},le="{bound}"}} {n * (i + 1) // len(BUCKETS)}')
        out.append(f'{hist}_bucket{{{labels},le="+Inf"}} {n}')
        out.append(f"{hist}_sum{{{labels}}} {n * 7}")
        out.append(f"{hist}_count{{{labels}}} {n}")
    return "\n".join(out) + "\n"


SERVER = textwrap.dedent(
    """
    import sys
    from aiohttp import web
    from benchmarks.scrape import page
    scale = {"n": 1}
    async def metrics(request):
        return web.Response(text=page(int(request.match_info["i"]), scale["n"]))
    async def bump(request):
        scale["n"] += 1
        return web.Response(text="ok")
    app = web.Application()
    app.router.add_get("/{i}/stats/istio", metrics)
    app.router.add_post("/bump", bump)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
    """
)


async def _wait_serving(url: str, timeout: float = 20) -> None:
    import aiohttp

    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            try:
                async with s.get(url) as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"fake sidecars did not start at {url}")


class StallProbe:
    """The longest the event loop went without running a 1 ms timer: what an xDS push
    waiting on the same loop would have waited, at worst."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(0.001)
            self.worst = max(self.worst, time.perf_counter() - before - 0.001)

    def __enter__(self) -> StallProbe:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


def _rss() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


async def measure(sidecars: int, rounds: int) -> dict[str, Any]:
    """Scrape ``sidecars`` pages ``rounds`` times; the first round warms the caches."""
    import aiohttp

    from tsunagi.telemetry.scrape import Scraper, Target
    from tsunagi.telemetry.series import SeriesStore

    port = procs.free_port() if hasattr(procs, "free_port") else 0
    if not port:
        from tsunagi.agent.ports import free_ports

        port = free_ports(1)[0]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(port)], env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        await _wait_serving(f"{base}/0/stats/istio")
        targets = [Target(f"ns/sidecar-{i}", f"{base}/{i}/stats/istio") for i in range(sidecars)]
        rss_before = _rss()
        store = SeriesStore()
        scraper = Scraper(store, concurrency=64, timeout=10.0)
        # As in `tsunagi up` (ScrapeThread): the scraper has its own thread and loop, and the
        # probe watches this loop, which stands for the one serving xDS.
        scrape_loop = asyncio.new_event_loop()
        threading.Thread(target=scrape_loop.run_forever, daemon=True).start()

        async def on_scrape_loop(coro: Any) -> Any:
            return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, scrape_loop))

        per_round = []
        async with aiohttp.ClientSession() as bumper:
            for _ in range(rounds):
                cpu, wall = time.process_time(), time.perf_counter()
                with StallProbe() as probe:
                    result = await on_scrape_loop(scraper.scrape_once(targets))
                per_round.append(
                    {
                        "wall_ms": round((time.perf_counter() - wall) * 1000, 1),
                        "cpu_ms": round((time.process_time() - cpu) * 1000, 1),
                        "worst_loop_stall_ms": round(probe.worst * 1000, 1),
                        "scraped": result.scraped,
                        "failed": result.failed,
                        "samples": result.samples,
                    }
                )
                async with bumper.post(f"{base}/bump") as resp:
                    await resp.read()
        current = _rss() - rss_before
        queries = await _queries(store)
        await on_scrape_loop(scraper.close())
        scrape_loop.call_soon_threadsafe(scrape_loop.stop)
        store.close()
    finally:
        server.terminate()
        server.wait(10)
    steady = per_round[1:] or per_round
    page_bytes = len(page(0, 1000).encode())
    return {
        "sidecars": sidecars,
        "rounds": per_round,
        "page_kb": round(page_bytes / 1024, 1),
        "series_kept": store.series_count,
        "cpu_ms_per_round": round(sum(r["cpu_ms"] for r in steady) / len(steady), 1),
        "wall_ms_per_round": round(sum(r["wall_ms"] for r in steady) / len(steady), 1),
        "rss_growth_mb": round(current / 1e6, 1),
        "queries": queries,
    }


async def _queries(store: Any) -> dict[str, float]:
    """A dashboard refresh (the graph and one service's panel) over the full store: its
    time, the worst stall of this loop meanwhile, and the time of the same refresh again
    before the next scrape (answered from the views' cache)."""
    from tsunagi.telemetry.graph import graph_view
    from tsunagi.telemetry.panels import panel
    from tsunagi.telemetry.views import StoreViews

    views = StoreViews(store)

    async def refresh() -> None:
        await graph_view(views, 60)
        await panel(views, "service", "ns", "svc-1", 600, 10)

    with StallProbe() as probe:
        started = time.perf_counter()
        await refresh()
        first = time.perf_counter() - started
    started = time.perf_counter()
    await refresh()
    again = time.perf_counter() - started
    return {
        "refresh_ms": round(first * 1000, 1),
        "refresh_worst_loop_stall_ms": round(probe.worst * 1000, 1),
        "cached_refresh_ms": round(again * 1000, 2),
    }


def markdown(res: dict[str, Any], interval: float = 5.0) -> str:
    """A short paragraph for docs/benchmarks.md."""
    share = res["cpu_ms_per_round"] / (interval * 1000) * 100
    return (
        f"Scraping {res['sidecars']} sidecars (the control plane's own scraper, in-process; "
        f"pages of {res['page_kb']} KB, {CALLEES} callees and callers each): "
        f"{res['cpu_ms_per_round']} ms CPU and {res['wall_ms_per_round']} ms wall per round, "
        f"{share:.0f} % of one core at the default 5 s interval; {res['series_kept']} series "
        f"kept, {res['rss_growth_mb']} MB more RSS (scraper and store) once steady.\n"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks.scrape", description=__doc__.split("\n\n")[0])
    p.add_argument("--sidecars", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=4)
    args = p.parse_args(argv)
    res = asyncio.run(measure(args.sidecars, args.rounds))
    print(json.dumps(res, indent=1))
    print(markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
