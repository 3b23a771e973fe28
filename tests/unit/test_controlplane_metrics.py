"""The control plane's ``pilot_*`` metrics: what a real ADS stream and the API make them say,
read from the text Prometheus would scrape; and Prometheus discovery (``/v1/prometheus/
targets``, ``prometheus.yml`` checked by Prometheus' own ``promtool``)."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2

from tsunagi.controlplane.http_api import Api
from tsunagi.controlplane.metrics import ControlPlaneMetrics
from tsunagi.controlplane.prometheus import config, host_port, targets, write_config
from tsunagi.controlplane.push import Pusher
from tsunagi.registry import Instance, Registry
from tsunagi.store import MemoryStore
from tsunagi.xds.cache import NodeEntry, SnapshotCache
from tsunagi.xds.protocol import Ack, Nack, StaleNonce, TypeStatus
from tsunagi.xds.resources import CLUSTER, LISTENER, Snapshot
from tsunagi.xds.server import start_server

from .examples import instance_document
from .test_xds_protocol import world

_SOTW = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
_BOUND = 30.0
TOKEN = "test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def value(text: str, series: str) -> float | None:
    """The value of ``series`` (name and labels exactly as exposed) in exposition ``text``."""
    match = re.search(rf"^{re.escape(series)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else None


# ----------------------------------------------------------------------------- a real stream


@pytest.fixture
async def ads() -> AsyncIterator[tuple[int, ControlPlaneMetrics, SnapshotCache]]:
    metrics = ControlPlaneMetrics()
    cache = SnapshotCache()
    snap = world(clusters=("a",))
    cache.resolver = lambda node_id, metadata, verified, proven: snap
    server, port = await start_server(cache, "127.0.0.1", 0, observer=metrics)
    try:
        yield port, metrics, cache
    finally:
        await server.stop(None)


def _node(node_id: str) -> base_pb2.Node:
    node = base_pb2.Node(id=node_id, cluster="svc")
    v = node.user_agent_build_version.version
    v.major_number, v.minor_number, v.patch = 1, 40, 2
    return node


async def test_a_stream_is_counted_as_istiod_counts_it(
    ads: tuple[int, ControlPlaneMetrics, SnapshotCache],
) -> None:
    port, metrics, cache = ads
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.stream_stream(
            _SOTW,
            request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString,
            response_deserializer=discovery_pb2.DiscoveryResponse.FromString,
        )()
        async with asyncio.timeout(_BOUND):
            await call.write(discovery_pb2.DiscoveryRequest(type_url=CLUSTER, node=_node("p1")))
            cds = await call.read()
            # The server counts a push once its write returned, which can be after the
            # client read it.
            while not value(metrics.render().decode(), 'pilot_xds_pushes{type="cds"}'):
                await asyncio.sleep(0.01)
            text = metrics.render().decode()
            assert value(text, 'pilot_xds{version="1.40.2"}') == 1.0
            assert value(text, 'pilot_xds_pushes{type="cds"}') == 1.0
            assert value(text, 'pilot_xds_push_time_count{type="cds"}') == 1.0
            assert "pilot_total_xds_rejects" not in text  # no series until there is one

            # Envoy rejects the clusters; then answers a nonce the server never sent.
            nack = discovery_pb2.DiscoveryRequest(type_url=CLUSTER, response_nonce=cds.nonce)
            nack.error_detail.message = "bad cluster"
            await call.write(nack)
            await call.write(discovery_pb2.DiscoveryRequest(type_url=CLUSTER, response_nonce="x"))
            while not value(metrics.render().decode(), 'pilot_xds_expired_nonce{type="cds"}'):
                await asyncio.sleep(0.01)
            text = metrics.render().decode()
            assert value(text, 'pilot_total_xds_rejects{type="cds"}') == 1.0
            assert "# TYPE pilot_total_xds_rejects counter" in text
            assert "_total{" not in text.split("pilot_xds_pushes", 1)[1]  # istiod's names
            call.cancel()
            while cache.nodes:
                await asyncio.sleep(0.01)
    assert value(metrics.render().decode(), 'pilot_xds{version="1.40.2"}') == 0.0


# ----------------------------------------------------------------------------- convergence


class _Stream:
    """A stream whose ACK state the test sets."""

    def __init__(self) -> None:
        self.in_sync = False

    def set_snapshot(self, snapshot: Snapshot) -> None:
        pass

    def status(self) -> Mapping[str, TypeStatus]:
        return {}

    def synced(self, snapshot: Snapshot | None = None) -> bool:
        return self.in_sync


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _sample(metrics: ControlPlaneMetrics, name: str) -> float:
    got = metrics.registry.get_sample_value(name)
    return 0.0 if got is None else got


def test_convergence_counts_from_the_first_change_to_the_ack_that_completes_it() -> None:
    clock = _Clock()
    metrics = ControlPlaneMetrics(clock=clock)
    stream = _Stream()
    entry = NodeEntry("p", {}, Snapshot(), stream)
    metrics.connected(entry, "1.40.2")
    ack = [Ack(CLUSTER, "v", "n")]

    metrics.pushed(99.0, ["p"])  # the change came at 99, the push is at 100
    clock.now = 100.5
    metrics.sent(entry, CLUSTER, 0.001)
    assert _sample(metrics, "pilot_proxy_queue_time_sum") == pytest.approx(0.5)
    clock.now = 101.0
    metrics.received(entry, ack)  # an ACK, but not all of it yet
    assert _sample(metrics, "pilot_proxy_convergence_time_count") == 0
    # A second push while the first is in flight: convergence still counts from 99.
    metrics.pushed(100.8, ["p"])
    clock.now = 102.0
    metrics.sent(entry, LISTENER, 0.001)
    stream.in_sync = True
    metrics.received(entry, ack)
    assert _sample(metrics, "pilot_proxy_convergence_time_count") == 1
    assert _sample(metrics, "pilot_proxy_convergence_time_sum") == pytest.approx(3.0)
    assert metrics.in_flight() == 0
    metrics.received(entry, ack)  # a later ACK is not another convergence
    assert _sample(metrics, "pilot_proxy_convergence_time_count") == 1


def test_a_push_with_nothing_to_send_or_a_nack_is_no_convergence() -> None:
    clock = _Clock()
    metrics = ControlPlaneMetrics(clock=clock)
    stream = _Stream()
    entry = NodeEntry("p", {}, Snapshot(), stream)
    metrics.pushed(80.0, ["p"])  # not connected (it left while the push was computed)
    assert metrics.in_flight() == 0
    metrics.connected(entry, "")
    metrics.pushed(90.0, ["p"])  # nothing went out for this one...
    metrics.pushed(99.0, ["p"])  # ...so the next push starts the clock over
    clock.now = 100.0
    metrics.sent(entry, CLUSTER, 0.001)
    stream.in_sync = True
    metrics.received(entry, [Ack(CLUSTER, "v", "n")])
    assert _sample(metrics, "pilot_proxy_convergence_time_sum") == pytest.approx(1.0)

    metrics.pushed(100.0, ["p"])
    metrics.sent(entry, CLUSTER, 0.001)
    metrics.received(entry, [Nack(CLUSTER, "v", "n2", "bad"), StaleNonce(CLUSTER, "n0")])
    assert metrics.in_flight() == 0
    assert _sample(metrics, "pilot_proxy_convergence_time_count") == 1
    text = metrics.render().decode()
    assert value(text, 'pilot_total_xds_rejects{type="cds"}') == 1.0
    assert value(text, 'pilot_xds_expired_nonce{type="cds"}') == 1.0
    assert value(text, 'pilot_xds{version="unknown"}') == 1.0
    metrics.pushed(101.0, ["p"])
    metrics.disconnected(entry)
    assert metrics.in_flight() == 0
    assert value(metrics.render().decode(), 'pilot_xds{version="unknown"}') == 0.0


def test_debounce_time_and_process_and_build_metrics() -> None:
    clock = _Clock()
    metrics = ControlPlaneMetrics(clock=clock)
    metrics.debounced(99.75)
    assert _sample(metrics, "pilot_debounce_time_sum") == pytest.approx(0.25)
    text = metrics.render().decode()
    assert re.search(r'^istio_build\{component="pilot",tag="[^"]+"\} 1\.0$', text, re.M)
    assert (value(text, "process_resident_memory_bytes") or 0) > 0
    assert "_created" not in text  # istiod exposes none


# ----------------------------------------------------------------------------- the API


@pytest.fixture
async def api() -> AsyncIterator[tuple[Api, TestClient[web.Request, web.Application]]]:
    store = MemoryStore()
    await store.open()
    cache = SnapshotCache()
    pusher = Pusher(store, cache)
    task = asyncio.create_task(pusher.run())
    metrics = ControlPlaneMetrics(lambda: pusher.world)
    api = Api(
        store, Registry(store, ttl=15.0), pusher, cache, TOKEN, ("127.0.0.1", 1), metrics=metrics
    )
    api.address = "127.0.0.1:15014"
    async with TestClient(TestServer(api.app())) as client:
        yield api, client
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


VS = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews}
"""


