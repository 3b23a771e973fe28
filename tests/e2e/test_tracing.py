"""Tracing end to end: real sidecars report spans to the control plane's collector.

A chain client → a → b → c of real apps (tests/e2e/apps/trace_hop.py) that pass the trace
headers on, as Bookinfo's do; b also records a span of its own with the OpenTelemetry SDK.
One request makes one trace: a CLIENT span from each caller's sidecar, a SERVER span from
each callee's, each SERVER span the child of its caller's CLIENT span. Telemetry resources
change what the sidecars do: custom tags, sampling per namespace, access logs per workload.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .mesh import Mesh, Workload, wait_until

HOPS = {"a": "b:9080", "b": "c:9080"}

TELEMETRY = """
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  tracing:
  - customTags:
      team: {literal: {value: shop}}
      user: {header: {name: x-user, defaultValue: anonymous}}
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: no-traces, namespace: quiet}
spec:
  tracing:
  - randomSamplingPercentage: 0
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: c-logs-nothing, namespace: default}
spec:
  selector: {matchLabels: {app: c}}
  accessLogging:
  - disabled: true
"""


@pytest.fixture
def traced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Mesh]:
    """A mesh tracing every request, its Telemetry applied, the chain running."""
    m = Mesh(tmp_path / "state", up_args=("--trace-sampling", "100", "--access-log"))
    monkeypatch.setenv("TRACE_HOPS", json.dumps(HOPS))
    monkeypatch.setenv("TRACE_OTEL_SERVICES", "b")
    monkeypatch.setenv("TRACE_OTLP_ENDPOINT", f"http://127.0.0.1:{m.otlp_port}")
    m.state_dir.mkdir(parents=True)
    m.up()
    try:
        applied = m.apply(TELEMETRY)
        assert applied.returncode == 0, applied.stderr
        for service in ("c", "b", "a"):
            m.run(service, "v1", 9080, "trace_hop.py")
        yield m
    finally:
        m.close()


def trace(mesh: Mesh, trace_id: str) -> list[dict[str, Any]]:
    """The collector's spans of ``trace_id`` (Zipkin v2 JSON; [] while it has none)."""
    c = http.client.HTTPConnection("127.0.0.1", mesh.zipkin_port, timeout=5)
    try:
        c.request("GET", f"/api/v2/trace/{trace_id}")
        resp = c.getresponse()
        body = resp.read()
        return json.loads(body) if resp.status == 200 else []
    finally:
        c.close()


def service_of(span: dict[str, Any]) -> str:
    """Which sidecar made a span: Istio's ``istio.canonical_service`` tag; the app's own
    spans carry their SDK service name instead."""
    tags = span.get("tags") or {}
    return tags.get("istio.canonical_service") or span["localEndpoint"]["serviceName"]


def call_chain(
    client: Workload, headers: dict[str, str] | None = None, host: str = "a:9080"
) -> dict[str, Any]:
    status, body = client.get(host, "/", headers)
    assert status == 200, body
    assert isinstance(body, dict)
    assert body["next"]["status"] == 200 and body["next"]["body"]["next"]["status"] == 200
    return body


