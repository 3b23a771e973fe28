"""A real Prometheus (Debian's ``/usr/bin/prometheus``) runs the ``prometheus.yml`` that
``tsunagi up`` wrote, as is, and finds everything through ``/v1/prometheus/targets``: the
control plane's ``pilot_*`` metrics, and the sidecars' Istio metrics answering the queries of
Istio's standard Grafana dashboards (istio/istio ``manifests/addons/dashboards``).
"""

from __future__ import annotations

import http.client
import json
import shutil
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from .mesh import Background, Mesh, Workload, free_port, request, stop, wait_until

pytestmark = pytest.mark.e2e

# Bounds, not measurements: Prometheus scrapes every 5 s and discovers every 5 s.
_BOUND = 90.0


def prometheus_binary() -> str:
    """Debian's prometheus; a clear failure when missing (``make tools`` installs it)."""
    path = shutil.which("prometheus")
    if path is not None:
        return path
    if shutil.which("apt-get") is None:
        pytest.skip("prometheus is not installed and apt-get is not available to install it")
    pytest.fail(
        "prometheus is not installed: run `make tools` (or `apt-get install prometheus`); "
        "this test runs /usr/bin/prometheus against a live mesh"
    )


@dataclass
class Prometheus:
    """A running Prometheus and its HTTP API."""

    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    def get(self, path: str, **params: str) -> Any:
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            query = urllib.parse.urlencode(params)
            c.request("GET", f"{path}?{query}" if query else path)
            resp = c.getresponse()
            body = resp.read()
            assert resp.status == 200, (resp.status, body[:500])
            return json.loads(body)
        finally:
            c.close()

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query now: the result vector (``metric`` labels, ``value``)."""
        answer = self.get("/api/v1/query", query=promql)
        assert answer["status"] == "success", answer
        return list(answer["data"]["result"])

    def scalar(self, promql: str) -> float | None:
        """The one value of a query that yields one series (None when it yields none)."""
        result = self.query(promql)
        assert len(result) <= 1, result
        return float(result[0]["value"][1]) if result else None

    def targets(self, job: str) -> list[dict[str, Any]]:
        active = self.get("/api/v1/targets", state="active")["data"]["activeTargets"]
        return [t for t in active if t["labels"].get("job") == job]

    def up(self, job: str, **labels: str) -> bool:
        """Whether a target of ``job`` with ``labels`` has been scraped successfully."""
        return any(
            t["health"] == "up" and all(t["labels"].get(k) == v for k, v in labels.items())
            for t in self.targets(job)
        )

    def logs(self) -> str:
        return self.log.read_text()[-3000:] if self.log.exists() else ""


@pytest.fixture
def prometheus(mesh: Mesh, tmp_path: Path) -> Iterator[Prometheus]:
    binary = prometheus_binary()
    config = mesh.state_dir / "prometheus.yml"
    assert config.exists(), "tsunagi up wrote no prometheus.yml"
    port = free_port()
    log = tmp_path / "prometheus.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [
                binary,
                "--config.file",
                str(config),
                "--storage.tsdb.path",
                str(tmp_path / "tsdb"),
                "--web.listen-address",
                f"127.0.0.1:{port}",
            ],
            stdout=out,
            stderr=out,
        )
    prom = Prometheus(proc, port, log)
    try:

        def ready() -> bool:
            assert proc.poll() is None, "prometheus exited:\n" + prom.logs()
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                c.request("GET", "/-/ready")
                return c.getresponse().status == 200
            except OSError:
                return False

        wait_until(ready, 60, "prometheus to be ready")
        yield prom
    finally:
        stop(proc)


def test_prometheus_scrapes_the_control_plane_with_the_written_config(
    mesh: Mesh, prometheus: Prometheus
) -> None:
    wait_until(
        lambda: prometheus.up("tsunagi-control-plane", app="istiod"),
        _BOUND,
        "the control plane target to be up in Prometheus",
    )
    (target,) = prometheus.targets("tsunagi-control-plane")
    assert target["scrapeUrl"] == f"http://127.0.0.1:{mesh.api_port}/metrics"
    assert target["labels"]["namespace"] == "istio-system"

    mesh.run("echo", "v1")
    vs = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo}
spec:
  hosts: [echo]
  http:
  - timeout: 7s
    route:
    - destination: {host: echo}
"""
    assert mesh.apply(vs, "--wait").returncode == 0

    # What istiod's dashboard and alerts query, as Prometheus stored it.
    for promql in [
        'sum(pilot_xds{job="tsunagi-control-plane"}) == 1',
        'pilot_k8s_cfg_events{type="VirtualService",event="add"} == 1',
        'pilot_k8s_reg_events{type="WorkloadInstance",event="add"} == 1',
        "pilot_virt_services == 1",
        'count(istio_build{component="pilot"}) == 1',
        # The echo instance's registration and the apply reached the connected proxy,
        # which ACKed them: convergence times were observed.
        "pilot_proxy_convergence_time_count >= 1",
    ]:
        wait_until(lambda q=promql: prometheus.scalar(q) is not None, _BOUND, promql)
    pushes = prometheus.query("sum by (type) (pilot_xds_pushes)")
    assert {r["metric"]["type"] for r in pushes} >= {"cds", "eds", "lds", "rds"}
    # Over every push so far (a rate() would need two scrapes of each series).
    quantile = prometheus.scalar(
        "histogram_quantile(0.99, sum(pilot_xds_push_time_bucket) by (le))"
    )
    assert quantile is not None and 0 < quantile <= 30
    assert prometheus.scalar("sum(pilot_total_xds_rejects)") is None  # nothing was rejected


