"""``credentialNames`` at ``tsunagi gateway``, asked with real clients: one server holds an
RSA and an ECDSA certificate (Istio's use for the field), and each client is shown the one it
can verify with what it offers, as ``openssl s_client`` reports it."""

from __future__ import annotations

import datetime
import re
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from tests.certs import make_ca, make_cert

from .mesh import Mesh, free_port, wait_until
from .test_gateway_tls import applied, service
from .tls_helpers import create_tls_secret, write_pem

pytestmark = pytest.mark.e2e


def rsa_cert(cn: str, ca_cert: bytes, ca_key: bytes, tmp: Path) -> tuple[Path, Path]:
    """An RSA leaf for ``cn`` signed by the CA, as ``rsa.crt``/``rsa.key`` in ``tmp``
    (``tests/certs.py`` makes EC keys only)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    signer = serialization.load_pem_private_key(ca_key, password=None)
    assert isinstance(signer, ec.EllipticCurvePrivateKey)
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(x509.load_pem_x509_certificate(ca_cert).subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(cn)]), critical=False)
        .sign(signer, hashes.SHA256())
    )
    crt, pem_key = tmp / "rsa.crt", tmp / "rsa.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem_key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return crt, pem_key


def key_type_shown(port: int, sni: str, cipher: str) -> str:
    """The key type of the certificate a TLS 1.2 client offering only ``cipher`` is shown:
    ``RSA``, ``EC``, or ``none`` when the handshake fails."""
    done = subprocess.run(
        [
            *("openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", sni),
            *("-tls1_2", "-cipher", cipher),
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=30,
    )
    found = re.search(
        rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", done.stdout, re.S
    )
    if not found:
        return "none"
    public = x509.load_pem_x509_certificate(found.group(0)).public_key()
    return "RSA" if isinstance(public, rsa.RSAPublicKey) else "EC"


def test_credential_names_serve_rsa_and_ecdsa_clients_each_their_certificate(
    mesh: Mesh, tmp_path: Path
) -> None:
    mesh.run("reviews", "v1")
    mesh.gateway("edge", {"edge": "tls-two-certs"})
    ca = make_ca("shop-ca")
    ca_file, _ = write_pem(tmp_path, "shop-ca", ca)
    create_tls_secret(mesh, "shop-rsa", *rsa_cert("shop.example.com", ca.cert, ca.key, tmp_path))
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
