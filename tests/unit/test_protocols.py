"""Port protocols: ``tsunagi run --port PORT[/PROTOCOL]``, registrations, node metadata and
the protocol the World settles on per service port."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tsunagi import protocols
from tsunagi.agent.bootstrap import ProxyIdentity, bootstrap
from tsunagi.api import load_documents
from tsunagi.cli.main import parser
from tsunagi.mesh import Node, World
from tsunagi.mesh.analysis import not_yet_enforced
from tsunagi.registry import Instance, InvalidInstance
from tsunagi.registry.instances import protocol_disagreement


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("9080", (9080, "HTTP")),
        ("9080/http", (9080, "HTTP")),
        ("9090/grpc", (9090, "GRPC")),
        ("9090/GRPC", (9090, "GRPC")),
        ("8080/Http2", (8080, "HTTP2")),
        ("8081/grpc-web", (8081, "GRPC-WEB")),
        ("5432/tcp", (5432, "TCP")),
        ("6379/redis", (6379, "REDIS")),
        ("443/https", (443, "HTTPS")),
    ],
)
def test_port_specs(text: str, expected: tuple[int, str]) -> None:
    assert protocols.parse_port(text) == expected
    assert parser().parse_args(["run", "--service", "s", "--port", text, "--", "x"]).port == (
        expected
    )


def test_plain_run_is_http_on_port_80() -> None:
    assert parser().parse_args(["run", "--service", "s", "--", "x"]).port == (80, "HTTP")


@pytest.mark.parametrize("text", ["9080/foo", "9080/", "http/9080", "0/http", "70000", "x"])
def test_bad_port_specs_are_usage_errors(text: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit:
        parser().parse_args(["run", "--service", "s", "--port", text, "--", "x"])
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert "argument --port" in err
    if "/" in text and text.split("/")[0].isdigit() and text != "0/http":
        # An unknown protocol: the message lists every accepted name.
        assert "http, http2, grpc, grpc-web, http_proxy, https, tcp" in err


def test_classes_follow_istio() -> None:
    assert [p for p in protocols.PROTOCOLS if protocols.is_http2(p)] == [
        "HTTP2",
        "GRPC",
        "GRPC-WEB",
    ]
    assert [p for p in protocols.PROTOCOLS if protocols.is_http(p)] == [
        "HTTP",
        "HTTP2",
        "GRPC",
        "GRPC-WEB",
        "HTTP_PROXY",
    ]


def test_pick_is_the_majority_then_the_first_listed() -> None:
    assert protocols.pick([]) == ("HTTP", False)
    assert protocols.pick(["GRPC", "GRPC"]) == ("GRPC", False)
    assert protocols.pick(["HTTP", "GRPC", "GRPC"]) == ("GRPC", True)
    # A tie: whatever the order, the one first in PROTOCOLS.
    assert protocols.pick(["TCP", "GRPC"]) == protocols.pick(["GRPC", "TCP"]) == ("GRPC", True)


INSTANCE = {
    "name": "greeter-1",
    "service": "greeter",
    "port": 9090,
    "target_port": 20001,
}


def test_instance_protocol_is_checked_and_canonical() -> None:
    assert Instance.from_document(INSTANCE).protocol == "HTTP"  # older agents send none
    inst = Instance.from_document({**INSTANCE, "protocol": "grpc"})
    assert inst.protocol == "GRPC"
    assert inst.to_document()["protocol"] == "GRPC"
    with pytest.raises(InvalidInstance, match="unknown protocol 'gprc'; use one of: http,"):
        Instance.from_document({**INSTANCE, "protocol": "gprc"})


def test_disagreeing_instances_are_told_which_protocol_wins() -> None:
    inst = Instance.from_document({**INSTANCE, "protocol": "http"})
    assert protocol_disagreement(inst, ["HTTP"]) is None
    message = protocol_disagreement(inst, ["GRPC", "GRPC"])
    assert message is not None
    assert "greeter.default:9090 disagree on its protocol (grpc (2), http (1))" in message
    assert "the mesh uses grpc for all of them" in message
    assert "--port 9090/PROTOCOL" in message


def _world(instances: list[dict[str, object]], config: str = "") -> World:
    resources = load_documents(config, "test.yaml") if config else []
    return World.build(1, resources, [Instance.from_document(d) for d in instances])


def test_world_gives_each_service_port_one_protocol_whatever_the_order() -> None:
    docs: list[dict[str, object]] = [
        {**INSTANCE, "name": "a", "protocol": "GRPC"},
        {**INSTANCE, "name": "b"},
        {**INSTANCE, "name": "c", "protocol": "GRPC"},
    ]
    for order in (docs, docs[::-1], docs[1:] + docs[:1]):
        svc = _world(order).services["greeter.default.svc.cluster.local"]
        assert svc.protocol(9090) == "GRPC"
    tie = [{**INSTANCE, "name": "a", "protocol": "TCP"}, {**INSTANCE, "name": "b"}]
    for order in (tie, tie[::-1]):
        assert _world(order).services["greeter.default.svc.cluster.local"].protocol(9090) == (
            "HTTP"
        )


def test_service_entry_ports_carry_their_protocol() -> None:
    config = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: billing}
spec:
  hosts: [billing.example.com]
  resolution: STATIC
  ports:
  - {number: 7070, name: grpc, protocol: grpc}
  - {number: 80, name: http, protocol: HTTP}
  endpoints: [{address: 10.0.0.1}]
"""
    svc = _world([], config).services["billing.example.com"]
    assert (svc.protocol(7070), svc.protocol(80)) == ("GRPC", "HTTP")