async def _get(client: TestClient[Any, Any], path: str, **kw: Any) -> tuple[int, str, str]:
    async with client.get(path, headers=kw.get("headers", AUTH)) as r:
        return r.status, r.content_type, await r.text()


async def test_metrics_need_the_token_and_count_config_events(
    api: tuple[Api, TestClient[Any, Any]],
) -> None:
    _, client = api
    status, ctype, _ = await _get(client, "/metrics", headers={})
    assert status == 401 and ctype == "application/json"
    async with client.post("/v1/apply", json={"text": VS}, headers=AUTH) as r:
        assert r.status == 200
    doc = instance_document("reviews-v1-0", metrics_port=15020)
    async with client.post("/v1/instances", json=doc, headers=AUTH) as r:
        assert r.status == 200
    async with client.delete("/v1/instances/default/reviews-v1-0", headers=AUTH) as r:
        assert r.status == 200
    status, ctype, text = await _get(client, "/metrics")
    assert status == 200 and ctype == "text/plain"
    assert value(text, 'pilot_k8s_cfg_events{type="VirtualService",event="add"}') == 1.0
    assert value(text, 'pilot_k8s_reg_events{type="WorkloadInstance",event="add"}') == 1.0
    assert value(text, 'pilot_k8s_reg_events{type="WorkloadInstance",event="delete"}') == 1.0
    async with asyncio.timeout(_BOUND):  # the push that publishes the World comes soon
        while value((await _get(client, "/metrics"))[2], "pilot_virt_services") != 1.0:
            await asyncio.sleep(0.01)