def test_one_request_one_trace_every_sidecar_parented_and_tagged(traced: Mesh) -> None:
    client = traced.client()
    answer = call_chain(client, {"x-user": "alice"})
    trace_id = answer["seen"]["x-b3-traceid"]
    # all three apps saw the same trace, in B3 and in W3C
    b = answer["next"]["body"]
    c = b["next"]["body"]
    for seen in (answer["seen"], b["seen"], c["seen"]):
        assert seen["x-b3-traceid"] == trace_id
        assert seen["traceparent"].split("-")[1] == trace_id
        assert seen["x-request-id"] == answer["seen"]["x-request-id"]

    # client, a and b call out: 3 CLIENT spans; a, b and c answer: 3 SERVER spans; and b's
    # own span.
    def complete() -> list[dict[str, Any]]:
        spans = trace(traced, trace_id)
        return spans if len(spans) >= 7 else []

    wait_until(complete, timeout=45, what=f"all 7 spans of trace {trace_id}")
    spans = complete()
    assert len(spans) == 7, json.dumps(spans, indent=1)
    assert {s["traceId"] for s in spans} == {trace_id}
    by_id = {s["id"]: s for s in spans}
    kinds = {(service_of(s), s.get("kind")) for s in spans}
    assert kinds == {
        ("client", "CLIENT"),
        ("a", "SERVER"),
        ("a", "CLIENT"),
        ("b", "SERVER"),
        ("b", "CLIENT"),
        ("c", "SERVER"),
        ("b-app", None),  # the SDK's INTERNAL span: Zipkin leaves kind out
    }, kinds
    roots = [s for s in spans if not s.get("parentId")]
    assert [(service_of(s), s["kind"]) for s in roots] == [("client", "CLIENT")]
    # each hop: the callee's SERVER span is the child of the caller's CLIENT span
    for caller, callee in (("client", "a"), ("a", "b"), ("b", "c")):
        [server] = [s for s in spans if service_of(s) == callee and s["kind"] == "SERVER"]
        parent = by_id[server["parentId"]]
        assert (service_of(parent), parent["kind"]) == (caller, "CLIENT")
    # the caller's CLIENT span is the child of its own SERVER span (its app passed it on)
    for hop in ("a", "b"):
        [out] = [s for s in spans if service_of(s) == hop and s.get("kind") == "CLIENT"]
        assert by_id[out["parentId"]]["kind"] == "SERVER"
        assert service_of(by_id[out["parentId"]]) == hop
    # the ids the apps saw are the ids the collector keeps
    for hop, answered in (("a", answer), ("b", b), ("c", c)):
        [server] = [s for s in spans if service_of(s) == hop and s["kind"] == "SERVER"]
        assert server["id"] == answered["seen"]["x-b3-spanid"]
    # b's own span continues the W3C context its sidecar handed it
    [app] = [s for s in spans if service_of(s) == "b-app"]
    assert app["id"] == b["app_span"]
    parent = by_id[app["parentId"]]
    assert (service_of(parent), parent["kind"]) == ("b", "SERVER")
    # Telemetry customTags and Istio's tags on every sidecar span
    for s in spans:
        if s.get("kind"):
            assert s["tags"]["team"] == "shop"
            assert s["tags"]["user"] == "alice"
            assert s["tags"]["istio.namespace"] == "default"


def test_a_namespace_with_sampling_zero_starts_no_traces(traced: Mesh) -> None:
    quiet = traced.run("quiet-client", "v1", 80, "idle.py", False, "--namespace", "quiet")
    loud = traced.client()
    untraced = call_chain(quiet, host="a.default.svc.cluster.local:9080")["seen"]["x-b3-traceid"]
    # B3 still flows (Envoy propagates the decision "not sampled") ...
    traced_id = call_chain(loud)["seen"]["x-b3-traceid"]
    assert untraced != traced_id
    # ... and every sidecar of the chain reports its spans in order: once the later,
    # sampled request's spans from a, b and c are in, the earlier one's would be too.
    wait_until(lambda: len(trace(traced, traced_id)) >= 7, timeout=45, what="the sampled trace")
    assert trace(traced, untraced) == []


def _access_logs(w: Workload) -> list[dict[str, Any]]:
    """The access loggers on the proxy's HTTP listeners, from its own config dump."""
    dump = json.loads(w.envoy_admin("/config_dump?resource=dynamic_listeners"))
    out = []
    for entry in dump["configs"]:
        listener = entry["active_state"]["listener"]
        for chain in listener.get("filter_chains", []):
            for f in chain["filters"]:
                out += f["typed_config"].get("access_log", [])
    return out


def test_access_logging_disabled_for_one_workload(traced: Mesh) -> None:
    [a] = [w for w in traced.workloads if w.name.startswith("a-")]
    [c] = [w for w in traced.workloads if w.name.startswith("c-")]
    # Istio's access log goes to the sidecar's output; the file logger feeds the metrics
    user_log = "envoy.access_loggers.stdout"

    def names(w: Workload) -> list[str]:
        return [log["name"] for log in _access_logs(w)]

    assert user_log in names(a), names(a)
    assert user_log not in names(c), names(c)


def test_get_telemetries(traced: Mesh) -> None:
    for kind in ("telemetry", "telemetries"):
        got = traced.cli("get", kind)
        assert got.returncode == 0, got.stderr
        for name in ("mesh-default", "no-traces", "c-logs-nothing"):
            assert name in got.stdout
