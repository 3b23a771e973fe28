"""The dashboard in a real headless Chromium: real ``tsunagi up``, what the page draws (read
from the page's Cytoscape graph and DOM, not from the JSON behind it), sign-in by the URL
``tsunagi dashboard`` prints.

The first test scrapes small local HTTP servers that serve Istio-style Prometheus text (the
exact label sets the unit tests use) registered as sidecars' metrics endpoints, so the numbers
on the page are known; the Bookinfo test scrapes real sidecars after real traffic.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_telemetry_graph import istio_text

from .browser import chromium
from .mesh import Background, Mesh, request, started_mesh, wait_until

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).parents[2]
SCREENSHOT = ROOT / "docs" / "images" / "dashboard.png"


class FakeSidecarMetrics:
    """``/stats/prometheus`` of one pretend sidecar: each scrape sees ``calls`` once more
    (cumulative counters that grow with every scrape, as traffic would make them)."""

    def __init__(self, calls: list[dict[str, Any]]) -> None:
        self.calls = calls
        self.scrapes = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path not in ("/stats/prometheus", "/stats/istio"):
                    self.send_error(404)
                    return
                outer.scrapes += 1
                body = istio_text(
                    [{**c, "count": c["count"] * outer.scrapes} for c in outer.calls]
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


def _post(port: int, path: str, doc: Any, token: str) -> tuple[int, str]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request(
            "POST",
            path,
            body=json.dumps(doc),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        r = c.getresponse()
        return r.status, r.read().decode()
    finally:
        c.close()


def register(mesh: Mesh, name: str, service: str, version: str, metrics_port: int) -> None:
    status, body = _post(
        mesh.api_port,
        "/v1/instances",
        {
            "name": name,
            "service": service,
            "port": 9080,
            "target_port": 9,  # nothing is sent to it: only its metrics are scraped
            "labels": {"app": service, "version": version},
            "metrics_port": metrics_port,
        },
        mesh.token(),
    )
    assert status == 200, body


def signed_in(mesh: Mesh, page: Any) -> None:
    """Open the URL ``tsunagi dashboard --no-browser`` prints, as a user would."""
    done = mesh.cli("dashboard", "--no-browser")
    assert done.returncode == 0, done.stderr
    url = done.stdout.strip()
    assert url.startswith(f"http://127.0.0.1:{mesh.dashboard_port}/?code="), url
    assert mesh.token() not in url  # the API token never goes into a URL
    page.goto(url)
    assert page.url == f"http://127.0.0.1:{mesh.dashboard_port}/"  # the code left the URL


def drawn(page: Any) -> dict[str, Any]:
    """What the page's Cytoscape instance holds."""
    return page.evaluate(
        """() => {
          const cy = window.tsunagiGraph;
          return {
            nodes: cy.nodes().map((n) => ({ id: n.id(), label: n.data("label"),
                                            color: n.style("border-color"),
                                            visible: n.visible() })),
            edges: cy.edges().map((e) => ({ source: e.source().id(), target: e.target().id(),
                                            label: e.style("label"),
                                            color: e.style("line-color") })),
          };
        }"""
    )


def save_screenshot(page: Any, tmp_path: Path) -> None:
    """A picture of the page; ``TSUNAGI_UPDATE_SCREENSHOT=1`` makes it the README's."""
    page.wait_for_timeout(500)  # the layout's animation settles
    page.screenshot(path=str(tmp_path / "dashboard.png"))
    if os.environ.get("TSUNAGI_UPDATE_SCREENSHOT"):
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tmp_path / "dashboard.png", SCREENSHOT)


RED, GREEN, AMBER = "rgb(201,25,11)", "rgb(63,156,53)", "rgb(240,171,0)"


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    yield from started_mesh(tmp_path, "--scrape-interval", "1s")


