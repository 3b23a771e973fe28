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
from tsunagi.ui.server import Dashboard, Sources, cookie_name
from tsunagi.ui.sessions import SignIns

TOKEN = "s3cret-token"


CONFIG_ITEM = {"kind": "VirtualService", "namespace": "default", "name": "r", "revision": 1}
CONFIG_ITEM |= {"warnings": ["w"], "errors": []}


async def _no_proxies() -> list[dict[str, Any]]:
    return []


def _sources() -> Sources:
    store = SeriesStore()
    return Sources(
        views=StoreViews(store),
        config=lambda: [CONFIG_ITEM],
        proxies=_no_proxies,
    )


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def _code(base: str, token: str = TOKEN) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        aiohttp.ClientSession() as s,
        s.post(base + "/api/login-code", headers=headers) as r,
    ):
        return r.status, ((await r.json())["code"] if r.status == 200 else "")


def test_sign_in_by_url_then_cookie_and_nothing_without_it() -> None:
    async def main() -> dict[str, Any]:
        dashboard = Dashboard(TOKEN, _sources())
        runner, port = await dashboard.serve("127.0.0.1", 0)
        base = f"http://127.0.0.1:{port}"
        seen: dict[str, Any] = {"port": port}
        try:
            async with aiohttp.ClientSession() as anonymous:
                for path in ("/", "/api/graph", "/api/config", "/?code=wrong", f"/?token={TOKEN}"):
                    async with anonymous.get(base + path, allow_redirects=False) as r:
                        seen[path] = r.status
                async with anonymous.get(base + "/api/login-code") as r:
                    seen["code by GET"] = r.status
                async with anonymous.get(base + "/static/vendor/cytoscape.min.js") as r:
                    seen["static"] = r.status
                escape = yarl.URL(base + "/static/%2E%2E/server.py", encoded=True)
                async with anonymous.get(escape) as r:
                    seen["escape"] = r.status
            # unsafe: keep cookies of an IP address host, as browsers do
            async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
                seen["wrong token code"] = await _code(base, "wrong")
                status, code = await _code(base)
                assert status == 200
                async with browser.get(f"{base}/?code={code}", allow_redirects=False) as r:
                    seen["login"] = (r.status, r.headers["Location"], r.cookies[cookie_name(port)])
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
    assert seen["/?code=wrong"] == 401
    assert seen[f"/?token={TOKEN}"] == 401  # the API token itself no longer signs in
    assert seen["code by GET"] == 401 and seen["wrong token code"] == (401, "")
    assert seen["static"] == 200 and seen["escape"] == 404
    status, location, cookie = seen["login"]
    assert (status, location) == (302, "/")
    assert cookie.key == f"tsunagi_dashboard_{seen['port']}"  # browsers share cookies across ports
    assert TOKEN not in cookie.value and len(cookie.value) >= 40  # random, not the token
    assert cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["path"] == "/"
    assert seen["page"] == (200, True)
    assert seen["config"]["items"][0]["warnings"] == ["w"]
    assert seen["bad"] == 400
    assert seen["bearer"] == {"window": 30.0, "nodes": [], "edges": []}


def test_a_code_signs_in_once_and_only_within_a_minute() -> None:
    clock = Clock()

    async def sign_in(base: str, code: str) -> tuple[int, str]:
        async with (
            aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser,
            browser.get(f"{base}/?code={code}", allow_redirects=False) as r,
        ):
            return r.status, await r.text()

    async def main() -> dict[str, Any]:
        dashboard = Dashboard(TOKEN, _sources(), SignIns(clock=clock))
        runner, port = await dashboard.serve("127.0.0.1", 0)
        base = f"http://127.0.0.1:{port}"
        seen: dict[str, Any] = {}
        try:
            _, code = await _code(base)
            seen["first"] = (await sign_in(base, code))[0]
            seen["reused"] = await sign_in(base, code)
            _, late = await _code(base)
            clock.now += 61
            seen["expired"] = (await sign_in(base, late))[0]
            _, fresh = await _code(base)
            clock.now += 59
            seen["within"] = (await sign_in(base, fresh))[0]
        finally:
            await runner.cleanup()
        return seen

    seen = asyncio.run(main())
    assert seen["first"] == 302 and seen["within"] == 302
    status, text = seen["reused"]
    assert status == 401 and "tsunagi dashboard" in text
    assert seen["expired"] == 401


def test_a_session_expires_after_12_idle_hours() -> None:
    clock = Clock()
    sign_ins = SignIns(clock=clock)
    session = sign_ins.redeem(sign_ins.new_code())
    assert session is not None and sign_ins.check(session)
    clock.now += 11 * 3600
    assert sign_ins.check(session)  # used: its idle time starts over
    clock.now += 11 * 3600
    assert sign_ins.check(session)
    clock.now += 12 * 3600
    assert not sign_ins.check(session) and not sign_ins.check("made-up")


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

    async def listening() -> tuple[subprocess.CompletedProcess[str], ...]:
        dashboard = Dashboard("a/b+c", _sources())
        runner, port = await dashboard.serve("127.0.0.1", 0)
        base = f"http://127.0.0.1:{port}"
        (tmp_path / "dashboard").write_text(f"{base}/\n")
        (tmp_path / "token").write_text("a/b+c\n")
        try:
            done = await asyncio.to_thread(cli)
            wrong = await asyncio.to_thread(cli, "--token", "other")
            url = done.stdout.strip()
            async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as b:
                async with b.get(url) as r:
                    statuses = [r.status, r.url.path]
                async with b.get(url) as r:  # the same URL again: used up
                    statuses.append(r.status)
            return done, wrong, statuses  # type: ignore[return-value]
        finally:
            await runner.cleanup()

    done, wrong, statuses = asyncio.run(listening())
    assert done.returncode == 0, done.stderr
    assert "/?code=" in done.stdout
    assert "a%2Fb%2Bc" not in done.stdout and "a/b+c" not in done.stdout
    assert statuses == [200, "/", 401]  # signed in once, then the code is spent
    assert wrong.returncode == 1 and "refused the token" in wrong.stderr
    gone = cli()  # the URL file is there but nothing listens any more
    assert gone.returncode == 3 and "does not answer" in gone.stderr


def test_a_busy_port_names_the_flag_to_change() -> None:
    from tsunagi.telemetry.collector import CollectorSettings, TraceCollector

    async def main() -> list[str]:
        holder = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
        port = holder.sockets[0].getsockname()[1]
        errors = []
        try:
            with pytest.raises(OSError) as dash:
                await Dashboard(TOKEN, _sources()).serve("127.0.0.1", port)
            errors.append(str(dash.value))
            for settings in (
                CollectorSettings(host="127.0.0.1", zipkin_port=port, otlp_port=None),
                CollectorSettings(host="127.0.0.1", zipkin_port=None, otlp_port=port),
            ):
                with pytest.raises(OSError) as trace:
                    await TraceCollector(settings).start()
                errors.append(str(trace.value))
        finally:
            holder.close()
            await holder.wait_closed()
        return [e.replace(str(port), "N") for e in errors]

    assert asyncio.run(main()) == [
        "port N is in use: choose another --dashboard-port (0 lets the OS choose)",
        "port N is in use: choose another --zipkin-port (0 lets the OS choose)",
        "port N is in use: choose another --otlp-port (0 lets the OS choose)",
    ]
