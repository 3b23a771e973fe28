"""``loadBalancer.simple: PASSTHROUGH``: the sidecar forwards to where the request's host
name points in DNS, not to the endpoints the mesh knows. What a client receives shows which."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .mesh import Mesh, free_port, outside_echo, stop, wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture
def servers() -> Iterator[tuple[int, int]]:
    """(the port `localhost` is asked for, the port of the endpoint the mesh knows)."""
    named, known = free_port(), free_port()
    procs = [outside_echo("by-name", named), outside_echo("known-endpoint", known)]
    try:
        yield named, known
    finally:
        for p in procs:
            stop(p)


def _entry(named: int, known: int) -> str:
    # The mesh knows one endpoint for localhost:NAMED, at another port: balancing sends
    # requests there; passing through sends them where the name resolves.
    return f"""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: local}}
spec:
  hosts: [localhost]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{{number: {named}, name: http, protocol: HTTP}}]
  endpoints: [{{address: 127.0.0.1, ports: {{http: {known}}}}}]
"""


PASSTHROUGH = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: local}
spec:
  host: localhost
  trafficPolicy: {loadBalancer: {simple: PASSTHROUGH}}
"""


def test_passthrough_goes_where_the_host_name_resolves(
    mesh: Mesh, servers: tuple[int, int]
) -> None:
    named, known = servers
    client = mesh.client()
    assert mesh.apply(_entry(named, known), "--wait").returncode == 0

    def answered_by() -> str:
        status, body = client.get(f"localhost:{named}")
        return body["name"] if status == 200 and isinstance(body, dict) else f"{status} {body}"

    wait_until(lambda: answered_by() == "known-endpoint", what="the ServiceEntry endpoint")

    applied = mesh.apply(PASSTHROUGH, "--wait")
    assert applied.returncode == 0, applied.stderr
    assert "PASSTHROUGH" not in applied.stderr  # enforced: no "not applied" warning
    assert {answered_by() for _ in range(10)} == {"by-name"}

    assert mesh.cli("delete", "destinationrule", "local").returncode == 0
    wait_until(lambda: answered_by() == "known-endpoint", what="balancing again")
