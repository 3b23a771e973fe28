"""The trace collector in a real ``tsunagi up``: Zipkin's v2 API over HTTP (JSON and
protobuf in, every query route out), OTLP/gRPC from an app using the real OpenTelemetry SDK,
and ``--trace-export`` to a second control plane over Zipkin and over OTLP."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tsunagi.telemetry import zipkin_proto
from tsunagi.telemetry.spans import Endpoint, Span

from .mesh import APPS, Mesh, free_port, stop, wait_until

pytestmark = pytest.mark.e2e

TRACE_64 = "5af7183fb1d4cf5f"
TRACE_128 = "463ac35c9f6413ad48485a3953bb6124"


def zipkin(
    mesh: Mesh, method: str, path: str, body: bytes | None = None, ctype: str = ""
) -> tuple[int, Any]:
    """One request to the mesh's Zipkin port; JSON answers decoded, others as text."""
    conn = http.client.HTTPConnection("127.0.0.1", mesh.zipkin_port, timeout=10)
    try:
        conn.request(method, path, body, {"Content-Type": ctype} if ctype else {})
        r = conn.getresponse()
        data = r.read()
        if r.getheader("content-type", "").startswith("application/json"):
            return r.status, json.loads(data)
        return r.status, data.decode()
    finally:
        conn.close()


def now_us() -> int:
    return time.time_ns() // 1000


def json_spans() -> list[dict[str, Any]]:
    """A two-hop trace as two sidecars would report it (Envoy's Zipkin JSON)."""
    t = now_us() - 10_000_000
    return [
        {
            "traceId": TRACE_64,
            "id": "1000000000000001",
            "kind": "SERVER",
            "name": "productpage.default.svc.cluster.local:9080/*",
            "timestamp": t,
            "duration": 30_000,
            "localEndpoint": {"serviceName": "productpage", "ipv4": "127.0.0.1", "port": 9080},
            "tags": {"http.method": "GET", "http.status_code": "200"},
        },
        {
            "traceId": TRACE_64,
            "parentId": "1000000000000001",
            "id": "1000000000000002",
            "kind": "CLIENT",
            "name": "reviews.default.svc.cluster.local:9080/*",
            "timestamp": t + 1000,
            "duration": 20_000,
            "localEndpoint": {"serviceName": "productpage"},
            "remoteEndpoint": {"serviceName": "reviews", "port": 9080},
            "tags": {"http.status_code": "503", "error": "true"},
        },
    ]


def proto_span() -> Span:
    """A third service, sent as Envoy's HTTP_PROTO would, in a 128-bit trace."""
    return Span(
        trace_id=TRACE_128,
        id="2000000000000001",
        name="ratings",
        kind="SERVER",
        timestamp=now_us() - 1_000_000,  # 9 s after json_spans()
        duration=500,
        local_endpoint=Endpoint("ratings", "127.0.0.1", "", 9080),
    )