def test_with_os_chosen_ports_the_config_names_the_bound_port(tmp_path: Path) -> None:
    m = Mesh(tmp_path / "state")
    m.state_dir.mkdir(parents=True)
    cmd = m.up_command()
    for i, arg in enumerate(cmd[:-1]):
        if arg.startswith("--") and arg.endswith("-port"):
            cmd[i + 1] = "0"  # every listening port: the OS chooses
    with (m.state_dir / "control-plane.log").open("ab") as log:
        proc = subprocess.Popen(cmd, env=m.env, stdout=log, stderr=log)
    try:
        server = m.state_dir / "server"
        wait_until(lambda: proc.poll() is None and server.exists(), 30, "tsunagi up to start")
        api_url = server.read_text().strip()
        wait_until(lambda: (m.state_dir / "prometheus.yml").exists(), 30, "prometheus.yml")
        cfg = yaml.safe_load((m.state_dir / "prometheus.yml").read_text())
        urls = {sd["url"] for job in cfg["scrape_configs"] for sd in job["http_sd_configs"]}
        assert urls == {api_url + "/v1/prometheus/targets"}
        port = int(api_url.rsplit(":", 1)[1])
        assert port != 0
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        c.request("GET", "/v1/prometheus/targets", headers={"Authorization": f"Bearer {m.token()}"})
        groups = json.loads(c.getresponse().read())
        c.close()
        assert groups[0]["targets"] == [f"127.0.0.1:{port}"]
    finally:
        stop(proc)


# ----------------------------------------------------------------------------- Istio's metrics


class Mixed(Background):
    """Requests to ``host`` through ``client``'s sidecar, every ``fail_every``-th to
    ``/status/503`` (0: never), until stopped."""

    def __init__(self, client: Workload, host: str, fail_every: int = 0) -> None:
        super().__init__(limit=_BOUND * 2)
        self.client, self.host, self.fail_every = client, host, fail_every
        self.statuses: list[int] = []

    def step(self) -> None:
        n = len(self.statuses) + 1
        path = "/status/503" if self.fail_every and n % self.fail_every == 0 else "/"
        status, _ = request(self.client.outbound_port, self.host, path)
        self.statuses.append(status)
        time.sleep(0.02)


SERVICE = "echo.default.svc.cluster.local"
FLAKY = "flaky.default.svc.cluster.local"
# $qrep of Istio's dashboards: both reporters ("source|destination") or the server's.
QREP = "source|destination"


def latency_queries(sel: str) -> dict[str, str]:
    """The P50/P90/P99 panels both dashboards share (milliseconds, or Istio's older seconds
    histogram)."""
    return {
        f"p{q[2:]}": (
            f"(histogram_quantile({q}, sum(irate(istio_request_duration_milliseconds_bucket"
            f"{{{sel}}}[1m])) by (le)) / 1000) or histogram_quantile({q}, "
            f"sum(irate(istio_request_duration_seconds_bucket{{{sel}}}[1m])) by (le))"
        )
        for q in ("0.50", "0.90", "0.99")
    }


def service_queries(service: str) -> dict[str, str]:
    """Istio's service dashboard (istio-service-dashboard.json), $__rate_interval = 1m."""
    sel = f'reporter=~"{QREP}",destination_service="{service}"'
    out = {
        "volume": f"round(sum(irate(istio_requests_total{{{sel}}}[1m])), 0.001)",
        "success": f'sum(irate(istio_requests_total{{{sel},response_code!~"5.*"}}[1m])) / '
        f"(sum(irate(istio_requests_total{{{sel}}}[1m])) or on () vector(1))",
    }
    return out | latency_queries(sel)


