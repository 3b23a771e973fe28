"""The dashboard server's sign-in and JSON, over a real loopback socket; the PromQL views
against a stand-in Prometheus HTTP server; ``tsunagi dashboard``."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yarl
from aiohttp import web

from tsunagi.telemetry.promviews import PrometheusViews
from tsunagi.telemetry.series import SeriesStore
from tsunagi.telemetry.views import StoreViews
from tsunagi.ui.server import COOKIE, Dashboard, Sources, session_value

TOKEN = "s3cret-token"


CONFIG_ITEM = {"kind": "VirtualService", "namespace": "default", "name": "r", "revision": 1}
CONFIG_ITEM |= {"warnings": ["w"], "errors": []}


def _sources() -> Sources:
    store = SeriesStore()
    return Sources(
        views=StoreViews(store),
        config=lambda: [CONFIG_ITEM],
        proxies=lambda: [],
    )


def test_sign_in_by_url_then_cookie_and_nothing_without_it() -> None:
    async def main() -> dict[str, Any]:
        dashboard = Dashboard(TOKEN, _sources())
        runner, port = await dashboard.serve("127.0.0.1", 0)
        base = f"http://127.0.0.1:{port}"
        seen: dict[str, Any] = {}
        try:
            async with aiohttp.ClientSession() as anonymous:
                for path in ("/", "/api/graph", "/api/config", "/?token=wrong"):
                    async with anonymous.get(base + path, allow_redirects=False) as r:
                        seen[path] = r.status
                async with anonymous.get(base + "/static/vendor/cytoscape.min.js") as r:
                    seen["static"] = r.status
                escape = yarl.URL(base + "/static/%2E%2E/server.py", encoded=True)
                async with anonymous.get(escape) as r:
                    seen["escape"] = r.status
            # unsafe: keep cookies of an IP address host, as browsers do
            async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
                async with browser.get(f"{base}/?token={TOKEN}", allow_redirects=False) as r:
                    seen["login"] = (r.status, r.headers["Location"], r.cookies[COOKIE])
                async with browser.get(base + "/") as r:
                    seen["page"] = (r.status, "cytoscape.min.js" in await r.text())
                async with browser.get(base + "/api/config") as r:
                    seen["config"] = await r.json()
                async with browser.get(base + "/api/graph?window=nope") as r:
                    seen["bad"] = r.status
            headers = {"Authorization": f"Bearer {TOKEN}"}
            async with (
                aiohttp.ClientSession(headers=headers) as script,
                script.get(base + "/api/graph?window=30") as r,
            ):
                seen["bearer"] = await r.json()
        finally:
            await runner.cleanup()
        return seen

    seen = asyncio.run(main())
    assert seen["/"] == seen["/api/graph"] == seen["/api/config"] == 401
    assert seen["/?token=wrong"] == 401
    assert seen["static"] == 200 and seen["escape"] == 404
    status, location, cookie = seen["login"]
    assert (status, location) == (302, "/")
    assert cookie.value == session_value(TOKEN) != TOKEN  # the token itself is not stored
    assert cookie["httponly"] and cookie["samesite"] == "Strict"
    assert seen["page"] == (200, True)
    assert seen["config"]["items"][0]["warnings"] == ["w"]
    assert seen["bad"] == 400
    assert seen["bearer"] == {"window": 30.0, "nodes": [], "edges": []}


def test_prometheus_views_send_kiali_style_promql() -> None:
    """Against a small HTTP server answering as Prometheus' API does."""
    queries: list[dict[str, str]] = []

    async def query(request: web.Request) -> web.Response:
        queries.append(dict(request.query))
        q = request.query["query"]
        if "bucket" in q:
            result = [
                {"metric": {"reporter": "source", "source_app": "a", "source_version": "v1",
                            "source_workload": "a-v1", "source_workload_namespace": "default",
                            "destination_service_name": "b", "destination_service_namespace":
                            "default", "le": le}, "value": [0, v]}
                for le, v in (("10", "5"), ("100", "10"), ("+Inf", "10"))
            ]  # fmt: skip
        else:
            result = [
                {"metric": {"reporter": "source", "source_app": "a", "source_version": "v1",
                            "source_workload": "a-v1", "source_workload_namespace": "default",
                            "destination_service_name": "b", "destination_service_namespace":
                            "default", "response_code": "200", "response_flags": "-"},
                 "value": [0, "10"]}
            ]  # fmt: skip
        return web.json_response(
            {"status": "success", "data": {"resultType": "vector", "result": result}}
        )

    async def main() -> dict[str, Any]:
        from tsunagi.telemetry.graph import graph_view

        app = web.Application()
        app.router.add_get("/api/v1/query", query)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        port = runner.addresses[0][1]
        try:
            return await graph_view(PrometheusViews(f"http://127.0.0.1:{port}/"), 60)
        finally:
            await runner.cleanup()

    graph = asyncio.run(main())
    requests_q = next(q["query"] for q in queries if "requests_total" in q["query"])
    assert requests_q.startswith("sum by (reporter,source_workload,")
    assert requests_q.endswith("(increase(istio_requests_total{}[60s]))")
    (edge,) = graph["edges"]
    assert edge["source"] == "app:default:a:v1" and edge["target"] == "service:default:b"
    assert edge["rate"] == round(10 / 60, 3)
    assert edge["p99_ms"] == pytest.approx(10 + 90 * (9.9 - 5) / 5)  # rank 9.9 in (10, 100]


def test_tsunagi_dashboard_prints_the_sign_in_url(tmp_path: Path) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "tsunagi.cli.main", "dashboard", "--state-dir",
             str(tmp_path), "--no-browser", *args],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    missing = cli()
    assert missing.returncode == 3 and "tsunagi up" in missing.stderr

    async def listening() -> subprocess.CompletedProcess[str]:
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        (tmp_path / "dashboard").write_text(f"http://127.0.0.1:{port}/\n")
        (tmp_path / "token").write_text("a/b+c\n")
        try:
            return await asyncio.to_thread(cli)
        finally:
            server.close()
            await server.wait_closed()

    done = asyncio.run(listening())
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("/?token=a%2Fb%2Bc")
    gone = cli()  # the URL file is there but nothing listens any more
    assert gone.returncode == 3 and "does not answer" in gone.stderr
