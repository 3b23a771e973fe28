"""``tsunagi run --address`` and ``tsunagi up --address``: a workload reachable from other
hosts (its inbound listener on the host's address, which it registers), a control plane
that other hosts reach (its bootstrap naming an address they can connect to).

The cross-host behaviour itself is tested end to end in tests/e2e/test_hosts.py."""

from __future__ import annotations

import asyncio
import json

import pytest

from tsunagi import proxy_contract as pc
from tsunagi.agent.bootstrap import ProxyIdentity, bootstrap
from tsunagi.cli.main import EXIT_USAGE, main, parser
from tsunagi.controlplane.http_api import Api
from tsunagi.controlplane.main import dashboard_host
from tsunagi.controlplane.push import Pusher
from tsunagi.mesh import Node
from tsunagi.registry import Registry
from tsunagi.store import MemoryStore
from tsunagi.xds.cache import SnapshotCache
from tsunagi.xds.translate.listeners import inbound_listeners, outbound_listener

TOKEN = "test-token"


def _node(address: str) -> Node:
    ident = ProxyIdentity(
        node_id="web-1.default",
        service="web",
        namespace="default",
        inbound={9080: (15006, 8080)},
        inbound_address=address,
    )
    boot = bootstrap(ident, "127.0.0.1", 15012, 15000)
    # Through JSON, as Envoy hands the metadata back to the control plane.
    meta = json.loads(json.dumps(boot["node"]["metadata"]))
    return Node.from_metadata("web-1.default", meta)


def _bound(listener: dict[str, object]) -> tuple[str, int]:
    sock = listener["address"]["socket_address"]  # type: ignore[index]
    return sock["address"], sock["port_value"]  # type: ignore[index]


def test_the_inbound_listener_binds_the_address_the_sidecar_runs_with() -> None:
    node = _node("10.211.7.11")
    assert node.inbound_address == "10.211.7.11"
    [inbound] = inbound_listeners(node)
    assert _bound(inbound) == ("10.211.7.11", 15006)
    # The app's side stays on loopback: only the sidecar is reached from other hosts.
    assert _bound(outbound_listener(node))[0] == "127.0.0.1"


def test_without_an_address_everything_stays_on_loopback() -> None:
    node = _node("")
    assert pc.META_INBOUND_ADDRESS not in json.dumps(
        bootstrap(ProxyIdentity("n", "web", "default"), "127.0.0.1", 15012, 15000)["node"]
    )
    [inbound] = inbound_listeners(node)
    assert _bound(inbound) == ("127.0.0.1", 15006)


def test_run_and_up_take_an_ip_address() -> None:
    args = parser().parse_args(["run", "--service", "web", "--address", "10.0.0.5", "--", "x"])
    assert args.address == "10.0.0.5"
    assert parser().parse_args(["run", "--service", "web", "--", "x"]).address == "127.0.0.1"
    assert parser().parse_args(["up", "--address", "10.0.0.5"]).address == "10.0.0.5"
    with pytest.raises(SystemExit):
        parser().parse_args(["run", "--service", "web", "--address", "web.local", "--", "x"])


def test_run_refuses_every_interface_as_its_address(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", "--service", "web", "--address", "0.0.0.0", "--", "true"])
    assert code == EXIT_USAGE
    err = capsys.readouterr().err
    assert "--address 0.0.0.0" in err and "this host's own address" in err


def test_the_dashboard_stays_on_loopback_unless_told_every_interface() -> None:
    assert dashboard_host("10.0.0.5") == "127.0.0.1"  # it answers loopback clients only
    assert dashboard_host("127.0.0.1") == "127.0.0.1"
    assert dashboard_host("0.0.0.0") == "0.0.0.0"


async def test_listening_everywhere_the_bootstrap_names_the_address_the_agent_reached() -> None:
    store = MemoryStore()
    await store.open()
    api = Api(
        store, Registry(store, 15.0), Pusher(store, SnapshotCache()), SnapshotCache(), TOKEN,
        ("0.0.0.0", 15012),
    )  # fmt: skip
    runner, port = await api.serve("0.0.0.0", 0)
    try:
        # 127.0.0.2 is loopback too: a second address of this host, as another host's
        # agent would reach this one at the address it knows.
        reader, writer = await asyncio.open_connection("127.0.0.2", port)
        writer.write(
            f"GET /v1/bootstrap HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        raw = await asyncio.wait_for(reader.read(), 20)
        writer.close()
    finally:
        await runner.cleanup()
    body = json.loads(raw.split(b"\r\n\r\n", 1)[1])
    assert body["xds"] == {"host": "127.0.0.2", "port": 15012}
