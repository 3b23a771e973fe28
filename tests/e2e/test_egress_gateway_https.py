"""Istio's "Egress Gateways" task, HTTPS variant, on loopback: an app's HTTPS to an
external host goes ``CONNECT`` → its sidecar → ``istio-egressgateway`` (a real ``tsunagi
gateway --port 443:LISTENPORT`` with a PASSTHROUGH server) → the external HTTPS server, and
the TLS is the client's own end to end: nobody on the way ends it.

Istio's YAML is kept as the task writes it; only the external host (an invented name the
ServiceEntry gives an endpoint on 127.0.0.1, resolution STATIC or DNS, with the test server's
port as the 443 port's targetPort) and the gateway's listen port are adapted. The clients
are curl and Python ``requests``, through the ``HTTPS_PROXY`` that ``tsunagi run`` gave the
app, under either outbound traffic policy.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from tests.certs import make_ca, make_cert

from .mesh import Mesh, Workload, free_port, outside_https_echo, started_mesh, stop, wait_until
from .test_gateway import accepts
from .test_gateway_telemetry import gateway_log
from .test_https_proxy import app_environ, python_client
from .tls_helpers import write_pem

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not shutil.which("curl"), reason="needs curl"),
]

EXTERNAL = "edition.example.test"
EGRESS = "istio-egressgateway"
URL = f"https://{EXTERNAL}/politics"


@dataclass(frozen=True)
class External:
    """The external HTTPS server: its port, the CA that signed its certificate, and that
    certificate (DER), to compare with what a client was shown."""

    port: int
    ca: Path
    cert_der: bytes


@pytest.fixture
def logged_mesh(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Mesh]:
    """A mesh whose proxies, the gateway too, log every connection (Istio's text log), with
    the outbound traffic policy the test names (the task works with both: its host is in
    the registry)."""
    yield from started_mesh(tmp_path, "--access-log", "text", "--outbound-policy", request.param)


@pytest.fixture
def external(tmp_path: Path) -> Iterator[External]:
    """An HTTPS server outside the mesh for :data:`EXTERNAL`, answering as ``edition`` (and
    the SNI it was asked for), with a certificate from a CA this test makes."""
    ca = make_ca("edition test CA")
    leaf = make_cert(EXTERNAL, issuer=ca)
    (tmp_path / "ca.pem").write_bytes(ca.cert)
    cert, key = write_pem(tmp_path, "edition", leaf)
    port = free_port()
    proc = outside_https_echo("edition", port, cert, key, tmp_path / "edition.log")
    try:
        wait_until(lambda: accepts(port), what="the external HTTPS server")
        der = x509.load_pem_x509_certificate(leaf.cert).public_bytes(Encoding.DER)
        yield External(port, tmp_path / "ca.pem", der)
    finally:
        stop(proc)


def task_yaml(external_port: int, resolution: str = "STATIC") -> str:
    """The task's ServiceEntry, Gateway, DestinationRule and VirtualService (HTTPS)."""
    return f"""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: cnn
spec:
  hosts:
  - {EXTERNAL}
  ports:
  - number: 80
    name: http-port
    protocol: HTTP
  - number: 443
    name: tls
    protocol: TLS
    targetPort: {external_port}
  location: MESH_EXTERNAL
  resolution: {resolution}
  endpoints:
  - address: 127.0.0.1
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
      number: 443
      name: tls
      protocol: TLS
    hosts:
    - {EXTERNAL}
    tls:
      mode: PASSTHROUGH
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
  - mesh
  - istio-egressgateway
  tls:
  - match:
    - gateways:
      - mesh
      port: 443
      sniHosts:
      - {EXTERNAL}
    route:
    - destination:
        host: istio-egressgateway.istio-system.svc.cluster.local
        subset: cnn
        port:
          number: 443
  - match:
    - gateways:
      - istio-egressgateway
      port: 443
      sniHosts:
      - {EXTERNAL}
    route:
    - destination:
        host: {EXTERNAL}
        port:
          number: 443
      weight: 100
"""


@dataclass(frozen=True)
class Answer:
    code: int
    """curl's exit code."""
    body: str
    cert_der: bytes | None
    """The certificate the server showed curl (and curl verified), DER."""
    stderr: str


def curl(proxy: str, ca: Path) -> Answer:
    """``curl --proxy PROXY --cacert CA https://edition.example.test/politics``, as the app
    would call it with ``HTTPS_PROXY``; ``%{certs}`` prints the chain curl was shown."""
    done = subprocess.run(
        [
            *("curl", "-sS", "--max-time", "10", "--proxy", proxy, "--cacert", str(ca)),
            *("-w", "\n--certs--\n%{certs}", URL),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    body, _, certs = done.stdout.partition("\n--certs--\n")
    # The first certificate of the chain is the server's own.
    der = None
    if "-----BEGIN CERTIFICATE-----" in certs:
        der = x509.load_pem_x509_certificates(certs.encode())[0].public_bytes(Encoding.DER)
    return Answer(done.returncode, body, der, done.stderr)


def passthrough_connections(gw: Workload, listen: int) -> int:
    """Connections the gateway's listener on ``listen`` accepted (Envoy's listener stats)."""
    stat = f"listener.127.0.0.1_{listen}.downstream_cx_total"
    stats = json.loads(gw.envoy_admin(f"/stats?format=json&filter=^{stat}$") or "{}")
    return sum(int(s.get("value") or 0) for s in stats.get("stats", []) if s.get("name") == stat)


@pytest.mark.parametrize(
    ("logged_mesh", "resolution"),
    [("ALLOW_ANY", "STATIC"), ("REGISTRY_ONLY", "DNS")],
    indirect=["logged_mesh"],
)
def test_https_egress_goes_through_the_gateway_with_the_clients_own_tls(
    logged_mesh: Mesh, external: External, resolution: str
) -> None:
    mesh = logged_mesh
    listen = free_port()
    gw = mesh.gateway(
        EGRESS, {"istio": "egressgateway"}, "--port", f"443:{listen}", namespace="istio-system"
    )
    client = mesh.client()
    applied = mesh.apply(task_yaml(external.port, resolution), "--wait")
    assert applied.returncode == 0, applied.stderr
    assert "warning" not in applied.stderr, applied.stderr
    env = app_environ(client)
    proxy = env["HTTPS_PROXY"]

    wait_until(lambda: curl(proxy, external.ca).code == 0, what="HTTPS to the external host")
    before = passthrough_connections(gw, listen)
    got = curl(proxy, external.ca)
    # The external server answered, and saw the client's own SNI: the TLS was not ended on
    # the way...
    assert (got.code, got.body) == (0, f"edition sni={EXTERNAL}\n"), got
    # ...and the certificate curl verified against the test CA is the external server's.
    assert got.cert_der == external.cert_der
    # The connection went through the gateway's listener.
    wait_until(
        lambda: passthrough_connections(gw, listen) == before + 1,
        what="the gateway counting the connection",
    )

    # Python requests, through HTTPS_PROXY from the app's environment, verifying with the
    # test CA: five connections, five more through the gateway.
    before = passthrough_connections(gw, listen)
    py_env = {**env, "REQUESTS_CA_BUNDLE": str(external.ca)}
    bodies = python_client(py_env, "requests", URL, 5)
    assert bodies == [f"edition sni={EXTERNAL}"] * 5, bodies
    wait_until(
        lambda: passthrough_connections(gw, listen) == before + 5,
        what="the gateway counting requests' connections",
    )

    # Istio's task looks at the gateway's log: each connection, to the external host's
    # cluster, with the client's SNI.
    marker = f"[gateway {gw.name}.istio-system] "

    def logged() -> list[str]:
        lines = gateway_log(mesh).splitlines()
        return [ln for ln in lines if ln.startswith(marker) and f"outbound|443||{EXTERNAL}" in ln]

    wait_until(lambda: len(logged()) >= 6, what="the gateway's access log lines")
    assert all(f" {EXTERNAL} " in ln for ln in logged()), logged()

    # Without the gateway, the sidecar has nowhere to send the tunnel: the call fails...
    gw.proc.terminate()
    assert gw.proc.wait(30) == 0
    wait_until(lambda: curl(proxy, external.ca).code != 0, what="HTTPS failing without it")
    # ...and a new gateway on another listen port takes over (the sidecar follows the
    # gateway service's endpoint).
    listen = free_port()
    gw = mesh.gateway(
        EGRESS, {"istio": "egressgateway"}, "--port", f"443:{listen}", namespace="istio-system"
    )
    wait_until(lambda: curl(proxy, external.ca).code == 0, what="HTTPS through the new gateway")
    assert curl(proxy, external.ca).body == f"edition sni={EXTERNAL}\n"
    assert passthrough_connections(gw, listen) >= 2