def test_graph_panels_traces_and_config_in_a_browser(mesh: Mesh, tmp_path: Path) -> None:
    pp, reviews_v1, reviews_v2 = ("productpage", "v1"), ("reviews", "v1"), ("reviews", "v2")
    productpage = FakeSidecarMetrics(
        [
            {"reporter": "source", "src": pp, "dst": reviews_v1, "code": 200, "count": 10,
             "ms": 4},
            {"reporter": "source", "src": pp, "dst": reviews_v2, "code": 503, "count": 5,
             "ms": 40},
            {"reporter": "destination", "src": ("unknown", "unknown"), "dst": pp,
             "code": 200, "count": 15, "ms": 60},
        ]
    )  # fmt: skip
    reviews = FakeSidecarMetrics(
        [{"reporter": "destination", "src": pp, "dst": reviews_v1, "code": 200, "count": 10,
          "ms": 3}]
    )  # fmt: skip
    try:
        register(mesh, "productpage-v1-0", "productpage", "v1", productpage.port)
        register(mesh, "reviews-v1-0", "reviews", "v1", reviews.port)
        # A rule with a warning (a subset no DestinationRule defines) and a real proxy.
        applied = mesh.cli("apply", "-f", "-", stdin=VIRTUAL_SERVICE)
        assert applied.returncode == 0, applied.stderr
        mesh.client()
        # A trace, sent to the control plane's Zipkin port as a tracer would.
        status, body = _post(mesh.zipkin_port, "/api/v2/spans", trace_spans(), "")
        assert status == 202, body

        with chromium(tmp_path / "chromium") as page:
            # Without signing in, or with the API token in the URL: nothing.
            assert page.goto(f"http://127.0.0.1:{mesh.dashboard_port}/").status == 401
            token_url = f"http://127.0.0.1:{mesh.dashboard_port}/?token={mesh.token()}"
            assert page.goto(token_url).status == 401
            assert page.goto(f"http://127.0.0.1:{mesh.dashboard_port}/api/graph").status == 401
            signed_in(mesh, page)

            def graph_complete() -> bool:
                g = drawn(page)
                return len(g["nodes"]) == 6 and len(g["edges"]) == 5

            wait_until(graph_complete, timeout=60, what="the graph to be drawn")
            g = drawn(page)
            nodes = {n["id"]: n for n in g["nodes"]}
            assert {n["label"] for n in g["nodes"]} == {
                "unknown", "productpage", "productpage v1", "reviews", "reviews v1",
                "reviews v2",
            }  # fmt: skip
            assert all(n["visible"] for n in g["nodes"])
            edges = {(e["source"], e["target"]): e for e in g["edges"]}
            assert set(edges) == {
                ("unknown", "service:default:productpage"),
                ("service:default:productpage", "app:default:productpage:v1"),
                ("app:default:productpage:v1", "service:default:reviews"),
                ("service:default:reviews", "app:default:reviews:v1"),
                ("service:default:reviews", "app:default:reviews:v2"),
            }
            # productpage -> reviews: 10 of 15 per scrape fine, 5 failed: 33 % errors.
            to_reviews = edges[("app:default:productpage:v1", "service:default:reviews")]
            assert "33.33%" in to_reviews["label"] and to_reviews["color"] == RED
            to_v2 = edges[("service:default:reviews", "app:default:reviews:v2")]
            assert "100%" in to_v2["label"] and to_v2["color"] == RED
            to_v1 = edges[("service:default:reviews", "app:default:reviews:v1")]
            assert " 0% " in to_v1["label"] and "p99 4.96 ms" in to_v1["label"]
            assert to_v1["color"] == GREEN
            assert nodes["app:default:reviews:v1"]["color"] == GREEN
            assert nodes["app:default:reviews:v2"]["color"] == RED
            assert nodes["service:default:reviews"]["color"] == RED  # 33 % errors
            assert nodes["service:default:productpage"]["color"] == GREEN
            save_screenshot(page, tmp_path)

            # Panels: reviews v1's inbound requests, as its sidecar reported them.
            page.click("#tabs button[data-view=metrics]")
            page.select_option("#metrics-target", "workload/default/reviews-v1")
            page.wait_for_function(
                "Number(document.querySelector('#chart-rps').dataset.points || 0) > 0"
            )
            page.wait_for_function(
                "Number(document.querySelector('#chart-latency').dataset.points || 0) > 0"
            )
            assert page.locator("#chart-success path").count() == 1

            # Traces: the list, then one trace's waterfall.
            page.click("#tabs button[data-view=traces]")
            row = page.locator(f"#trace-list tr[data-trace='{TRACE_ID}']")
            row.wait_for()
            assert "frontend" in row.inner_text() and "backend" in row.inner_text()
            row.click()
            page.locator("#waterfall .span-row").first.wait_for()
            bars = page.locator("#waterfall .span-row")
            assert bars.count() == 3
            assert "backend: get /api" in bars.nth(2).inner_text()

            # Config: the rule with its warning, the proxy in sync.
            page.click("#tabs button[data-view=config]")
            vs = page.locator("#config-list tr", has_text="VirtualService")
            vs.wait_for()
            assert "no DestinationRule defines subsets for reviews" in vs.inner_text()
            proxy = page.locator("#proxy-list tr", has_text="client-v1")
            proxy.wait_for()
            assert "SYNCED" in proxy.inner_text()
    finally:
        productpage.close()
        reviews.close()


