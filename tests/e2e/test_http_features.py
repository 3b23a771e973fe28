"""VirtualService HTTP features enforced by real Envoy sidecars: faults, header edits,
rewrites, CORS, mirroring and the default retry policy, judged by what a client receives
and what the apps see."""

from __future__ import annotations

import http.client
import json
import time
from typing import Any

import pytest

from .mesh import Mesh, Workload, wait_until
from .rules import virtual_service

pytestmark = pytest.mark.e2e

FEATURES = virtual_service("""
  - name: retry-503-on-request
    match:
    - headers:
        x-retry: {exact: "yes"}
    retries: {attempts: 2, retryOn: "503"}
    route:
    - destination: {host: reviews}
  - name: abort
    match:
    - uri: {prefix: /abort}
    fault:
      abort: {httpStatus: 418, percentage: {value: 100}}
    route:
    - destination: {host: reviews}
  - name: delay
    match:
    - uri: {prefix: /delay}
    fault:
      delay: {fixedDelay: 600ms, percent: 100}
    route:
    - destination: {host: reviews}
  - name: rewrite
    match:
    - uri: {prefix: /old}
    rewrite: {uri: /new}
    headers:
      request:
        set: {x-route: rewrite}
        remove: [x-secret]
      response:
        set: {x-served-by: tsunagi}
    route:
    - destination: {host: reviews}
      headers:
        request: {add: {x-dest: reviews}}
  - name: cors
    match:
    - uri: {prefix: /api}
    corsPolicy:
      allowOrigins:
      - exact: https://ok.example
      allowMethods: [GET, POST]
      allowHeaders: [x-custom]
      maxAge: 60s
    route:
    - destination: {host: reviews}
  - name: mirror
    match:
    - uri: {prefix: /mirror}
    mirror: {host: shadow}
    mirrorPercentage: {value: 100}
    route:
    - destination: {host: reviews}
  - route:
    - destination: {host: reviews}
""")


def call(
    client: Workload,
    path: str,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    host: str = "reviews:9080",
) -> tuple[int, dict[str, str], Any]:
    """One request through the client's sidecar: status, lower-cased headers, JSON body
    (or text)."""
    c = http.client.HTTPConnection("127.0.0.1", client.outbound_port, timeout=10)
    try:
        c.request(method, path, headers={"Host": host, **(headers or {})})
        resp = c.getresponse()
        raw = resp.read().decode(errors="replace")
        got = {k.lower(): v for k, v in resp.getheaders()}
    finally:
        c.close()
    try:
        return resp.status, got, json.loads(raw)
    except ValueError:
        return resp.status, got, raw


def seen(client: Workload, service: str) -> list[str]:
    """The paths ``service``'s echo app has received so far."""
    status, _, body = call(client, "/_seen", host=f"{service}:9080")
    assert status == 200, body
    return [r["path"] for r in body["requests"]]


@pytest.fixture
def client(mesh: Mesh) -> Workload:
    mesh.run("reviews", "v1")
    mesh.run("shadow", "v1")
    c = mesh.client()
    result = mesh.apply(FEATURES, "--wait")
    assert result.returncode == 0, result.stderr
    assert "not applied yet" not in result.stderr, result.stderr
    return c


def test_faults_headers_and_rewrite(client: Workload) -> None:
    # Abort: the client gets the injected status and the app never sees the request.
    for _ in range(5):
        status, _, _ = call(client, "/abort/x")
        assert status == 418
    # Delay: the answer comes, and late (a generous lower bound only: Envoy's timer and our
    # clock may disagree by a few ms; an undelayed request here takes a few ms).
    started = time.monotonic()
    status, _, body = call(client, "/delay/x")
    assert (status, body["path"]) == (200, "/delay/x")
    assert time.monotonic() - started >= 0.5
    # Rewrite and header edits: the app sees the new path and headers, the client the
    # response header; the removed header never reaches the app.
    status, headers, body = call(client, "/old/page?q=1", headers={"x-secret": "s", "x-route": "a"})
    assert status == 200
    assert body["path"] == "/new/page?q=1"
    assert body["headers"]["x-route"] == "rewrite"
    assert body["headers"]["x-dest"] == "reviews"
    assert "x-secret" not in body["headers"]
    assert headers["x-served-by"] == "tsunagi"
    # Routes without these features are untouched.
    status, headers, body = call(client, "/plain", headers={"x-secret": "s"})
    assert (status, body["path"], body["headers"]["x-secret"]) == (200, "/plain", "s")
    assert "x-served-by" not in headers and "x-route" not in body["headers"]
    paths = seen(client, "reviews")
    assert not any(p.startswith("/abort") for p in paths), paths
    assert "/delay/x" in paths and "/new/page?q=1" in paths


def test_cors_preflight_answers_allowed_origins_only(client: Workload) -> None:
    preflight = {"Access-Control-Request-Method": "POST"}
    status, headers, _ = call(
        client, "/api/items", "OPTIONS", {"Origin": "https://ok.example", **preflight}
    )
    assert status == 200
    assert headers["access-control-allow-origin"] == "https://ok.example"
    assert headers["access-control-allow-methods"] == "GET,POST"
    assert headers["access-control-allow-headers"] == "x-custom"
    assert headers["access-control-max-age"] == "60"
    status, headers, _ = call(
        client, "/api/items", "OPTIONS", {"Origin": "https://evil.example", **preflight}
    )
    assert "access-control-allow-origin" not in headers
    # A simple request from an allowed origin gets the allow header on the app's answer.
    status, headers, body = call(client, "/api/items", headers={"Origin": "https://ok.example"})
    assert (status, body["service"]) == (200, "reviews")
    assert headers["access-control-allow-origin"] == "https://ok.example"


def test_mirror_copies_to_shadow_and_default_retries_skip_503(client: Workload) -> None:
    for i in range(5):
        status, _, body = call(client, f"/mirror/{i}")
        assert (status, body["service"], body["path"]) == (200, "reviews", f"/mirror/{i}")
    wanted = {f"/mirror/{i}" for i in range(5)}
    wait_until(lambda: wanted <= set(seen(client, "shadow")), 10, "mirrored requests")
    primary = [p for p in seen(client, "reviews") if p.startswith("/mirror")]
    assert primary == sorted(wanted)  # each request once at the primary
    # Istio >= 1.24: the default policy does not retry an app's 503 ...
    status, _, _ = call(client, "/status/503")
    assert status == 503
    assert seen(client, "reviews").count("/status/503") == 1
    # ... while a route that asks for it does (1 try + 2 retries), so the count is real.
    status, _, _ = call(client, "/status/503", headers={"x-retry": "yes"})
    assert status == 503
    assert seen(client, "reviews").count("/status/503") == 4
