"""A DestinationRule's ``tls.credentialName``, end to end, on loopback.

(a) Istio's "egress gateway with mutual TLS origination using a Secret": an app speaks
plain HTTP to its sidecar, which sends the host to ``istio-egressgateway`` (a real ``tsunagi
gateway``); the gateway's DestinationRule (MUTUAL, ``credentialName``) makes it present the
client certificate of a Secret (``tsunagi create secret generic``) to a test-owned TLS
server that requires one, and verify that server with the Secret's CA. Without the Secret,
and with a Secret whose CA is not the server's (renewed in place, no restart), the request
fails closed (503) and ``apply`` says why.

(b) A sidecar that a DestinationRule's ``workloadSelector`` selects uses its
``credentialName`` (SIMPLE: the server's CA is only in the Secret) and reaches the server;
a sidecar of the same namespace the selector does not pick sends what Istio's sidecars send
for such a rule (no TLS), and the TLS server turns it away: 503.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.certs import make_ca, make_cert

from .mesh import Mesh, Workload, free_port, outside_https_echo, stop, wait_until
from .rules import loopback_service_entry
from .test_gateway import accepts
from .tls_helpers import write_pem

pytestmark = pytest.mark.e2e

NGINX = "my-nginx.mesh-external.svc.cluster.local"
EGRESS = "istio-egressgateway"
SECURE = "secure.example.test"


@dataclass(frozen=True)
class Pki:
    """Files of a test's certificates: the server's CA, a client pair from another CA, and
    a CA that signed nothing here."""

    server_ca: Path
    client_cert: Path
    client_key: Path
    client_ca: Path
    stranger_ca: Path


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    server_ca, client_ca, stranger = make_ca("server CA"), make_ca("client CA"), make_ca("x")
    client = make_cert("client.example.test", issuer=client_ca)
    for name, made in (("server-ca", server_ca), ("client-ca", client_ca), ("x-ca", stranger)):
        (tmp_path / f"{name}.pem").write_bytes(made.cert)
    cert, key = write_pem(tmp_path, "client", client)
    write_pem(tmp_path, "nginx", make_cert(NGINX, issuer=server_ca))
    write_pem(tmp_path, "secure", make_cert(SECURE, issuer=server_ca))
    return Pki(
        tmp_path / "server-ca.pem", cert, key, tmp_path / "client-ca.pem", tmp_path / "x-ca.pem"
    )


@contextmanager
def _tls_server(tmp_path: Path, name: str, client_ca: Path | None = None) -> Iterator[int]:
    """``apps/https_echo.py`` as ``name`` with the certificate :func:`pki` made for it
    (requiring a client certificate of ``client_ca``, when given): its port, once it
    accepts connections; stopped by its pid at the end."""
    port = free_port()
    cert, key, log = (tmp_path / f"{name}.{ext}" for ext in ("crt", "key", "log"))
    proc = outside_https_echo(name, port, cert, key, log, client_ca)
    try:
        wait_until(lambda: accepts(port), what=f"the TLS server {name}")
        yield port
    finally:
        stop(proc)


@pytest.fixture
def nginx(tmp_path: Path, pki: Pki) -> Iterator[int]:
    """The TLS server that requires a client certificate of the client CA; its port."""
    with _tls_server(tmp_path, "nginx", pki.client_ca) as port:
        yield port


def egress_yaml(port: int) -> str:
    """Istio's task, adapted: the host is on 127.0.0.1 (443 → the test server's port); the
    sidecar reaches the gateway over plain HTTP on port 80."""
    entry = loopback_service_entry(
        "originate-mtls-for-nginx",
        NGINX,
        "{number: 80, name: http-port, protocol: HTTP}",
        f"{{number: 443, name: https, protocol: HTTPS, targetPort: {port}}}",
    )
    return f"""{entry}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: istio-egressgateway, namespace: istio-system}}
spec:
  selector: {{istio: egressgateway}}
  servers:
  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: [{NGINX}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: direct-nginx-through-egress-gateway}}
