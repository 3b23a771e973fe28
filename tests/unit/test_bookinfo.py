"""Bookinfo demo services, run as real processes behind a recording forward proxy.

The proxy stands in for the sidecar: the services only know names such as
``details:9080`` and reach them through ``HTTP_PROXY``; the proxy maps those
names to the ports the test processes really listen on and records every
request's headers so propagation can be asserted hop by hop.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
from aiohttp import web

SRC = Path(__file__).resolve().parents[2] / "src"

TRACE_HEADERS = {
    "x-request-id": "6f1c7e0a-1111-4222-8333-944455556666",
    "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    "tracestate": "tsunagi=t61rcWkgMzE",
    "x-b3-traceid": "0af7651916cd43dd8448eb211c80319c",
    "x-b3-spanid": "b7ad6b7169203331",
    "x-b3-parentspanid": "a2fb4a1d1a96d312",
    "x-b3-sampled": "1",
    "x-b3-flags": "0",
    "b3": "0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-1",
    "x-ot-span-context": "0af7651916cd43dd;b7ad6b7169203331;0000000000000000",
    "user-agent": "tsunagi-test/1.0",
}

# Headers a proxy must not pass on (RFC 9110 section 7.6.1) plus framing
# headers aiohttp recomputes.
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "host",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Seen:
    """One request as the proxy received it."""

    authority: str
    path: str
    headers: dict[str, str]  # lower-cased names


class RecordingProxy:
    """A plain-HTTP forward proxy on 127.0.0.1, running in its own thread."""

    def __init__(self) -> None:
        self.port = free_port()
        self.routes: dict[str, int] = {}
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    # -- public, called from the test thread --------------------------------
    def start(self) -> None:
        self._thread.start()
        assert self._ready.wait(10), "proxy did not start"

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def reset(self, routes: dict[str, int]) -> None:
        with self._lock:
            self.routes = dict(routes)
            self.seen.clear()

    def requests_to(self, authority: str) -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if s.authority == authority]

    # -- the proxy itself -----------------------------------------------------
    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._startup())
        self._ready.set()
        self._loop.run_forever()

    async def _startup(self) -> None:
        self._session = aiohttp.ClientSession(
            trust_env=False, timeout=aiohttp.ClientTimeout(total=5)
        )
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _shutdown(self) -> None:
        await self._session.close()
        await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        # A forward proxy receives absolute-form targets: "GET http://details:9080/x".
        if not request.raw_path.startswith("http://"):
            return web.Response(status=400, text="not a proxy request")
        authority = f"{request.url.host}:{request.url.port}"
        headers = {k.lower(): v for k, v in request.headers.items()}
        with self._lock:
            self.seen.append(Seen(authority, request.path_qs, headers))
            port = self.routes.get(authority)
        if port is None:
            return web.Response(status=404, text="no route")
        out = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        out["Host"] = authority
        try:
            async with self._session.request(
                request.method,
                f"http://127.0.0.1:{port}{request.path_qs}",
                headers=out,
                data=await request.read(),
                allow_redirects=False,
            ) as resp:
                body = await resp.read()
                back = {
                    k: v
                    for k, v in resp.headers.items()
                    if k.lower() not in HOP_BY_HOP | {"content-encoding"}
                }
                return web.Response(status=resp.status, body=body, headers=back)
        except aiohttp.ClientConnectionError:
            # What Envoy says when the upstream refuses connections.
            return web.Response(
                status=503, text="upstream connect error or disconnect/reset before headers"
            )


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    text: str

    def json(self) -> Any:
        return json.loads(self.text)


def call(
    port: int,
    path: str,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    form: dict[str, str] | None = None,
) -> Reply:
    """Talk to a service directly (no proxy, no redirect following)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        body = urlencode(form) if form is not None else None
        hdrs = dict(headers or {})
        if body is not None:
            hdrs["Content-Type"] = "application/x-www-form-urlencoded"
        conn.request(method, path, body=body, headers=hdrs)
        resp = conn.getresponse()
        return Reply(resp.status, resp.headers, resp.read().decode())
    finally:
        conn.close()


