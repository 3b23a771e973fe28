"""`tsunagi up --store etcd://...`: config applied through the CLI lands in a real etcd and
routes real traffic through real sidecars, a commit another replica makes reaches them too,
and the config survives the control plane's kill -9."""

from __future__ import annotations

import asyncio
import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.etcd_fixtures import Cluster, etcd_cluster
from tsunagi.store import Key
from tsunagi.store.etcd import EtcdClient, EtcdStore

from .mesh import Mesh, Workload, started_mesh, wait_until
from .rules import SUBSETS, all_to

pytestmark = pytest.mark.e2e


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[Cluster]:
    yield from etcd_cluster(tmp_path / "etcd")


def stored_in_etcd(cluster: Cluster, key: bytes) -> Any:
    """The JSON document at ``key``, read straight from etcd (None when absent)."""

    async def read() -> bytes | None:
        client = EtcdClient(cluster.endpoints)
        try:
            _, kv = await client.get(key)
        finally:
            await client.close()
        return kv.value if kv is not None else None

    raw = asyncio.run(read())
    return json.loads(raw) if raw is not None else None


def commit_as_another_replica(cluster: Cluster, prefix: str, key: Key, doc: Any) -> None:
    """Write ``doc`` at ``key`` through a store of our own on the same etcd and prefix."""

    async def write() -> None:
        store = EtcdStore(cluster.endpoints, prefix)
        await store.open()
        try:
            await store.commit([(key, doc)])
        finally:
            await store.close()

    asyncio.run(write())


@pytest.fixture
def mesh(etcd: Cluster, tmp_path: Path) -> Iterator[Mesh]:
    yield from started_mesh(tmp_path, "--store", etcd.url + "/e2e")


def test_config_in_etcd_routes_traffic_and_outlives_the_control_plane(
    etcd: Cluster, mesh: Mesh
) -> None:
    mesh.run("reviews", "v1")
    mesh.run("reviews", "v2")
    client = mesh.client()
    result = mesh.apply(SUBSETS + "---" + all_to("v2"), "--wait")
    assert result.returncode == 0, result.stderr
    for _ in range(20):
        assert _version(client) == "v2"

    # The rule is etcd's, under the chosen prefix, as the document that was applied.
    doc = stored_in_etcd(etcd, b"/e2e/VirtualService/default/reviews")
    assert doc["spec"]["http"][0]["route"][0]["destination"]["subset"] == "v2"

    # Another replica's commit (a second store on the same etcd and prefix, as a second
    # `tsunagi up` makes): this control plane hears it through its watch and pushes it.
    doc["spec"]["http"][0]["route"][0]["destination"]["subset"] = "v1"
    commit_as_another_replica(etcd, "/e2e/", ("VirtualService", "default", "reviews"), doc)
    wait_until(lambda: _version(client) == "v1", 30, "the other replica's rule to reach reviews")
    for _ in range(20):
        assert _version(client) == "v1"

    # kill -9 and start again: the config comes back from etcd, and a change applied
    # now reaches the sidecars.
    mesh.kill()
    mesh.up()
    wait_until(lambda: mesh.all_synced(3), 30, "the proxies to reconnect")
    assert _routed_subset(mesh) == "v1"
    result = mesh.apply(all_to("v2"), "--wait")
    assert result.returncode == 0, result.stderr
    for _ in range(20):
        assert _version(client) == "v2"
    assert _routed_subset(mesh) == "v2"


def test_an_apply_over_etcds_transaction_limit_says_so_and_stores_nothing(mesh: Mesh) -> None:
    rules = [
        f"apiVersion: networking.istio.io/v1\nkind: DestinationRule\n"
        f"metadata: {{name: r{i}}}\nspec: {{host: r{i}}}\n"
        for i in range(200)
    ]
    result = mesh.apply("---\n".join(rules))
    assert result.returncode == 1
    assert "--max-txn-ops" in result.stderr and "fewer resources" in result.stderr
    # The request's size, not a fault of the store: 413, not 503.
    c = http.client.HTTPConnection("127.0.0.1", mesh.api_port, timeout=30)
    try:
        body = json.dumps({"text": "---\n".join(rules), "filename": "big.yaml"})
        auth = {"Authorization": f"Bearer {mesh.token()}", "Content-Type": "application/json"}
        c.request("POST", "/v1/apply", body=body, headers=auth)
        assert c.getresponse().status == 413
    finally:
        c.close()
    assert mesh.api("GET", "/v1/resources?kind=DestinationRule")["items"] == []
    # Under the limit, it goes through.
    assert mesh.apply("---\n".join(rules[:100])).returncode == 0
    assert len(mesh.api("GET", "/v1/resources?kind=DestinationRule")["items"]) == 100


def _version(client: Workload) -> str:
    """Which version of reviews answered one request from ``client``."""
    status, body = client.get("reviews:9080")
    assert status == 200 and isinstance(body, dict), (status, body)
    return str(body["version"])


def _routed_subset(mesh: Mesh) -> str:
    """The subset the VirtualService stored now routes to, as `tsunagi get` shows it."""
    out = mesh.cli("get", "virtualservice", "reviews", "-o", "json")
    assert out.returncode == 0, out.stderr
    item = json.loads(out.stdout)
    doc = item.get("document", item)
    return str(doc["spec"]["http"][0]["route"][0]["destination"]["subset"])
