"""``tsunagi apply`` of a Gateway whose server port a running gateway would bind below
1024 warns (naming the gateway and ``--port 1000:9000``-style fix), when that gateway lacks
``CAP_NET_BIND_SERVICE``; the same port mapped by the gateway's ``--port``, or bound by a
gateway that has the capability (root's), gets no such warning. What the user reads is
apply's output; the warned-about gateway really cannot bind the port (its listener is
rejected)."""

from __future__ import annotations

import os

import pytest

from tsunagi.agent.gateway import binds_privileged_ports

from .mesh import Mesh, free_port, wait_until
from .test_gateway import gateway_yaml

pytestmark = pytest.mark.e2e

WARNING = "would bind port 1000, a privileged port"
NO_BIND_CAPABILITY = (
    # As root, drop the capability for the gateway and its Envoy; others never had it.
    ("setpriv", "--bounding-set=-net_bind_service", "--inh-caps=-net_bind_service")
    if binds_privileged_ports()
    else ()
)


def test_apply_warns_about_a_privileged_gateway_port_unless_mapped(mesh: Mesh) -> None:
    mesh.gateway("low", {"edge": "low"}, launcher=NO_BIND_CAPABILITY)
    mesh.gateway("mapped", {"edge": "mapped"}, "--port", f"1000:{free_port()}")

    low = mesh.apply(gateway_yaml("low-gw", "low", [1000]))
    assert low.returncode == 0, low.stderr
    assert WARNING in low.stderr, low.stderr
    assert "gateway low.default" in low.stderr and "--port 1000:9000" in low.stderr

    def rejected() -> bool:
        proxies = mesh.api("GET", "/v1/proxies")["proxies"]
        low_proxy = [p for p in proxies if p["id"].startswith("low-")]
        return bool(low_proxy) and low_proxy[0]["nacked"] and "1000" in low_proxy[0]["message"]

    wait_until(rejected, 20, "the low gateway's listener rejected (NACK)")

    mapped = mesh.apply(gateway_yaml("mapped-gw", "mapped", [1000]))
    assert mapped.returncode == 0, mapped.stderr
    assert WARNING not in mapped.stderr, mapped.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="needs a gateway that holds the capability")
def test_a_gateway_that_may_bind_low_ports_gets_no_warning(mesh: Mesh) -> None:
    mesh.gateway("root", {"edge": "root"})
    applied = mesh.apply(gateway_yaml("root-gw", "root", [1000]))
    assert applied.returncode == 0, applied.stderr
    assert WARNING not in applied.stderr, applied.stderr