spec:
  hosts: [{NGINX}]
  gateways: [istio-system/istio-egressgateway, mesh]
  http:
  - match: [{{gateways: [mesh], port: 80}}]
    route:
    - destination:
        host: istio-egressgateway.istio-system.svc.cluster.local
        port: {{number: 80}}
  - match: [{{gateways: [istio-system/istio-egressgateway], port: 80}}]
    route:
    - destination: {{host: {NGINX}, port: {{number: 443}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: originate-mtls-for-nginx, namespace: istio-system}}
spec:
  host: {NGINX}
  trafficPolicy:
    portLevelSettings:
    - port: {{number: 443}}
      tls:
        mode: MUTUAL
        credentialName: client-credential
        sni: {NGINX}
"""


def _credential_args(pki: Pki, ca: Path) -> list[str]:
    return [
        "create", "secret", "generic", "client-credential", "-n", "istio-system",
        f"--from-file=tls.crt={pki.client_cert}", f"--from-file=tls.key={pki.client_key}",
        f"--from-file=ca.crt={ca}",
    ]  # fmt: skip


def _answer(client: Workload, host: str) -> tuple[int, str]:
    status, body = client.get(host, "/", timeout=15)
    return status, str(body).strip()


def test_an_egress_gateway_originates_mutual_tls_with_a_secret(
    mesh: Mesh, pki: Pki, nginx: int
) -> None:
    listen = free_port()
    gw = mesh.gateway(
        EGRESS, {"istio": "egressgateway"}, "--port", f"80:{listen}", namespace="istio-system"
    )
    client = mesh.client()
    applied = mesh.apply(egress_yaml(nginx), "--wait")
    assert applied.returncode == 0, applied.stderr
    # No Secret yet: apply says so, and the gateway fails closed (no cluster left warming).
    assert '[IST0101] Referenced credentialName not found: "client-credential"' in applied.stderr
    wait_until(lambda: _answer(client, NGINX)[0] == 503, what="503 without the Secret")

    made = mesh.cli(*_credential_args(pki, pki.server_ca))
    assert made.returncode == 0, made.stderr
    wait_until(lambda: _answer(client, NGINX)[0] == 200, what="200 once the Secret exists")
    # The server required a certificate of the client CA and saw the Secret's.
    assert _answer(client, NGINX) == (200, f"nginx sni={NGINX} client=client.example.test")

    # Renewed in place with a CA that did not sign the server: the same Envoy now refuses
    # the server (a Secret change reaches it over SDS, without a restart).
    envoy = gw.envoy_pid()
    renewed = mesh.cli(*_credential_args(pki, pki.stranger_ca), "--dry-run=client", "-o", "yaml")
    assert renewed.returncode == 0, renewed.stderr
    applied = mesh.apply(renewed.stdout, "--wait")
    assert applied.returncode == 0, applied.stderr
    wait_until(lambda: _answer(client, NGINX)[0] == 503, what="503 with a CA not the server's")
    assert gw.envoy_pid() == envoy


def selector_yaml(port: int) -> str:
    """``SECURE`` (plain HTTP on port 80 to the app) on the TLS server's ``port``, and a
    rule that makes the sidecars it selects (app=picked) originate TLS with a Secret's CA."""
    entry = loopback_service_entry(
        "secure", SECURE, f"{{number: 80, name: http, protocol: HTTP, targetPort: {port}}}"
    )
    return f"""{entry}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: secure-for-picked}}
spec:
  host: {SECURE}
  workloadSelector: {{labels: {{app: picked}}}}
  trafficPolicy:
    tls: {{mode: SIMPLE, credentialName: secure-ca}}
"""


def test_a_selected_sidecar_verifies_with_its_secret_and_another_does_not(
    mesh: Mesh, pki: Pki, tmp_path: Path
) -> None:
    with _tls_server(tmp_path, "secure") as port:
        for namespace in ("default", "elsewhere"):
            made = mesh.cli(
                "create", "secret", "generic", "secure-ca", "-n", namespace,
                f"--from-file=ca.crt={pki.server_ca}",
            )  # fmt: skip
            assert made.returncode == 0, made.stderr
        picked = mesh.run("picked", "v1", 80, "idle.py", False)
        other = mesh.run("other", "v1", 80, "idle.py", False)
        # The selector's labels in another namespace, which holds a Secret of that name too.
        stranger = mesh.run("picked", "v1", 80, "idle.py", False, "--namespace", "elsewhere")
        applied = mesh.apply(selector_yaml(port), "--wait")
        assert applied.returncode == 0, applied.stderr
        assert "not applied yet" not in applied.stderr, applied.stderr
        assert "credentialName" not in applied.stderr, applied.stderr

        wait_until(lambda: _answer(picked, SECURE)[0] == 200, what="the selected sidecar")
        assert _answer(picked, SECURE) == (200, f"secure sni={SECURE}")
        # Not selected (another app; the rule is private to its namespace): no TLS from this
        # rule, which the TLS server refuses, and no Secret.
        for unselected in (other, stranger):
            assert _answer(unselected, SECURE)[0] == 503
            assert not _holds(unselected, "secure-ca")
        assert _holds(picked, "kubernetes://secure-ca-cacert")

        # The Secret deleted: the selected sidecar fails closed and lets go of the CA.
        deleted = mesh.cli("delete", "secret", "secure-ca")
        assert deleted.returncode == 0, deleted.stderr
        wait_until(lambda: _answer(picked, SECURE)[0] == 503, what="503 without the Secret")
        wait_until(lambda: not _holds(picked, "secure-ca"), what="the CA gone from Envoy")


def _holds(workload: Workload, secret: str) -> bool:
    """Whether the workload's Envoy holds an SDS secret whose name contains ``secret``."""
    return secret in workload.envoy_admin("/config_dump?resource=dynamic_active_secrets")
