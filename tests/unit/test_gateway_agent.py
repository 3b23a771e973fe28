"""``tsunagi gateway``'s agent side: what it tells the control plane about itself (node
metadata, registration), how it travels to the lean agent interpreter, and how the control
plane keeps a gateway out of every service's endpoints while listing it as a workload."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import json_format, struct_pb2

from tsunagi import proxy_contract as pc
from tsunagi.agent import handoff
from tsunagi.agent.bootstrap import ProxyIdentity, bootstrap
from tsunagi.agent.gateway import GatewayOptions
from tsunagi.cli import output
from tsunagi.controlplane.world_builder import WorldBuilder
from tsunagi.mesh import Node
from tsunagi.registry import Instance, InvalidInstance, Registry
from tsunagi.store import MemoryStore

from .examples import instance_document

GATEWAY_DOC = {
    "name": "istio-ingressgateway-0a1b2c",
    "service": "istio-ingressgateway",
    "namespace": "default",
    "kind": "gateway",
    "port": 0,
    "target_port": 0,
    "address": "127.0.0.1",
    "labels": {"istio": "ingressgateway"},
}


def test_the_handoff_carries_a_gateways_options() -> None:
    opts = GatewayOptions(
        name="istio-ingressgateway",
        labels={"istio": "ingressgateway", "app": "edge"},
        namespace="edge",
        address="0.0.0.0",
        ports=((80, 8080, "http"), (443, 8443, "https")),
        metrics_port=15090,
        metrics_address="::1",
        concurrency=1,
        delta=True,
        envoy="/opt/envoy",
    )
    got, server, token = handoff.decode(handoff.encode(opts, "http://127.0.0.1:15014", "tok"))
    assert isinstance(got, GatewayOptions)
    assert got == opts and dict(got.labels) == {"istio": "ingressgateway", "app": "edge"}
    assert (server, token) == ("http://127.0.0.1:15014", "tok")


def test_the_control_plane_reads_a_gateway_from_its_bootstrap() -> None:
    ident = ProxyIdentity(
        node_id="istio-ingressgateway-0a1b2c.default",
        service="istio-ingressgateway",
        namespace="default",
        labels={"istio": "ingressgateway"},
        outbound_port=0,
        kind=pc.GATEWAY_KIND,
        gateway_address="0.0.0.0",
    )
    doc = bootstrap(ident, "127.0.0.1", 15010, 15000)["node"]
    metadata = struct_pb2.Struct()
    metadata.update(doc["metadata"])  # as Envoy sends it back: a protobuf Struct
    node = Node.from_metadata(doc["id"], json_format.MessageToDict(metadata))
    assert node.kind == "gateway" and node.is_gateway
    assert (node.service, node.namespace) == ("istio-ingressgateway", "default")
    assert dict(node.labels) == {"istio": "ingressgateway"}
    assert node.gateway_address == "0.0.0.0"
    assert dict(node.inbound) == {}


def test_a_sidecars_bootstrap_names_no_gateway_address() -> None:
    ident = ProxyIdentity(node_id="r-1", service="reviews", namespace="default")
    assert pc.META_GATEWAY_ADDRESS not in bootstrap(ident, "h", 1, 2)["node"]["metadata"]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        # A gateway's service port (tsunagi gateway --port) has both numbers, or neither.
        ({"port": 8080}, "target_port must be 1..65535"),
        ({"target_port": 8080}, "target_port must be 0 for a gateway without a service port"),
        ({"port": 70000, "target_port": 8080}, "port must be 1..65535"),
        ({"kind": "waypoint"}, "kind 'waypoint' is not 'sidecar' or 'gateway'"),
    ],
)
def test_invalid_gateway_registrations_name_the_field(
    changes: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidInstance, match=message):
        Instance.from_document({**GATEWAY_DOC, **changes})


def test_a_sidecar_still_needs_its_service_port() -> None:
    with pytest.raises(InvalidInstance, match=re.escape("port must be 1..65535")):
        Instance.from_document(instance_document("r-1", port=0))


async def test_a_gateway_is_a_workload_but_no_services_endpoint() -> None:
    store = MemoryStore()
    reg = Registry(store, ttl=10)
    gateway = Instance.from_document(GATEWAY_DOC)
    sidecar = Instance.from_document(instance_document("reviews-v1-a"))
    await reg.register(gateway)
    await reg.register(sidecar)
    assert not gateway.serves and sidecar.serves
    assert {i.name for i in reg.instances()} == {gateway.name, sidecar.name}
    assert reg.gateways() == [gateway]
    assert reg.service_instances() == [sidecar]
    world = WorldBuilder().build(store.contents())
    assert list(world.services) == ["reviews.default.svc.cluster.local"]
    assert all(ep.port != 0 for eps in world.endpoints.values() for ep in eps), (
        "the gateway became an endpoint"
    )
    assert not any("istio-ingressgateway" in host for host, _ in world.endpoints)


def test_get_workloads_and_proxy_status_say_gateway() -> None:
    items = [
        {"kind": "WorkloadInstance", "namespace": "default", "name": n, "document": d}
        for n, d in (
            (GATEWAY_DOC["name"], Instance.from_document(GATEWAY_DOC).to_document()),
            ("r-1", Instance.from_document(instance_document("r-1")).to_document()),
        )
    ]
    table = output.resources(items, "")
    assert "gateway istio-ingressgateway at 127.0.0.1 (istio=ingressgateway)" in table
    assert "reviews:9080 → 127.0.0.1:" in table
    status = output.proxy_status(
        [
            {"id": "istio-ingressgateway-0a1b2c.default", "service": "istio-ingressgateway"}
            | {"kind": "gateway", "types": {"LDS": {"state": "SYNCED"}}, "revision": 3}
        ]
    )
    assert "istio-ingressgateway (gateway)" in status


def test_the_gateway_agent_stays_lean() -> None:
    """The gateway's agent runs in the same lean interpreter as a sidecar's."""
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, tsunagi.agent.__main__, tsunagi.agent.gateway; "
            "print(' '.join(sorted(sys.modules)))",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    loaded = set(done.stdout.split())
    heavy = {"argparse", "logging", "pathlib", "typing", "asyncio", "ssl", "inspect"}
    heavy |= {"tsunagi.cli", "tsunagi.api", "tsunagi.mesh", "tsunagi.xds", "tempfile", "shutil"}
    assert not loaded & heavy, sorted(loaded & heavy)


def test_the_bind_capability_is_read_from_the_effective_set(tmp_path: Path) -> None:
    from tsunagi.agent.gateway import binds_privileged_ports

    status = tmp_path / "status"
    status.write_text("Name:\tenvoy\nCapEff:\t0000000000000400\n")  # bit 10 only
    assert binds_privileged_ports(str(status)) is True
    status.write_text("Name:\tenvoy\nCapEff:\t00000000a80421fb\n")
    assert binds_privileged_ports(str(status)) is False  # bit 10 cleared