def test_zipkin_json_and_protobuf_in_every_query_route_out(mesh: Mesh) -> None:
    status, _ = zipkin(
        mesh, "POST", "/api/v2/spans", json.dumps(json_spans()).encode(), "application/json"
    )
    assert status == 202
    status, _ = zipkin(
        mesh, "POST", "/api/v2/spans", zipkin_proto.encode([proto_span()]), "application/x-protobuf"
    )
    assert status == 202

    assert zipkin(mesh, "GET", "/api/v2/services") == (200, ["productpage", "ratings"])
    assert zipkin(mesh, "GET", "/api/v2/spans?serviceName=productpage") == (
        200,
        [
            "productpage.default.svc.cluster.local:9080/*",
            "reviews.default.svc.cluster.local:9080/*",
        ],
    )
    assert zipkin(mesh, "GET", "/api/v2/remoteServices?serviceName=productpage") == (
        200,
        ["reviews"],
    )

    status, trace = zipkin(mesh, "GET", f"/api/v2/trace/{TRACE_64}")
    assert status == 200
    assert [(s["id"], s.get("parentId")) for s in trace] == [
        ("1000000000000001", None),
        ("1000000000000002", "1000000000000001"),
    ]
    assert trace[1]["remoteEndpoint"] == {"serviceName": "reviews", "port": 9080}
    assert trace[1]["tags"]["error"] == "true"
    # The same 64-bit trace, asked for in its 128-bit form with a zero upper half.
    assert zipkin(mesh, "GET", f"/api/v2/trace/{TRACE_64:0>32}")[1] == trace

    status, [ratings] = zipkin(mesh, "GET", f"/api/v2/trace/{TRACE_128}")
    assert status == 200
    assert ratings["localEndpoint"] == {"serviceName": "ratings", "ipv4": "127.0.0.1", "port": 9080}
    # Strict trace ids (Zipkin's default): the lower 64 bits alone are another trace.
    assert zipkin(mesh, "GET", f"/api/v2/trace/{TRACE_128[16:]}")[0] == 404

    def trace_ids(query: str) -> list[str]:
        status, traces = zipkin(mesh, "GET", "/api/v2/traces" + query)
        assert status == 200, traces
        return [t[0]["traceId"] for t in traces]

    assert trace_ids("") == [TRACE_128, TRACE_64]  # newest first
    assert trace_ids("?limit=1") == [TRACE_128]
    assert trace_ids("?serviceName=productpage") == [TRACE_64]
    assert trace_ids(
        "?serviceName=ProductPage&spanName=reviews.default.svc.cluster.local:9080/*"
    ) == [TRACE_64]
    assert trace_ids("?serviceName=ratings&spanName=reviews.default.svc.cluster.local:9080/*") == []
    assert trace_ids("?minDuration=25000") == [TRACE_64]
    assert trace_ids("?minDuration=100&maxDuration=1000") == [TRACE_128]
    assert trace_ids("?annotationQuery=error") == [TRACE_64]
    assert trace_ids("?annotationQuery=http.status_code%3D503") == [TRACE_64]
    assert trace_ids("?lookback=500") == []  # both started a second or more ago
    end_ts = (now_us() - 5_000_000) // 1000  # between the two traces
    assert trace_ids(f"?endTs={end_ts}&lookback=60000") == [TRACE_64]

    assert zipkin(mesh, "GET", "/api/v2/trace/0123456789abcdef")[0] == 404


def test_bad_input_is_refused_with_a_reason_and_stores_nothing(mesh: Mesh) -> None:
    good = json_spans()[0]
    bad = {**good, "id": "2000000000000002", "traceId": "not-hex"}
    status, text = zipkin(
        mesh, "POST", "/api/v2/spans", json.dumps([good, bad]).encode(), "application/json"
    )
    assert status == 400
    assert "spans[1].traceId" in text
    status, text = zipkin(
        mesh, "POST", "/api/v2/spans", b"\x0a\x05\x0a\x03abc", "application/x-protobuf"
    )
    assert status == 400
    assert "spans[0].trace_id: expected 8 or 16 bytes" in text
    status, text = zipkin(
        mesh, "POST", "/api/v2/spans?span_id_byte_order=middle", b"", "application/x-protobuf"
    )
    assert (status, "span_id_byte_order must be big or little" in text) == (400, True)
    assert zipkin(mesh, "GET", "/api/v2/services") == (200, [])
    assert zipkin(mesh, "GET", f"/api/v2/trace/{TRACE_64}")[0] == 404

    status, text = zipkin(mesh, "GET", "/api/v2/spans")
    assert (status, "serviceName is required" in text) == (400, True)
    status, text = zipkin(mesh, "GET", "/api/v2/traces?maxDuration=5")
    assert (status, "only valid with minDuration" in text) == (400, True)
    status, text = zipkin(mesh, "GET", "/api/v2/traces?limit=ten")
    assert (status, "limit: 'ten' is not an integer" in text) == (400, True)


