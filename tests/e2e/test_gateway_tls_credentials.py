"""``credentialNames`` at ``tsunagi gateway``, asked with real clients: one server holds an
RSA and an ECDSA certificate (Istio's use for the field), and each client is shown the one it
can verify with what it offers, as ``openssl s_client`` reports it."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.certs import make_ca, make_cert

from .mesh import Mesh, free_port, wait_until
from .test_gateway_tls import applied, served_certificate, service
from .tls_helpers import create_tls_secret, write_pem

pytestmark = pytest.mark.e2e


def key_type_shown(port: int, sni: str, cipher: str) -> str:
    """The key type of the certificate a TLS 1.2 client offering only ``cipher`` is shown:
    ``RSA``, ``EC``, or ``none`` when the handshake fails."""
    cert = served_certificate(port, sni, "-tls1_2", "-cipher", cipher)
    if cert is None:
        return "none"
    return "RSA" if isinstance(cert.public_key(), rsa.RSAPublicKey) else "EC"


def test_credential_names_serve_rsa_and_ecdsa_clients_each_their_certificate(
    mesh: Mesh, tmp_path: Path
) -> None:
    mesh.run("reviews", "v1")
    mesh.gateway("edge", {"edge": "tls-two-certs"})
    ca = make_ca("shop-ca")
    ca_file, _ = write_pem(tmp_path, "shop-ca", ca)
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsa_cert = make_cert("shop.example.com", issuer=ca, key=rsa_key)
    create_tls_secret(mesh, "shop-rsa", *write_pem(tmp_path, "rsa", rsa_cert))
    ecdsa = make_cert("shop.example.com", issuer=ca)
    create_tls_secret(mesh, "shop-ecdsa", *write_pem(tmp_path, "ecdsa", ecdsa))
    port = free_port()
    stderr = applied(
        mesh,
        f"""
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: shop}}
spec:
  selector: {{edge: tls-two-certs}}
  servers:
  - port: {{number: {port}, name: https, protocol: HTTPS}}
    hosts: [shop.example.com]
    tls: {{mode: SIMPLE, credentialNames: [shop-rsa, shop-ecdsa]}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: shop}}
spec:
  hosts: [shop.example.com]
  gateways: [shop]
  http:
  - route: [{{destination: {{host: reviews, port: {{number: 9080}}}}}}]
""",
    )
    assert "not supported" not in stderr, stderr
    wait_until(
        lambda: service(port, "shop.example.com", ca_file) == "reviews",
        what="shop.example.com over HTTPS",
    )
    # A client that can only verify RSA signatures gets the RSA certificate, an ECDSA-only
    # client the ECDSA one: both credentials are served, on one server.
    assert key_type_shown(port, "shop.example.com", "ECDHE-RSA-AES128-GCM-SHA256") == "RSA"
    assert key_type_shown(port, "shop.example.com", "ECDHE-ECDSA-AES128-GCM-SHA256") == "EC"