def child_env(**extra: str) -> dict[str, str]:
    """The test's environment without any inherited proxy settings."""
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    env["DOWNSTREAM_TIMEOUT"] = "2"
    env.update(extra)
    return env


def spawn(service: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "tsunagi.demo.bookinfo", service],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def wait_healthy(proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"process exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if call(port, "/health").status == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    pytest.fail(f"port {port} never became healthy:\n{log.read_text()}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@dataclass
class Mesh:
    proxy: RecordingProxy
    ports: dict[str, int]  # "productpage", "details", "ratings", "reviews-v1", ...
    dead_port: int

    def route(self, reviews: str = "v2", dead: tuple[str, ...] = ()) -> None:
        """Point the proxy's names at processes; names in ``dead`` at a port
        nobody listens on."""
        routes = {
            "details:9080": self.ports["details"],
            "ratings:9080": self.ports["ratings"],
            "reviews:9080": self.ports[f"reviews-{reviews}"],
        }
        routes.update({f"{name}:9080": self.dead_port for name in dead})
        self.proxy.reset(routes)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    logs = tmp_path_factory.mktemp("bookinfo")
    proxy = RecordingProxy()
    proxy.start()
    procs: list[tuple[subprocess.Popen[bytes], int, Path]] = []
    ports: dict[str, int] = {}
    try:
        for key, service, version in [
            ("ratings", "ratings", "v1"),
            ("details", "details", "v1"),
            ("reviews-v1", "reviews", "v1"),
            ("reviews-v2", "reviews", "v2"),
            ("reviews-v3", "reviews", "v3"),
            ("productpage", "productpage", "v1"),
        ]:
            port = ports[key] = free_port()
            env = child_env(
                PORT=str(port),
                SERVICE_VERSION=version,
                HTTP_PROXY=f"http://127.0.0.1:{proxy.port}",
                http_proxy=f"http://127.0.0.1:{proxy.port}",
            )
            log = logs / f"{key}.log"
            procs.append((spawn(service, env, log), port, log))
        for proc, port, log in procs:  # started in parallel, awaited together
            wait_healthy(proc, port, log)
        yield Mesh(proxy, ports, dead_port=free_port())
    finally:
        for proc, _, _ in procs:
            stop(proc)
        proxy.stop()


@pytest.fixture
def m(mesh: Mesh) -> Mesh:
    mesh.route()
    return mesh


def test_every_response_names_its_service_and_version(m: Mesh) -> None:
    for key, expected in [
        ("productpage", "productpage-v1"),
        ("details", "details-v1"),
        ("ratings", "ratings-v1"),
        ("reviews-v1", "reviews-v1"),
        ("reviews-v3", "reviews-v3"),
    ]:
        assert call(m.ports[key], "/health").headers["x-served-by"] == expected
        missing = call(m.ports[key], "/no/such/path")
        assert missing.status == 404
        assert missing.headers["x-served-by"] == expected


def test_leaf_services_json(m: Mesh) -> None:
    details = call(m.ports["details"], "/details/0").json()
    for key in ("author", "year", "pages", "publisher", "ISBN-10", "ISBN-13", "language"):
        assert key in details
    assert call(m.ports["details"], "/details/7").status == 404
    assert call(m.ports["details"], "/details/abc").status == 400
    assert call(m.ports["ratings"], "/ratings/0").json() == {
        "id": 0,
        "ratings": {"Reviewer1": 5, "Reviewer2": 4},
    }


def test_reviews_versions(m: Mesh) -> None:
    v1 = call(m.ports["reviews-v1"], "/reviews/0").json()
    assert v1["version"] == "v1" and v1["clustername"] == "null" and v1["podname"]
    assert all("rating" not in r for r in v1["reviews"])
    assert m.proxy.requests_to("ratings:9080") == []  # v1 calls no one

    for version, color in [("v2", "black"), ("v3", "red")]:
        body = call(m.ports[f"reviews-{version}"], "/reviews/0").json()
        assert body["version"] == version
        assert [r["rating"] for r in body["reviews"]] == [
            {"stars": 5, "color": color},
            {"stars": 4, "color": color},
        ]
    assert len(m.proxy.requests_to("ratings:9080")) == 2


def test_productpage_shows_details_reviews_and_versions(m: Mesh) -> None:
    port = m.ports["productpage"]
    landing = call(port, "/")
    assert landing.status == 200 and "/productpage" in landing.text

    page = call(port, "/productpage")
    assert page.status == 200
    assert page.headers["x-served-by"] == "productpage-v1"
    assert "Natsume Soseki" in page.text and "978-4901234566" in page.text
    assert "Reviewer1" in page.text
    assert "reviews-v2" in page.text and "color:black" in page.text
    assert f"{socket.gethostname()}:{port}" in page.text  # which instance served
    # Reached by name through HTTP_PROXY, including the second hop.
    assert m.proxy.requests_to("details:9080")[0].path == "/details/0"
    assert m.proxy.requests_to("reviews:9080")[0].path == "/reviews/0"
    assert m.proxy.requests_to("ratings:9080")[0].path == "/ratings/0"

    m.route(reviews="v1")
    page = call(port, "/productpage")
    assert "reviews-v1" in page.text and "&#9733;" not in page.text

    m.route(reviews="v3")
    assert "color:red" in call(port, "/productpage").text


def test_api_reviews_json(m: Mesh) -> None:
    reply = call(m.ports["productpage"], "/api/v1/products/0/reviews")
    assert reply.status == 200
    assert reply.json()["version"] == "v2"
    assert reply.json()["reviews"][0]["rating"]["color"] == "black"


def test_signed_in_user_reaches_reviews_and_ratings(m: Mesh) -> None:
    port = m.ports["productpage"]
    call(port, "/productpage")
    assert all("end-user" not in s.headers for s in m.proxy.seen)  # anonymous

    login = call(port, "/login", "POST", form={"username": "jason"})
    assert login.status == 303 and login.headers["Location"] == "/productpage"
    assert "user=jason" in login.headers["Set-Cookie"]

    m.route()
    page = call(port, "/productpage", headers={"Cookie": "user=jason"})
    assert "Signed in as <b>jason</b>" in page.text
    for authority in ("details:9080", "reviews:9080", "ratings:9080"):
        [seen] = m.proxy.requests_to(authority)
        assert seen.headers["end-user"] == "jason", authority

    logout = call(port, "/logout", "POST", headers={"Cookie": "user=jason"})
    assert logout.status == 303
    assert 'user=""' in logout.headers["Set-Cookie"] or "Max-Age=0" in logout.headers["Set-Cookie"]

    bad = call(port, "/login", "POST", form={"username": "x\r\ny"})
    assert bad.status == 400 and "Set-Cookie" not in bad.headers


def test_trace_headers_forwarded_every_hop(m: Mesh) -> None:
    call(m.ports["productpage"], "/productpage", headers=TRACE_HEADERS)
    for authority in ("details:9080", "reviews:9080", "ratings:9080"):
        [seen] = m.proxy.requests_to(authority)
        for name, value in TRACE_HEADERS.items():
            assert seen.headers.get(name) == value, (authority, name)


DETAILS_SORRY = "Sorry, product details are currently unavailable for this book."
REVIEWS_SORRY = "Sorry, product reviews are currently unavailable for this book."
RATINGS_SORRY = "Ratings service is currently unavailable"


def test_dead_downstreams_degrade_gracefully(m: Mesh) -> None:
    port = m.ports["productpage"]
    m.route(dead=("details", "ratings"))
    page = call(port, "/productpage")
    assert page.status == 200
    # Istio's words, then the cause.
    assert DETAILS_SORRY in page.text and "(HTTP 503" in page.text
    assert page.text.count(RATINGS_SORRY) == 2  # one per review: the stars are missing
    assert "Reviewer1" in page.text  # reviews still shown, only stars missing

    m.route(dead=("reviews",))
    page = call(port, "/productpage")
    assert page.status == 200 and REVIEWS_SORRY in page.text
    # As Istio's productpage: a failed reviews call is tried once more, details only once.
    assert len(m.proxy.requests_to("reviews:9080")) == 2
    assert len(m.proxy.requests_to("details:9080")) == 1
    api = call(port, "/api/v1/products/0/reviews")
    assert api.status == 503 and api.json()["error"] == REVIEWS_SORRY


def test_cookie_and_session_headers_forwarded_every_hop(m: Mesh) -> None:
    """As Istio's Bookinfo: the caller's cookie, authorization and jwt headers travel on, so
    rules can match or hash on them at any hop."""
    headers = {"Cookie": "user=jason", "Authorization": "Bearer t0ken", "jwt": "j.w.t"}
    call(m.ports["productpage"], "/productpage", headers=headers)
    for authority in ("details:9080", "reviews:9080", "ratings:9080"):
        [seen] = m.proxy.requests_to(authority)
        assert seen.headers["cookie"] == "user=jason", authority
        assert seen.headers["authorization"] == "Bearer t0ken", authority
        assert seen.headers["jwt"] == "j.w.t", authority


def test_stats_count_what_each_instance_received(m: Mesh) -> None:
    port = m.ports["reviews-v1"]
    before = call(port, "/stats").json()
    call(port, "/reviews/0", headers={"x-probe": "1"})
    after = call(port, "/stats").json()
    assert (after["service"], after["version"]) == ("reviews", "v1")
    assert after["requests"] == before["requests"] + 1  # /stats itself is not counted
    assert after["by_path"]["/reviews/0"] == before["by_path"].get("/reviews/0", 0) + 1
    assert after["recent"][-1]["path"] == "/reviews/0"
    assert after["recent"][-1]["headers"]["x-probe"] == "1"


def test_ratings_fails_and_slows_on_request(m: Mesh) -> None:
    port = m.ports["ratings"]
    failed = call(port, "/ratings/0?fail=503")
    assert failed.status == 503 and failed.json() == {"error": "Service unavailable"}
    assert call(port, "/ratings/0?fail=500").status == 500
    assert call(port, "/ratings/0?delay=0.05").json()["ratings"] == {"Reviewer1": 5, "Reviewer2": 4}
    for bad in ("delay=x", "delay=-1", "delay=1000", "fail=200", "fail=abc"):
        reply = call(port, f"/ratings/0?{bad}")
        assert reply.status == 400, bad
        assert "error" in reply.json()


def test_reviews_v2_waits_for_ratings_longer_than_productpage_waits_for_reviews() -> None:
    """The numbers Istio's fault-injection task turns on: a 7 s delay on ratings fits in
    reviews v2's 10 s but not in productpage's two tries of 3 s; v3 gives up after 2.5 s."""
    from tsunagi.demo.bookinfo import productpage, reviews

    assert reviews.RATINGS_TIMEOUT_S == {"black": 10.0, "red": 2.5}
    assert productpage.CALL_TIMEOUT_S == 3.0 and productpage.REVIEWS_ATTEMPTS == 2
    delay = 7.0
    assert reviews.RATINGS_TIMEOUT_S["black"] > delay
    assert delay > productpage.CALL_TIMEOUT_S * productpage.REVIEWS_ATTEMPTS


def test_ratings_fault_knobs_from_environment() -> None:
    from tsunagi.demo.bookinfo.ratings import Faults

    assert Faults.from_env("v1", {}) == Faults()
    assert not Faults().fails() and Faults().delay() == 0
    always = Faults.from_env("v1", {"RATINGS_FAIL_PERCENT": "100", "RATINGS_DELAY": "0.5"})
    assert always.fails() and always.delay() == 0.5
    # Istio's fault-demonstrating versions; the environment still wins.
    assert Faults.from_env("v-faulty", {}).fail_percent == 50
    delayed = Faults.from_env("v-delayed", {})
    assert (delayed.delay_s, delayed.delay_percent) == (7, 50)
    assert Faults.from_env("v-faulty", {"RATINGS_FAIL_PERCENT": "0"}).fail_percent == 0
    for name, raw in [("RATINGS_DELAY", "soon"), ("RATINGS_FAIL_PERCENT", "150")]:
        with pytest.raises(ValueError, match=name):
            Faults.from_env("v1", {name: raw})


def test_failing_ratings_instance_from_environment(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "ratings.log"
    proc = spawn("ratings", child_env(PORT=str(port), RATINGS_FAIL_PERCENT="100"), log)
    try:
        wait_healthy(proc, port, log)
        assert [call(port, "/ratings/0").status for _ in range(5)] == [503] * 5
    finally:
        stop(proc)
    bad = subprocess.run(
        [sys.executable, "-m", "tsunagi.demo.bookinfo", "ratings"],
        env=child_env(PORT=str(free_port()), RATINGS_DELAY="-1"),
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert bad.returncode == 2 and "RATINGS_DELAY must be between 0 and 60" in bad.stderr


def test_task_rules_load_and_are_all_enforced() -> None:
    """Every YAML shipped with the demo is valid, and nothing in it is stored but ignored."""
    from tsunagi.api.loader import load_documents
    from tsunagi.mesh.analysis import not_yet_enforced

    rules = sorted((SRC / "tsunagi" / "demo" / "rules").glob("*.yaml"))
    assert len(rules) >= 20
    for path in rules:
        resources = load_documents(path.read_text(), str(path))
        assert resources, path.name
        assert not_yet_enforced(resources) == [], path.name


def test_walkthrough_names_only_shipped_files() -> None:
    from tsunagi.demo.tasks import RULES, TASKS, walkthrough

    text = walkthrough()
    for task in TASKS:
        for name in task.files:
            assert (RULES / name).is_file(), name
            assert f"tsunagi apply -f {RULES / name} --wait" in text


def test_unreachable_sidecar_then_sigterm(tmp_path: Path) -> None:
    """With nothing listening at HTTP_PROXY the page still renders; SIGTERM exits 0."""
    port, dead = free_port(), free_port()
    env = child_env(PORT=str(port), HTTP_PROXY=f"http://127.0.0.1:{dead}")
    log = tmp_path / "pp.log"
    proc = spawn("productpage", env, log)
    try:
        wait_healthy(proc, port, log)
        page = call(port, "/productpage")
        assert page.status == 200
        assert DETAILS_SORRY in page.text and REVIEWS_SORRY in page.text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        stop(proc)


def test_sigint_exits_zero(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "ratings.log"
    proc = spawn("ratings", child_env(PORT=str(port)), log)
    try:
        wait_healthy(proc, port, log)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
    finally:
        stop(proc)


@pytest.mark.parametrize(
    ("args", "env"), [(["ratings"], {}), (["nope"], {"PORT": "1"}), ([], {"PORT": "1"})]
)
def test_bad_invocation_exits_2(args: list[str], env: dict[str, str]) -> None:
    base = child_env(**env)
    if "PORT" not in env:
        base.pop("PORT", None)
    done = subprocess.run(
        [sys.executable, "-m", "tsunagi.demo.bookinfo", *args],
        env=base,
        capture_output=True,
        timeout=20,
    )
    assert done.returncode == 2
    assert done.stderr


def test_demo_help_says_where_the_task_rules_are() -> None:
    from tsunagi.demo.tasks import RULES

    done = subprocess.run(
        [sys.executable, "-m", "tsunagi.cli.main", "demo", "--help"],
        env=child_env(COLUMNS="400"),
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert done.returncode == 0
    assert "tsunagi/demo/rules" in done.stdout and "--tasks" in done.stdout
    assert RULES.parts[-3:] == ("tsunagi", "demo", "rules")
    tasks = subprocess.run(
        [sys.executable, "-m", "tsunagi.cli.main", "demo", "--tasks"],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert tasks.returncode == 0
    assert f"tsunagi apply -f {RULES / 'virtual-service-all-v1.yaml'} --wait" in tasks.stdout