@pytest.fixture
def otel_app(mesh: Mesh, tmp_path: Path) -> Iterator[int]:
    """The OpenTelemetry SDK app, exporting to the mesh's OTLP port; yields its port."""
    port = free_port()
    env = {
        **mesh.env,
        "PORT": str(port),
        "OTEL_SERVICE_NAME": "checkout",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{mesh.otlp_port}",
    }
    log = (tmp_path / "otel_app.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, str(APPS / "otel_app.py")], env=env, stdout=log, stderr=log
    )
    try:
        wait_until(lambda: _get(port, "/healthz", {}) is not None, what="the OTel app")
        yield port
    finally:
        stop(proc)


def _get(port: int, path: str, headers: dict[str, str]) -> dict[str, Any] | None:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", path, headers=headers)
        body = conn.getresponse().read()
        conn.close()
        return dict(json.loads(body))
    except OSError:
        return None


def test_an_opentelemetry_sdk_app_joins_the_sidecars_trace(mesh: Mesh, otel_app: int) -> None:
    # The sidecar's span, as Envoy reports it (64-bit trace id) ...
    sidecar = json_spans()[0]
    assert (
        zipkin(mesh, "POST", "/api/v2/spans", json.dumps([sidecar]).encode(), "application/json")[0]
        == 202
    )
    # ... and the W3C context it passes to the app (128 bits, zero upper half).
    traceparent = f"00-{TRACE_64:0>32}-{sidecar['id']}-01"
    answer = _get(otel_app, "/fail", {"traceparent": traceparent})
    assert answer is not None and answer["trace_id"] == f"{TRACE_64:0>32}"

    def trace() -> list[dict[str, Any]]:
        status, spans = zipkin(mesh, "GET", f"/api/v2/trace/{TRACE_64}")
        return spans if status == 200 and len(spans) == 3 else []

    wait_until(trace, timeout=30, what="the app's spans in the trace")
    by_id = {s["id"]: s for s in trace()}
    server, work = by_id[answer["server_span"]], by_id[answer["work_span"]]
    assert server["parentId"] == sidecar["id"]
    assert server["kind"] == "SERVER"
    assert server["name"] == "get /fail"
    assert server["localEndpoint"] == {"serviceName": "checkout"}
    assert work["parentId"] == answer["server_span"]
    assert "kind" not in work  # INTERNAL is a local span in Zipkin
    assert work["tags"]["error"] == "out of stock"
    assert work["tags"]["items"] == "3"
    assert work["tags"]["otel.scope.name"] == "otel_app"
    assert zipkin(mesh, "GET", "/api/v2/services")[1] == ["checkout", "productpage"]
    _, traces = zipkin(mesh, "GET", "/api/v2/traces?serviceName=checkout&spanName=work")
    assert [t[0]["traceId"] for t in traces] == [TRACE_64]


@pytest.mark.parametrize("protocol", ["zipkin", "otlp"])
def test_trace_export_forwards_every_span(tmp_path: Path, protocol: str) -> None:
    receiver = Mesh(tmp_path / "receiver")
    receiver.state_dir.mkdir(parents=True)
    receiver.up()
    url = (
        f"http://127.0.0.1:{receiver.zipkin_port}/api/v2/spans"
        if protocol == "zipkin"
        else f"otlp://127.0.0.1:{receiver.otlp_port}"
    )
    sender = Mesh(tmp_path / "sender", up_args=("--trace-export", url))
    sender.state_dir.mkdir(parents=True)
    try:
        sender.up()
        spans = json_spans()
        assert (
            zipkin(sender, "POST", "/api/v2/spans", json.dumps(spans).encode(), "application/json")[
                0
            ]
            == 202
        )

        def forwarded() -> list[dict[str, Any]]:
            status, got = zipkin(receiver, "GET", f"/api/v2/trace/{TRACE_64}")
            return got if status == 200 and len(got) == 2 else []

        wait_until(forwarded, timeout=30, what=f"spans exported over {protocol}")
        got = forwarded()
        assert [(s["id"], s.get("parentId"), s["kind"]) for s in got] == [
            (s["id"], s.get("parentId"), s["kind"]) for s in spans
        ]
        assert [s["localEndpoint"]["serviceName"] for s in got] == ["productpage"] * 2
        assert got[1]["tags"]["http.status_code"] == "503"
        # The sender keeps its own copy too.
        assert zipkin(sender, "GET", f"/api/v2/trace/{TRACE_64}")[0] == 200
        assert "trace collector" in sender.log() and url.split("//")[1] in sender.log()
    finally:
        sender.close()
        receiver.close()


