"""The scraper (against real local HTTP servers serving Istio-style text), the service graph
built from what it scraped, and the panels."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from tsunagi.telemetry.graph import DEGRADED, FAILURE, HEALTHY, build_graph, health
from tsunagi.telemetry.panels import panel
from tsunagi.telemetry.scrape import Scraper, SeriesCache, Target, parse
from tsunagi.telemetry.series import SeriesStore
from tsunagi.telemetry.views import StoreViews

BUCKETS = ["0.5", "1", "5", "10", "25", "50", "100", "250", "500", "1000", "+Inf"]


def _peer(side: str, app: str, version: str, ns: str = "default") -> dict[str, str]:
    workload = f"{app}-{version}" if app != "unknown" else "unknown"
    return {
        f"{side}_workload": workload,
        f"{side}_workload_namespace": ns if app != "unknown" else "unknown",
        f"{side}_app": app,
        f"{side}_version": version,
        f"{side}_principal": f"spiffe://cluster.local/ns/{ns}/sa/{app}",
        f"{side}_canonical_service": app,
        f"{side}_canonical_revision": version,
        f"{side}_cluster": "Kubernetes",
    }


def istio_text(calls: list[dict[str, Any]]) -> str:
    """Prometheus text as an Istio sidecar serves it: each call is ``reporter``, ``src`` and
    ``dst`` (app, version), ``code``, ``flags``, ``count`` and a latency ``ms``."""
    lines = [
        "# HELP istio_requests_total Total requests.",
        "# TYPE istio_requests_total counter",
    ]
    hist = ["# TYPE istio_request_duration_milliseconds histogram"]
    for c in calls:
        svc = c["dst"][0]
        labels = {
            "reporter": c["reporter"],
            **_peer("source", *c["src"]),
            **_peer("destination", *c["dst"]),
            "destination_service": f"{svc}.default.svc.cluster.local",
            "destination_service_name": svc,
            "destination_service_namespace": "default",
            "request_protocol": "http",
            "connection_security_policy": "unknown",
            "grpc_response_status": "",
        }
        text = ",".join(f'{k}="{v}"' for k, v in labels.items())
        lines.append(
            f'istio_requests_total{{{text},response_code="{c["code"]}",'
            f'response_flags="{c.get("flags", "-")}"}} {c["count"]}'
        )
        for le in BUCKETS:
            n = c["count"] if le == "+Inf" or float(le) >= c["ms"] else 0
            hist.append(f'istio_request_duration_milliseconds_bucket{{{text},le="{le}"}} {n}')
        hist.append(f"istio_request_duration_milliseconds_sum{{{text}}} {c['count'] * c['ms']}")
        hist.append(f"istio_request_duration_milliseconds_count{{{text}}} {c['count']}")
    other = ['envoy_cluster_upstream_rq_total{cluster_name="xds-grpc"} 12']
    return "\n".join([*other, *lines, *hist]) + "\n"


def test_parse_keeps_only_the_families_and_labels_it_needs() -> None:
    text = istio_text(
        [{"reporter": "source", "src": ("productpage", "v1"), "dst": ("reviews", "v2"),
          "code": 200, "count": 7, "ms": 3}]
    )  # fmt: skip
    samples = parse(text, SeriesCache())
    names = {m for m, _, _ in samples}
    assert names == {"istio_requests_total", "istio_request_duration_milliseconds_bucket"}
    requests = [s for s in samples if s[0] == "istio_requests_total"]
    assert len(requests) == 1 and requests[0][2] == 7.0
    assert "productpage-v1" in requests[0][1] and "200" in requests[0][1]
    assert not any("spiffe" in v for _, labels, _ in samples for v in labels)


class Sidecars:
    """Real local HTTP servers, one per fake sidecar, whose text the test changes."""

    def __init__(self) -> None:
        self.texts: dict[str, str] = {}
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> None:
        async def metrics(request: web.Request) -> web.Response:
            name = request.match_info["name"]
            if name not in self.texts:
                return web.Response(status=503)
            return web.Response(text=self.texts[name])

        app = web.Application()
        app.router.add_get("/{name}/stats/prometheus", metrics)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]

    def target(self, name: str) -> Target:
        return Target(name, f"http://127.0.0.1:{self.port}/{name}/stats/prometheus")


def bookinfo(n: int) -> dict[str, str]:
    """What productpage's and reviews' sidecars report after ``n`` rounds of traffic."""
    pp = ("productpage", "v1")
    return {
        "productpage": istio_text(
            [
                {"reporter": "source", "src": pp, "dst": ("reviews", "v1"), "code": 200,
                 "count": 10 * n, "ms": 4},
                {"reporter": "source", "src": pp, "dst": ("reviews", "v2"), "code": 200,
                 "count": 9 * n, "ms": 40},
                {"reporter": "source", "src": pp, "dst": ("reviews", "v2"), "code": 503,
                 "count": n, "ms": 40},
                {"reporter": "destination", "src": ("unknown", "unknown"), "dst": pp,
                 "code": 200, "count": 20 * n, "ms": 60},
            ]
        ),
        "reviews-v2": istio_text(
            [
                {"reporter": "destination", "src": pp, "dst": ("reviews", "v2"), "code": 200,
                 "count": 9 * n, "ms": 30},
                {"reporter": "destination", "src": pp, "dst": ("reviews", "v2"), "code": 503,
                 "count": n, "ms": 30},
            ]
        ),
    }  # fmt: skip


def test_scrape_and_graph_like_kiali() -> None:
    async def main() -> tuple[dict[str, Any], dict[str, Any], Any]:
        sidecars = Sidecars()
        await sidecars.start()
        store = SeriesStore()
        clock = iter([1000.0, 1005.0, 1010.0])
        scraper = Scraper(store, clock=lambda: next(clock))
        targets = [sidecars.target("productpage"), sidecars.target("reviews-v2"),
                   sidecars.target("gone")]  # fmt: skip
        try:
            for n in (1, 2, 4):
                sidecars.texts.update(bookinfo(n))
                result = await scraper.scrape_once(targets)
            graph = build_graph(
                await StoreViews(store).requests(60), await StoreViews(store).buckets(60), 60
            )
            p = await panel(StoreViews(store), "service", "default", "reviews", 10, 5)
        finally:
            await scraper.close()
            assert sidecars.runner is not None
            await sidecars.runner.cleanup()
        return graph, p, result

    graph, p, result = asyncio.run(main())
    assert (result.scraped, result.failed) == (2, 1)
    nodes = {n["id"]: n for n in graph["nodes"]}
    assert set(nodes) == {
        "unknown",
        "app:default:productpage:v1",
        "service:default:productpage",
        "service:default:reviews",
        "app:default:reviews:v1",
        "app:default:reviews:v2",
    }
    edges = {(e["source"], e["target"]): e for e in graph["edges"]}
    assert set(edges) == {
        ("unknown", "service:default:productpage"),
        ("service:default:productpage", "app:default:productpage:v1"),
        ("app:default:productpage:v1", "service:default:reviews"),
        ("service:default:reviews", "app:default:reviews:v1"),
        ("service:default:reviews", "app:default:reviews:v2"),
    }
    # Rounds n=1 -> 4 (baseline, then two increases): 30 more requests of productpage ->
    # reviews (source side only; the destination's report of the same calls is not added).
    to_reviews = edges[("app:default:productpage:v1", "service:default:reviews")]
    assert to_reviews["requests"] == 60.0
    assert to_reviews["rate"] == 1.0
    assert to_reviews["error_pct"] == 5.0  # 3 of 60 were 503
    assert to_reviews["health"] == DEGRADED
    v2 = edges[("service:default:reviews", "app:default:reviews:v2")]
    assert (v2["requests"], v2["error_pct"], v2["health"]) == (30.0, 10.0, FAILURE)
    # 30 of 60 calls took 40 ms (bucket (25, 50]), 30 took 4 ms (bucket (1, 5]): p99 is
    # rank 59.4 of 60 -> 25 + 25 * (59.4 - 30) / 30
    assert to_reviews["p99_ms"] == 49.5
    v1 = edges[("service:default:reviews", "app:default:reviews:v1")]
    assert (v1["error_pct"], v1["health"], v1["p99_ms"]) == (0.0, HEALTHY, 4.96)
    # A node's health is that of the requests entering it; callers outside the mesh have none.
    assert nodes["service:default:reviews"]["health"] == DEGRADED  # 3 of 60 failed
    assert nodes["app:default:reviews:v2"]["health"] == FAILURE
    assert nodes["app:default:reviews:v1"]["health"] == HEALTHY
    assert nodes["unknown"]["health"] == "idle"
    # From outside the mesh: only the destination reported it.
    assert edges[("unknown", "service:default:productpage")]["requests"] == 60.0
    # The panel: reviews' inbound requests as reviews-v2's sidecar saw them, two 5 s steps.
    assert p["rps"] == [2.0, 4.0]
    assert p["success_pct"] == [90.0, 90.0]
    # All took 30 ms (bucket (25, 50]): p50 = 25 + 25 * 0.5
    assert p["p50_ms"] == [37.5, 37.5]


def test_health_thresholds_are_kialis_defaults() -> None:
    assert health(1000, 0, 0) == HEALTHY
    assert health(1000, 1, 0) == DEGRADED  # any 5xx degrades
    assert health(1000, 100, 0) == FAILURE  # 10 % fails
    assert health(1000, 0, 99) == HEALTHY  # 4xx below 10 %
    assert health(1000, 0, 100) == DEGRADED
    assert health(1000, 0, 200) == FAILURE
