"""``tsunagi gateway --port SERVICEPORT:LISTENPORT``: the gateway as a mesh service (Istio's
gateways are Kubernetes Services whose targetPorts Envoy binds). What the CLI accepts, what
the agent registers and tells the control plane in its node metadata, and what the control
plane makes of it: endpoints of ``NAME.NAMESPACE`` at the listen port, and Gateway servers
on the service port listening on the listen port."""

from __future__ import annotations

import argparse

import pytest
from google.protobuf import json_format, struct_pb2

from tsunagi import proxy_contract as pc
from tsunagi.agent import handoff
from tsunagi.agent.bootstrap import ProxyIdentity, bootstrap
from tsunagi.agent.gateway import Gateway, GatewayOptions
from tsunagi.agent.workdir import remove_workdir
from tsunagi.api import load_documents
from tsunagi.cli import main as cli
from tsunagi.cli import output
from tsunagi.controlplane.world_builder import WorldBuilder
from tsunagi.mesh import Node, World
from tsunagi.registry import Instance, Registry
from tsunagi.store import MemoryStore
from tsunagi.xds.translate.gateway import gateway_parts
from tsunagi.xds.translate.isolation import TranslationError

from .examples import instance_document

EGRESS = "istio-egressgateway"


def _node_through_envoy(ident: ProxyIdentity) -> Node:
    """The node as the control plane reads it: the bootstrap's metadata, as Envoy sends it
    back (a protobuf Struct, whose numbers are doubles)."""
    doc = bootstrap(ident, "127.0.0.1", 15010, 15000)["node"]
    metadata = struct_pb2.Struct()
    metadata.update(doc["metadata"])
    return Node.from_metadata(doc["id"], json_format.MessageToDict(metadata))


def _gateway_ident(ports: dict[int, int]) -> ProxyIdentity:
    return ProxyIdentity(
        node_id=f"{EGRESS}-0a1b2c.istio-system",
        service=EGRESS,
        namespace="istio-system",
        labels={"istio": "egressgateway"},
        outbound_port=0,
        kind=pc.GATEWAY_KIND,
        gateway_address="127.0.0.1",
        gateway_ports=ports,
    )


# --- the CLI ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("80", (80, 80, "HTTP")),
        ("80:18080", (80, 18080, "HTTP")),
        ("443:18443/https", (443, 18443, "HTTPS")),
        ("9000/tcp", (9000, 9000, "TCP")),
    ],
)
def test_port_flag_reads_service_port_listen_port_and_protocol(
    text: str, parsed: tuple[int, int, str]
) -> None:
    assert cli._gateway_port(text) == parsed


@pytest.mark.parametrize("text", ["", "x", "0:8080", "80:", "80:0", "80:70000", "80:8080/nope"])
def test_a_bad_port_flag_says_what_a_port_looks_like(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=r"SERVICEPORT\[:LISTENPORT\]"):
        cli._gateway_port(text)


def test_two_ports_may_share_neither_service_port_nor_listen_port() -> None:
    assert cli._gateway_port_conflict([(80, 18080, "HTTP"), (443, 18443, "HTTPS")]) == ""
    twice = cli._gateway_port_conflict([(80, 18080, "HTTP"), (80, 18081, "HTTP")])
    assert "--port 80 is given more than once" in twice
    shared = cli._gateway_port_conflict([(80, 18080, "HTTP"), (81, 18080, "HTTP")])
    assert "--port 80:18080 and --port 81:18080 listen on the same port" in shared


# --- the agent: handoff, node metadata, registrations ------------------------------------


def test_the_handoff_carries_the_ports() -> None:
    opts = GatewayOptions(name=EGRESS, ports=((80, 18080, "HTTP"), (443, 18443, "HTTPS")))
    got, _, _ = handoff.decode(handoff.encode(opts, "http://127.0.0.1:15014", "tok"))
    assert got == opts


def test_the_control_plane_reads_the_port_mapping_from_the_bootstrap() -> None:
    node = _node_through_envoy(_gateway_ident({80: 18080, 443: 18443}))
    assert dict(node.gateway_ports) == {80: 18080, 443: 18443}
    world = World.build(1, [], [])
    assert world.scope_of(node).gateway_ports == ((80, 18080), (443, 18443))


def test_without_ports_the_bootstrap_and_scope_are_as_before() -> None:
    ident = _gateway_ident({})
    assert pc.META_GATEWAY_PORTS not in bootstrap(ident, "h", 1, 2)["node"]["metadata"]
    node = _node_through_envoy(ident)
    assert dict(node.gateway_ports) == {}
    assert World.build(1, [], []).scope_of(node).gateway_ports == ()


def test_mapping_entries_another_agent_wrote_badly_are_left_out() -> None:
    meta = {pc.META_KIND: "gateway", pc.META_GATEWAY_PORTS: {"80": 18080, "x": 1, "81": 0}}
    assert dict(Node.from_metadata("g.default", meta).gateway_ports) == {80: 18080}
    assert dict(Node.from_metadata("g.default", {pc.META_GATEWAY_PORTS: [1]}).gateway_ports) == {}


