"""Istio's "Egress Gateways" task (HTTP), on loopback: a sidecar sends an external host's
requests to ``istio-egressgateway.istio-system.svc.cluster.local``, a real ``tsunagi
gateway --port 80:LISTENPORT``, which sends them on to the external server. Istio's YAML is
kept as the task writes it; only the external host (an invented name a ServiceEntry gives
a STATIC endpoint on 127.0.0.1) and the ports are adapted.

Also the ingress direction of ``--port``: a Gateway that keeps ``port: 80`` is reached at
the listen port, with real ``curl``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from .mesh import Mesh, Workload, free_port, outside_echo, stop, wait_until
from .test_gateway import accepts, curl

pytestmark = pytest.mark.e2e

EXTERNAL = "edition.example.test"
EGRESS = "istio-egressgateway"


@pytest.fixture
def external() -> Iterator[int]:
    """A plain HTTP server outside the mesh (answering as ``edition``); its port."""
    port = free_port()
    proc = outside_echo("edition", port)
    try:
        wait_until(lambda: accepts(port), what="the external server")
        yield port
    finally:
        stop(proc)


def task_yaml(external_port: int) -> str:
    """The task's ServiceEntry, Gateway, DestinationRule and VirtualService."""
    return f"""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: cnn}}
spec:
  hosts: [{EXTERNAL}]
  ports:
  - number: 80
    name: http-port
    protocol: HTTP
    targetPort: {external_port}
  location: MESH_EXTERNAL
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1}}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: istio-egressgateway
spec:
  selector:
    istio: egressgateway
  servers:
  - port:
      number: 80
      name: http
      protocol: HTTP
    hosts:
    - {EXTERNAL}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: egressgateway-for-cnn
spec:
  host: istio-egressgateway.istio-system.svc.cluster.local
  subsets:
  - name: cnn
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: direct-cnn-through-egress-gateway
spec:
  hosts:
  - {EXTERNAL}
  gateways:
  - istio-egressgateway
  - mesh
  http:
  - match:
    - gateways:
      - mesh
      port: 80
    route:
    - destination:
        host: istio-egressgateway.istio-system.svc.cluster.local
        subset: cnn
        port:
          number: 80
      weight: 100
  - match:
    - gateways:
      - istio-egressgateway
      port: 80
    route:
    - destination:
        host: {EXTERNAL}
        port:
          number: 80
      weight: 100
"""


def answered(client: Workload, path: str) -> tuple[int, str]:
    """``(status, who answered)`` of ``http://edition.example.test/PATH`` from the app."""
    status, body = client.get(EXTERNAL, path)
    return status, body.get("name", "") if isinstance(body, dict) else str(body)


def gateway_requests(gw: Workload, listen_port: int) -> int:
    """Requests the gateway answered with 2xx on its listener at ``listen_port`` (Envoy's
    per-listener HTTP stats; the server on port 80 has stat prefix ``gateway_80``)."""
    stat = f"listener.127.0.0.1_{listen_port}.http.gateway_80.downstream_rq_2xx"
    stats = json.loads(gw.envoy_admin(f"/stats?format=json&filter=^{stat}$") or "{}")
    return sum(int(s.get("value") or 0) for s in stats.get("stats", []) if s.get("name") == stat)


def test_the_egress_gateway_task_sends_the_sidecars_request_through_the_gateway(
    mesh: Mesh, external: int
) -> None:
    listen = free_port()
    gw = mesh.gateway(
        EGRESS, {"istio": "egressgateway"}, "--port", f"80:{listen}", namespace="istio-system"
    )
    client = mesh.client()
    applied = mesh.apply(task_yaml(external), "--wait")
    assert applied.returncode == 0, applied.stderr
    assert "not applied yet" not in applied.stderr, applied.stderr

    # The gateway is an endpoint of its service at the listen port, as `get workloads` says.
    listed = mesh.cli("get", "workloads", "-n", "istio-system")
    assert f"gateway {EGRESS}:80 → :{listen} at 127.0.0.1" in listed.stdout, listed.stdout
    status = mesh.cli("proxy-status")
    assert f"{EGRESS} (gateway 80→{listen})" in status.stdout, status.stdout
    assert gateway_requests(gw, listen) == 0

    wait_until(lambda: answered(client, "/politics")[0] == 200, what="the external host")
    # The client got the external server's answer to its own request...
    assert answered(client, "/politics") == (200, "edition")
    # ...and the gateway's listener on the listen port answered both (Istio's task checks
    # the egress gateway's log for the same).
    wait_until(lambda: gateway_requests(gw, listen) == 2, what="the gateway counting 2")

    # Without the gateway, the sidecar has nowhere to send the host: the path went through it.
    gw.proc.terminate()
    assert gw.proc.wait(30) == 0
    wait_until(lambda: answered(client, "/politics")[0] == 503, what="503 without the gateway")


def test_a_gateway_keeps_port_80_in_its_servers_and_listens_on_the_listen_port(
    mesh: Mesh,
) -> None:
    mesh.run("reviews", "v1")
    listen = free_port()
    mesh.gateway("istio-ingressgateway", {"istio": "ingressgateway"}, "--port", f"80:{listen}")
    applied = mesh.apply(
        """
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: shop-gateway}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [shop.example.com]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: shop}
spec:
  hosts: [shop.example.com]
  gateways: [shop-gateway]
  http:
  - match: [{port: 80}]
    route: [{destination: {host: reviews, port: {number: 9080}}}]
""",
        "--wait",
    )
    assert applied.returncode == 0, applied.stderr
    wait_until(lambda: accepts(listen), what=f"the gateway listening on {listen}")
    code, _, body = curl(listen, "shop.example.com", "/products")
    assert code == 200, body
    assert json.loads(body)["service"] == "reviews"
    code, _, _ = curl(listen, "other.example.com")
    assert code == 404
