"""``apply`` warns when a running gateway would bind a Gateway server's port as a privileged
port (no ``--port`` maps it higher), and says how to avoid it; a mapped port, a high port or
a gateway that does not select the Gateway, or one that may bind low ports, gets no
warning."""

from __future__ import annotations

from pathlib import Path

from tsunagi.api import load_documents
from tsunagi.mesh.gateway_bind_analysis import (
    privileged_port_problems,
    running_gateways,
    unprivileged_port_start,
)
from tsunagi.registry import Instance

GATEWAY = """
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: web, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
  - port: {number: 8081, name: http-alt, protocol: HTTP}
    hosts: ["*"]
"""


def _registration(
    port: int = 0,
    listen: int = 0,
    labels: dict[str, str] | None = None,
    binds_privileged_ports: bool = False,
) -> Instance:
    return Instance(
        name=f"ingress-abc-{port}",
        service="ingress",
        namespace="istio-system",
        port=port,
        address="127.0.0.1",
        target_port=listen,
        labels=labels if labels is not None else {"istio": "ingressgateway"},
        kind="gateway",
        binds_privileged_ports=binds_privileged_ports,
    )


def _warnings(*instances: Instance) -> list[str]:
    gateways = running_gateways(instances)
    return privileged_port_problems(load_documents(GATEWAY, "gw.yaml"), gateways, 1024)


def test_an_unmapped_port_80_is_reported_with_what_to_do() -> None:
    [w] = _warnings(_registration())
    assert w.startswith("Gateway default/web: spec.servers[0].port.number: gateway ingress.")
    assert "would bind port 80, a privileged port" in w
    assert "`tsunagi gateway ... --port 80:8080`" in w and "CAP_NET_BIND_SERVICE" in w


def test_no_warning_when_mapped_or_not_selected() -> None:
    # One proxy, two --port registrations: 80 listens on 8080, so nothing binds below 1024.
    assert _warnings(_registration(80, 8080), _registration(9000, 9000)) == []
    assert _warnings(_registration(labels={"istio": "egressgateway"})) == []
    assert _warnings() == []
    # A gateway with CAP_NET_BIND_SERVICE (root's) binds port 80 itself.
    assert _warnings(_registration(binds_privileged_ports=True)) == []


def test_the_hosts_unprivileged_start_is_read(tmp_path: Path) -> None:
    sysctl = tmp_path / "start"
    sysctl.write_text("80\n")
    assert unprivileged_port_start(sysctl) == 80
    assert unprivileged_port_start(tmp_path / "missing") == 1024
    gateways = running_gateways([_registration()])
    docs = load_documents(GATEWAY, "gw.yaml")
    assert privileged_port_problems(docs, gateways, 80) == []