def _registrations(opts: GatewayOptions) -> list[Instance]:
    gw = Gateway(opts, client=None)  # type: ignore[arg-type]  # no request is made
    try:
        count = max(1, len(opts.ports))
        return [Instance.from_document(gw._instance(i)) for i in range(count)]
    finally:
        remove_workdir(gw.workdir)


def test_each_port_registers_an_endpoint_of_the_gateways_service() -> None:
    opts = GatewayOptions(
        name=EGRESS,
        namespace="istio-system",
        labels={"istio": "egressgateway"},
        ports=((80, 18080, "HTTP"), (443, 18443, "HTTPS")),
    )
    first, second = _registrations(opts)
    # The first keeps the gateway's own name (its proxy id's); the next is NAME-PORT.
    assert second.name == f"{first.name}-443"
    assert [(i.port, i.target_port, i.protocol) for i in (first, second)] == [
        (80, 18080, "HTTP"),
        (443, 18443, "HTTPS"),
    ]
    assert all(i.is_gateway and i.serves for i in (first, second))


def test_without_ports_the_registration_is_no_endpoint() -> None:
    (only,) = _registrations(GatewayOptions(name=EGRESS, labels={"istio": "egressgateway"}))
    assert only.is_gateway and not only.serves
    assert (only.port, only.target_port) == (0, 0)


async def test_a_gateway_with_ports_is_an_endpoint_and_still_a_gateway() -> None:
    store = MemoryStore()
    reg = Registry(store, ttl=10)
    opts = GatewayOptions(name=EGRESS, namespace="istio-system", ports=((80, 18080, "HTTP"),))
    (gateway,) = _registrations(opts)
    portless = Instance.from_document(
        {**gateway.to_document(), "name": "ingress-1", "port": 0, "target_port": 0}
    )
    for inst in (gateway, portless, Instance.from_document(instance_document("r-1"))):
        await reg.register(inst)
    assert {i.name for i in reg.gateways()} == {gateway.name, "ingress-1"}
    world = WorldBuilder().build(store.contents())
    host = f"{EGRESS}.istio-system.svc.cluster.local"
    assert [(e.address, e.port) for e in world.endpoints[(host, 80)]] == [("127.0.0.1", 18080)]
    assert all(ep.port != 0 for eps in world.endpoints.values() for ep in eps)


def test_get_workloads_and_proxy_status_show_the_ports() -> None:
    opts = GatewayOptions(
        name=EGRESS, labels={"istio": "egressgateway"}, ports=((80, 18080, "HTTP"),)
    )
    (gateway,) = _registrations(opts)
    items = [
        {"kind": "WorkloadInstance", "namespace": "default", "name": gateway.name}
        | {"document": gateway.to_document()}
    ]
    assert f"gateway {EGRESS}:80 → :18080 at 127.0.0.1 (istio=egressgateway)" in (
        output.resources(items, "")
    )
    row = {"id": f"{gateway.name}.default", "service": EGRESS, "kind": "gateway"}
    row |= {"types": {"LDS": {"state": "SYNCED"}}, "revision": 3}
    status = output.proxy_status([row | {"gateway_ports": {"443": 18443, "80": 18080}}])
    assert f"{EGRESS} (gateway 80→18080,443→18443)" in status
    assert f"{EGRESS} (gateway)" in output.proxy_status([row])


# --- translation: where the listeners bind ------------------------------------------------

GATEWAYS = """
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: egress, namespace: istio-system}
spec:
  selector: {istio: egressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
  - port: {number: 9000, name: http-9000, protocol: HTTP}
    hosts: ["*"]
"""


def _listeners(ports: dict[int, int], extra: str = "") -> tuple[dict[str, int], list[str]]:
    """``listener name → bound port`` of the egress gateway, and what failed to translate."""
    world = World.build(1, load_documents(GATEWAYS + extra, "gateways.yaml"), [])
    scope = world.scope_of(_node_through_envoy(_gateway_ident(ports)))
    errors: list[TranslationError] = []
    listeners, routes = gateway_parts(world, scope, errors)
    assert {r["name"] for r in routes} == {
        f"http.{ln['name'].split('|')[1]}" for ln in listeners
    }, "route tables keep the servers' own port numbers"
    bound = {ln["name"]: ln["address"]["socket_address"]["port_value"] for ln in listeners}
    return bound, [e.describe() for e in errors]


def test_a_server_on_a_service_port_listens_on_its_listen_port() -> None:
    bound, errors = _listeners({80: 18080})
    assert bound == {"gateway|80": 18080, "gateway|9000": 9000}
    assert errors == []


def test_without_ports_servers_listen_on_their_own_port_numbers() -> None:
    assert _listeners({}) == ({"gateway|80": 80, "gateway|9000": 9000}, [])


def test_a_listen_port_a_server_port_also_names_is_taken_by_the_first() -> None:
    # --port 80:9000 and a server on port 9000: one socket, so port 9000's servers are left
    # out with a reason proxy-status shows.
    bound, errors = _listeners({80: 9000})
    assert bound == {"gateway|80": 9000}
    assert len(errors) == 1
    assert "port 9000 already listens for server port 80" in errors[0]
    assert "--port 9000:FREEPORT" in errors[0]