def workload_queries(namespace: str, workload: str) -> dict[str, str]:
    """Istio's workload dashboard (istio-workload-dashboard.json): incoming requests."""
    sel = (
        f'reporter=~"{QREP}",destination_workload_namespace=~"{namespace}",'
        f'destination_workload=~"{workload}"'
    )
    out = {
        "volume": f"round(sum(irate(istio_requests_total{{{sel}}}[5m])), 0.001)",
        "success": f'sum(irate(istio_requests_total{{{sel},response_code!~"5.*"}}[5m])) / '
        f"sum(irate(istio_requests_total{{{sel}}}[5m]))",
    }
    return out | latency_queries(sel)


def _check_panels(values: dict[str, float | None], success: str) -> None:
    assert values["volume"] is not None and values["volume"] > 0, values
    if success == "all":
        assert values["success"] == 1.0, values
    else:
        assert values["success"] is not None and 0 < values["success"] < 1, values
    p50, p90, p99 = values["p50"], values["p90"], values["p99"]
    # Seconds; a loopback echo answers in milliseconds, so well under Envoy's 15 s timeout.
    assert p50 is not None and p90 is not None and p99 is not None, values
    assert 0 < p50 <= p90 <= p99 < 15, values


def test_istio_requests_and_the_dashboards_queries(mesh: Mesh, prometheus: Prometheus) -> None:
    mesh.run("echo", "v1")
    mesh.run("flaky", "v1")
    client = mesh.client()
    for pod_prefix in ("echo-v1-", "flaky-v1-"):
        wait_until(
            lambda prefix=pod_prefix: any(
                t["health"] == "up" and t["labels"].get("pod", "").startswith(prefix)
                for t in prometheus.targets("envoy-stats")
            ),
            _BOUND,
            f"the sidecar target {pod_prefix}* to be up in Prometheus",
        )
    (echo_target,) = [
        t for t in prometheus.targets("envoy-stats") if t["labels"]["pod"].startswith("echo-")
    ]
    assert echo_target["labels"]["app"] == "echo" and echo_target["labels"]["version"] == "v1"
    assert echo_target["labels"]["namespace"] == "default"
    assert echo_target["scrapeUrl"].endswith("/stats/prometheus")

    # The count a user would check: exactly the requests sent, reported by the server side.
    sent = 37
    for _ in range(sent):
        assert client.get("echo:9080")[0] == 200
    count = 'sum(istio_requests_total{destination_service_name="echo", reporter="destination"})'
    wait_until(lambda: (prometheus.scalar(count) or 0) >= sent, _BOUND, f"{count} to reach {sent}")
    assert prometheus.scalar(count) == sent
    (series,) = prometheus.query(
        "sum by (destination_workload, destination_workload_namespace, destination_app, "
        'destination_version, response_code) (istio_requests_total{destination_service_name="echo"'
        ', reporter="destination"})'
    )
    labels = series["metric"]
    assert labels["destination_app"] == "echo" and labels["destination_version"] == "v1"
    assert labels["destination_workload_namespace"] == "default"
    assert labels["response_code"] == "200"
    workload = labels["destination_workload"]
    assert workload not in ("", "unknown")

    # The dashboards' panels while traffic flows (irate reads the last two scrapes).
    with Mixed(client, "echo:9080") as ok, Mixed(client, "flaky:9080", fail_every=4) as flaky:
        panels = {
            "service echo": (service_queries(SERVICE), "all"),
            "service flaky": (service_queries(FLAKY), "some"),
            "workload echo": (workload_queries("default", workload), "all"),
        }
        results: dict[str, dict[str, float | None]] = {}

        def answered() -> bool:
            for name, (queries, _) in panels.items():
                results[name] = {k: prometheus.scalar(q) for k, q in queries.items()}
                if results[name]["volume"] in (None, 0.0):
                    return False
                if name == "service flaky" and results[name]["success"] in (None, 1.0):
                    return False  # no 503 in the last scrape interval yet
            return True

        wait_until(answered, _BOUND, "the dashboards' queries to see the traffic")
    assert ok.statuses and set(ok.statuses) == {200}
    assert set(flaky.statuses) == {200, 503}
    for name, (_, success) in panels.items():
        _check_panels(results[name], success)
