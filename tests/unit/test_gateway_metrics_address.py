"""A gateway serves its metrics on loopback whatever ``--address`` its listeners bind, so a
gateway at the edge (``--address 0.0.0.0``) does not expose its stats there; the address it
serves them at is registered, so Prometheus discovery and the dashboard scrape it."""

from __future__ import annotations

import socket
from typing import Any

from tsunagi.agent.gateway import Gateway, GatewayOptions
from tsunagi.cli.main import parser as build_parser
from tsunagi.controlplane.dashboard import scrape_targets
from tsunagi.controlplane.prometheus import targets
from tsunagi.registry import Instance


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2.0):
            return True
    except OSError:
        return False


def _address_of_another_interface() -> str | None:
    """A local non-loopback IPv4 address (to check the endpoint is not there), if any."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: it only picks a route
        except OSError:
            return None
        host = str(s.getsockname()[0])
    return None if host.startswith("127.") or host == "0.0.0.0" else host


def test_an_edge_gateway_serves_metrics_on_loopback_and_registers_that() -> None:
    gw = Gateway(GatewayOptions(name="edge", address="0.0.0.0"), client=None)  # type: ignore[arg-type]
    try:
        gw._start_metrics(admin_port=1)
        assert gw._metrics is not None
        port = gw._metrics.port
        assert gw._metrics._sock.getsockname()[0] == "127.0.0.1"
        assert _reachable("127.0.0.1", port)
        other = _address_of_another_interface()
        if other is not None:  # the edge's interface does not serve the stats
            assert not _reachable(other, port)
        doc: dict[str, Any] = gw._instance()
        assert doc["address"] == "0.0.0.0" and doc["metrics_address"] == "127.0.0.1"
        inst = Instance.from_document(doc | {"address": "192.0.2.10"})
        [_, group] = targets([inst], "127.0.0.1:15014")
        assert group["targets"] == [f"127.0.0.1:{port}"]
        registry: Any = type("R", (), {"instances": lambda self: [inst]})()
        [target] = scrape_targets(registry)
        assert target.url.startswith(f"http://127.0.0.1:{port}/")
    finally:
        if gw._metrics is not None:
            gw._metrics.close()
        if gw._pipe is not None:
            gw._pipe.close()


def test_metrics_address_is_a_flag_defaulting_to_loopback() -> None:
    parser = build_parser()
    args = parser.parse_args(["gateway", "--name", "edge", "--address", "0.0.0.0"])
    assert args.metrics_address == "127.0.0.1"
    args = parser.parse_args(["gateway", "--name", "edge", "--metrics-address", "10.1.2.3"])
    assert args.metrics_address == "10.1.2.3"
    # an old registration without it is scraped at its address, as before
    inst = Instance.from_document(
        {"name": "a", "service": "s", "port": 1, "target_port": 2, "metrics_port": 3}
    )
    assert inst.metrics_host == inst.address