def test_protocol_travels_in_node_metadata() -> None:
    ident = ProxyIdentity(
        "greeter-1.default",
        "greeter",
        "default",
        inbound={9090: (15006, 8080), 80: (15007, 8081)},
        inbound_protocols={9090: "GRPC"},
    )
    meta = bootstrap(ident, "127.0.0.1", 15010, 15000)["node"]["metadata"]
    node = Node.from_metadata("greeter-1.default", meta)
    assert (node.inbound_protocol(9090), node.inbound_protocol(80)) == ("GRPC", "HTTP")
    # A protocol this control plane does not know is not taken for HTTP.
    meta["inbound"]["9090"]["protocol"] = "QUIC"
    assert Node.from_metadata("x", meta).inbound_protocol(9090) == "TCP"


def test_apply_warns_that_tcp_service_entry_ports_are_not_routed_yet() -> None:
    config = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db}
spec:
  hosts: [db.example.com]
  resolution: DNS
  ports:
  - {number: 5432, name: pg, protocol: TCP}
  - {number: 80, name: http, protocol: HTTP}
  - {number: 7070, name: grpc, protocol: GRPC}
  - {number: 443, name: tls, protocol: TLS}
  - {number: 8443, name: https, protocol: HTTPS}
"""
    # TLS and HTTPS ports are reached with HTTPS through HTTPS_PROXY (CONNECT): no warning.
    warnings = not_yet_enforced(load_documents(config, "db.yaml"))
    assert warnings == [
        "ServiceEntry default/db: spec.ports[0] (TCP 5432) is not HTTP: the app's HTTP proxy "
        "has no route for it; reach it through a local TCP listener with "
        "`tsunagi run --upstream db.example.com:5432`"
    ]


def test_the_sidecar_agent_loads_only_what_it_uses() -> None:
    # `tsunagi run` builds the whole CLI parser; the agent's memory counts against the
    # sidecar's budget (docs/benchmarks.md), so neither the API models, the translation,
    # the demo nor heavy standard modules may come in with it.
    probe = (
        "import sys, tsunagi.cli.main as m, tsunagi.agent.run\n"
        "m.parser().parse_args(['run', '--service', 's', '--port', '9090/grpc', '--', 'x'])\n"
        "print(' '.join(sorted(sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=30)
    loaded = set(done.stdout.split())
    assert "tsunagi.agent.run" in loaded
    heavy = {"tsunagi.api", "tsunagi.mesh", "tsunagi.xds", "tsunagi.demo", "pydantic", "inspect"}
    # Event loops, gRPC and the telemetry libraries belong to the control plane.
    heavy |= {"asyncio", "aiohttp", "grpc", "prometheus_client", "opentelemetry"}
    assert not loaded & heavy, loaded & heavy
    assert not {m for m in loaded if m.split(".")[0] in heavy}, "a submodule of a heavy one"