def test_bad_export_url_is_a_usage_error(tmp_path: Path) -> None:
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "tsunagi.cli.main",
            "up",
            "--state-dir",
            str(tmp_path),
            "--trace-export",
            "collector:4317",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ},
    )
    assert r.returncode == 2
    assert "otlp://HOST:4317" in r.stderr


def _envoy_bootstrap(listen_port: int, zipkin_port: int, version: str, endpoint: str) -> dict:
    """A bare Envoy whose one listener traces every request with Envoy's Zipkin tracer."""
    tracer = {
        "name": "envoy.tracers.zipkin",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.config.trace.v3.ZipkinConfig",
            "collector_cluster": "zipkin",
            "collector_endpoint": endpoint,
            "collector_endpoint_version": version,
            "shared_span_context": False,
        },
    }
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager"
        ".v3.HttpConnectionManager",
        "stat_prefix": "in",
        "tracing": {"random_sampling": {"value": 100}, "provider": tracer},
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [
                        {
                            "match": {"prefix": "/"},
                            "direct_response": {"status": 200, "body": {"inline_string": "ok"}},
                        }
                    ],
                }
            ]
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            }
        ],
    }
    address = {"socket_address": {"address": "127.0.0.1", "port_value": zipkin_port}}
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        # Send each span at once instead of every 5 s.
        "layered_runtime": {
            "layers": [{"name": "static", "static_layer": {"tracing.zipkin.min_flush_spans": 1}}]
        },
        "static_resources": {
            "listeners": [
                {
                    "name": "in",
                    "address": {
                        "socket_address": {"address": "127.0.0.1", "port_value": listen_port}
                    },
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": hcm,
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": [
                {
                    "name": "zipkin",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "load_assignment": {
                        "cluster_name": "zipkin",
                        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}],
                    },
                }
            ],
        },
    }


@pytest.mark.parametrize(
    ("version", "endpoint"),
    [
        ("HTTP_JSON", "/api/v2/spans"),
        ("HTTP_PROTO", "/api/v2/spans?span_id_byte_order=little"),
    ],
)
def test_real_envoy_spans_keep_the_ids_the_app_sees(
    mesh: Mesh, tmp_path: Path, version: str, endpoint: str
) -> None:
    from tsunagi.agent.envoy import envoy_binary

    port = free_port()
    config = tmp_path / "envoy.json"
    config.write_text(json.dumps(_envoy_bootstrap(port, mesh.zipkin_port, version, endpoint)))
    log = (tmp_path / "envoy.log").open("ab")
    envoy = subprocess.Popen(
        [envoy_binary(), "-c", str(config), "--use-dynamic-base-id", "--service-cluster",
         "frontend", "-l", "warning"],
        stdout=log, stderr=log,
    )  # fmt: skip
    try:
        caller = "0102030405060708"  # the calling span, as the B3 headers name it
        headers = {"x-b3-traceid": TRACE_128, "x-b3-spanid": caller, "x-b3-sampled": "1"}

        def answered() -> bool:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/hello", headers=headers)
                ok = conn.getresponse().status == 200
                conn.close()
                return ok
            except OSError:
                return False

        wait_until(answered, what="Envoy to answer")

        def stored() -> list[dict[str, Any]]:
            status, spans = zipkin(mesh, "GET", f"/api/v2/trace/{TRACE_128}")
            return spans if status == 200 else []

        wait_until(stored, timeout=30, what=f"Envoy's {version} spans")
        span = stored()[0]
        assert span["traceId"] == TRACE_128
        assert span["parentId"] == caller  # what an app continuing the trace links to
        assert span["kind"] == "SERVER"
        assert span["localEndpoint"]["serviceName"] == "frontend"
        assert span["tags"]["http.url"].endswith("/hello")
    finally:
        stop(envoy)