VIRTUAL_SERVICE = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v9}
"""

TRACE_ID = "5af7183fb1d4cf5f5af7183fb1d4cf5f"


def trace_spans() -> list[dict[str, Any]]:
    now = int(time.time() * 1_000_000)

    def span(sid: str, parent: str | None, service: str, name: str, start: int, dur: int):
        doc: dict[str, Any] = {
            "traceId": TRACE_ID,
            "id": sid,
            "name": name,
            "timestamp": now + start,
            "duration": dur,
            "kind": "SERVER",
            "localEndpoint": {"serviceName": service},
        }
        if parent:
            doc["parentId"] = parent
        return doc

    return [
        span("a000000000000001", None, "frontend", "get /", 0, 9000),
        span("a000000000000002", "a000000000000001", "frontend", "call backend", 1000, 6000),
        span("a000000000000003", "a000000000000002", "backend", "get /api", 1500, 5000),
    ]


# ----------------------------------------------------------------------------- Bookinfo


def _sidecar_metrics_landed() -> bool:
    agent = ROOT / "src" / "tsunagi" / "agent"
    return any("metrics_port" in p.read_text() for p in agent.glob("*.py"))


class PageViews(Background):
    """A browser-less user loading productpage again and again."""

    def __init__(self, port: int) -> None:
        super().__init__(limit=180)
        self.port = port
        self.statuses: list[int] = []

    def step(self) -> None:
        try:
            self.statuses.append(request(self.port, "productpage:9080", "/productpage")[0])
        except OSError:
            self.statuses.append(0)
        time.sleep(0.05)


@pytest.mark.xfail(
    not _sidecar_metrics_landed(),
    reason="sidecars do not serve metrics yet (issue 8 item 1 is not in the tree)",
    run=_sidecar_metrics_landed(),  # without them it could only wait two minutes and fail
    strict=False,
)
def test_bookinfo_graph_and_trace_in_a_browser(tmp_path: Path) -> None:
    from .test_istio_tasks import BOOKINFO, start, wait_serving

    mesh = Mesh(tmp_path / "state", up_args=("--scrape-interval", "1s", "--trace-sampling", "100"))
    mesh.state_dir.mkdir(parents=True)
    try:
        mesh.up()
        apps = {f"{s}-{v}": start(mesh, s, v) for s, v in BOOKINFO}
        wait_serving(mesh, list(apps.values()))
        items = mesh.api("GET", "/v1/resources?kind=workloads")["items"]
        port = next(
            int(i["document"]["target_port"]) for i in items if i["name"].startswith("productpage")
        )
        expected = {
            ("app:default:productpage:v1", "service:default:details"),
            ("app:default:productpage:v1", "service:default:reviews"),
            ("service:default:reviews", "app:default:reviews:v1"),
            ("service:default:reviews", "app:default:reviews:v2"),
            ("service:default:reviews", "app:default:reviews:v3"),
            ("app:default:reviews:v2", "service:default:ratings"),
            ("app:default:reviews:v3", "service:default:ratings"),
            ("service:default:ratings", "app:default:ratings:v1"),
        }
        with PageViews(port) as views, chromium(tmp_path / "chromium") as page:
            signed_in(mesh, page)

            def has_expected() -> bool:
                g = drawn(page)
                return expected <= {(e["source"], e["target"]) for e in g["edges"]}

            wait_until(has_expected, timeout=120, what="Bookinfo's calls in the graph")
            assert views.statuses and set(views.statuses) == {200}, set(views.statuses)
            g = drawn(page)
            labels = {n["label"] for n in g["nodes"]}
            assert {"productpage v1", "reviews v1", "reviews v2", "reviews v3", "details v1",
                    "ratings v1", "reviews", "ratings", "details"} <= labels  # fmt: skip
            assert all(e["color"] == GREEN for e in g["edges"] if e["source"] != "unknown")
            save_screenshot(page, tmp_path)

            # Traces: the sidecars' own spans (sampling 100 %), found by service.
            page.click("#tabs button[data-view=traces]")

            def productpage_service() -> str:
                page.click("#trace-search")
                values = page.eval_on_selector_all(
                    "#trace-service option", "(os) => os.map((o) => o.value)"
                )
                return next((v for v in values if v.startswith("productpage")), "")

            wait_until(productpage_service, timeout=60, what="productpage's spans")
            page.select_option("#trace-service", productpage_service())
            spans: list[str] = []

            def whole_trace() -> bool:
                # Each sidecar reports its spans on its own flush: search again until the
                # callees' spans have joined the trace.
                page.click("#trace-search")
                row = page.locator("#trace-list tbody tr", has_text="reviews").first
                row.wait_for()
                row.click()
                page.locator("#waterfall .span-row").first.wait_for()
                spans[:] = page.locator("#waterfall .span-row").all_inner_texts()
                # reviews' own sidecar may flush after details' has: wait for its span too.
                return len(spans) >= 3 and any(s.lstrip().startswith("reviews") for s in spans)

            wait_until(whole_trace, timeout=60, what="a trace with the callees' spans")
            # productpage's sidecar (inbound), its calls out, and the callees' sidecars.
            assert len(spans) >= 3, spans
            assert any(s.lstrip().startswith("productpage") for s in spans), spans
            assert any(s.lstrip().startswith("reviews") for s in spans), spans
    finally:
        mesh.close()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))


# ----------------------------------------------------------------------------- --prometheus


def test_the_graph_from_a_real_prometheus(tmp_path: Path) -> None:
    """``tsunagi up --prometheus URL``: the same graph, computed by PromQL against a real
    Prometheus that scrapes the real sidecars (with the config ``tsunagi up`` wrote)."""
    from .mesh import free_port, stop
    from .test_prometheus import Mixed, Prometheus, prometheus_binary

    binary = prometheus_binary()
    prom_port = free_port()
    mesh = Mesh(
        tmp_path / "state",
        up_args=("--prometheus", f"http://127.0.0.1:{prom_port}"),
    )
    mesh.state_dir.mkdir(parents=True)
    prom: Prometheus | None = None
    try:
        mesh.up()
        log = tmp_path / "prometheus.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [
                    binary,
                    *("--config.file", str(mesh.state_dir / "prometheus.yml")),
                    *("--storage.tsdb.path", str(tmp_path / "tsdb")),
                    *("--web.listen-address", f"127.0.0.1:{prom_port}"),
                ],
                stdout=out,
                stderr=out,
            )
        prom = Prometheus(proc, prom_port, log)
        mesh.run("echo", "v1")
        mesh.run("flaky", "v1")
        client = mesh.client()
        with Mixed(client, "echo:9080") as ok, Mixed(client, "flaky:9080", fail_every=4) as bad:
            edges: dict[tuple[str, str], dict[str, Any]] = {}

            def drawn_from_prometheus() -> bool:
                assert proc.poll() is None, "prometheus exited:\n" + prom.logs()
                graph = mesh.api("GET", "/v1/graph?window=60")
                if "edges" not in graph:  # 502 until Prometheus answers
                    return False
                edges.clear()
                edges.update({(e["source"], e["target"]): e for e in graph["edges"]})
                flaky = edges.get(("service:default:flaky", "app:default:flaky:v1"))
                return (
                    ("service:default:echo", "app:default:echo:v1") in edges
                    and flaky is not None
                    and flaky["error_pct"] > 0
                )

            wait_until(drawn_from_prometheus, 120, "the graph from Prometheus")
            series: dict[str, Any] = {}

            def charted_from_prometheus() -> bool:
                series.clear()
                series.update(mesh.api("GET", "/v1/metrics/series?name=flaky&window=60&step=10"))
                return any(v is not None and v < 100 for v in series.get("success_pct", []))

            wait_until(charted_from_prometheus, 60, "flaky's success rate from Prometheus")
        assert set(ok.statuses) == {200} and set(bad.statuses) == {200, 503}
        callers = {s for s, t in edges if t == "service:default:echo"}
        assert callers == {"app:default:client:v1"}, edges
        assert edges[("service:default:echo", "app:default:echo:v1")]["error_pct"] == 0
        # One request in four fails: Prometheus' increase() extrapolates, so a range.
        flaky = edges[("service:default:flaky", "app:default:flaky:v1")]
        assert 10 <= flaky["error_pct"] <= 40, flaky
        assert flaky["health"] == "failure"
        # The panel: requests per second, success rate and percentiles per 10 s step.
        assert any(r > 0 for r in series["rps"]), series
        assert all(v is None or 0 <= v <= 100 for v in series["success_pct"]), series
        p50s = [p for p in series["p50_ms"] if p is not None]
        p99s = [p for p in series["p99_ms"] if p is not None]
        assert p50s and p99s and max(p50s) <= max(p99s), series
    finally:
        mesh.close()
        if prom is not None:
            stop(prom.proc)