def _inst(name: str, **fields: Any) -> Instance:
    return Instance.from_document(instance_document(name, **fields))


async def test_discovery_lists_the_control_plane_and_each_sidecar_with_metrics(
    api: tuple[Api, TestClient[Any, Any]],
) -> None:
    _, client = api
    for doc in (
        instance_document("reviews-v1-0", metrics_port=15020, labels={"version": "v1"}),
        instance_document("ratings-v1-0", service="ratings", metrics_port=0),
        instance_document("web-0", service="web", namespace="shop", metrics_port=15021, labels={}),
    ):
        async with client.post("/v1/instances", json=doc, headers=AUTH) as r:
            assert r.status == 200, await r.text()
    bad = instance_document("x-0", metrics_port=70000)
    async with client.post("/v1/instances", json=bad, headers=AUTH) as r:
        assert r.status == 400 and "metrics_port" in (await r.json())["error"]

    async with client.get("/v1/prometheus/targets", headers=AUTH) as r:
        assert r.status == 200 and r.content_type == "application/json"
        groups = await r.json()
    by_target = {g["targets"][0]: g["labels"] for g in groups}
    assert [len(g["targets"]) for g in groups] == [1, 1, 1]
    cp = by_target["127.0.0.1:15014"]
    assert cp["__metrics_path__"] == "/metrics" and cp["__meta_tsunagi_role"] == "control-plane"
    assert cp["app"] == "istiod" and cp["pod"].startswith("istiod-")
    assert by_target["127.0.0.1:15020"] == {
        "__meta_tsunagi_role": "sidecar",
        "__metrics_path__": "/stats/prometheus",
        "namespace": "default",
        "pod": "reviews-v1-0",
        "app": "reviews",
        "version": "v1",
    }
    assert by_target["127.0.0.1:15021"]["namespace"] == "shop"
    assert "version" not in by_target["127.0.0.1:15021"]  # none registered: none invented


def test_one_sidecar_is_one_target_and_addresses_are_written_for_prometheus() -> None:
    same = [_inst("a-0", metrics_port=15020), _inst("a-1", metrics_port=15020)]
    assert len(targets(same, "127.0.0.1:1")) == 2  # control plane + one sidecar
    v6 = _inst("b-0", address="::1", metrics_port=15020)
    assert targets([v6], "[::1]:1")[1]["targets"] == ["[::1]:15020"]
    assert host_port("0.0.0.0", 15014) == "127.0.0.1:15014"
    assert host_port("::", 15014) == "[::1]:15014"


def _jobs(cfg: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {j["job_name"]: j for j in cfg["scrape_configs"]}


def test_the_config_discovers_with_the_token_file_and_scrapes_sidecars_without_it(
    tmp_path: Path,
) -> None:
    token = tmp_path / "token"
    token.write_text("secret\n")
    jobs = _jobs(config("http://127.0.0.1:15014", token))
    cp, sidecars = jobs["tsunagi-control-plane"], jobs["envoy-stats"]
    for job in (cp, sidecars):
        (sd,) = job["http_sd_configs"]
        assert sd["url"] == "http://127.0.0.1:15014/v1/prometheus/targets"
        assert sd["authorization"]["credentials_file"] == str(token.resolve())
    assert cp["authorization"]["credentials_file"] == str(token.resolve())
    assert "authorization" not in sidecars  # the control plane's token stays with it
    assert cp["relabel_configs"][0]["regex"] == "control-plane"
    assert sidecars["relabel_configs"][0]["regex"] == "sidecar|gateway"  # every Envoy


def test_prometheus_accepts_the_written_config(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        if shutil.which("apt-get") is None:
            pytest.skip("promtool is not installed and apt-get is not available")
        pytest.fail("promtool is missing: run `make tools` (Debian's prometheus package)")
    token = tmp_path / "token"
    token.write_text("secret\n")
    path = write_config(tmp_path, "http://127.0.0.1:15014", token)
    assert path == tmp_path / "prometheus.yml"
    done = subprocess.run(
        [promtool, "check", "config", str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert yaml.safe_load(path.read_text())["global"]["scrape_interval"] == "5s"
