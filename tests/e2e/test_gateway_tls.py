"""TLS at ``tsunagi gateway``, asked with real clients: ``curl`` (``--resolve`` sends the
name to the gateway's loopback address, ``--cacert`` verifies what it serves, ``--cert``
for MUTUAL, ``--tls-max``/``--tlsv1.3`` for versions, ``--ciphers`` for cipher suites) and
``openssl s_client`` (SNI, and the certificate a client is shown). Every certificate is
made by the test (``tests/certs.py``); the credentials reach the control plane with
``tsunagi create secret tls`` and are renewed the way its help says
(``--dry-run=client -o yaml | tsunagi apply -f -``)."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import threading
from pathlib import Path

import pytest
from cryptography import x509

from tests.certs import make_ca, make_cert

from .mesh import Mesh, free_port, wait_until
from .tls_helpers import create_tls_secret, renew_tls_secret, write_pem

pytestmark = pytest.mark.e2e


def applied(mesh: Mesh, text: str) -> str:
    result = mesh.apply(text, "--wait")
    assert result.returncode == 0, result.stderr
    return result.stderr


def curl(
    port: int, host: str, ca: Path, *extra: str, path: str = "/"
) -> tuple[int, str, dict[str, object] | str]:
    """``curl https://HOST:PORT/PATH`` to the gateway, verifying against ``ca``: (exit code,
    HTTP version, the echo app's JSON, or curl's error)."""
    done = subprocess.run(
        [
            *("curl", "-sS", "--max-time", "10", "--noproxy", "*"),
            *("--resolve", f"{host}:{port}:127.0.0.1", "--cacert", str(ca)),
            *("-w", "\n%{http_version}", *extra, f"https://{host}:{port}{path}"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if done.returncode != 0:
        return done.returncode, "", done.stderr
    body, _, version = done.stdout.rpartition("\n")
    return 0, version, json.loads(body)


def service(port: int, host: str, ca: Path, *extra: str) -> str:
    """Which service answered over HTTPS, or curl's exit code."""
    code, _, body = curl(port, host, ca, *extra)
    return str(body["service"]) if code == 0 and isinstance(body, dict) else f"curl {code}"


def served_certificate(port: int, sni: str, *extra: str) -> x509.Certificate | None:
    """The certificate ``openssl s_client -servername SNI [EXTRA...]`` is shown (None: no
    handshake)."""
    done = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", sni, *extra],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=30,
    )
    found = re.search(
        rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", done.stdout, re.S
    )
    return x509.load_pem_x509_certificate(found.group(0)) if found else None


def openssl_line(port: int, sni: str, ca: Path, line: bytes = b"hello\n") -> bytes:
    """``openssl s_client -servername SNI -CAfile CA -verify_return_error``: send ``line``
    through the TLS session, return the line that comes back (b"" when none does)."""
    proc = subprocess.Popen(
        [
            *("openssl", "s_client", "-quiet", "-verify_return_error"),
            *("-connect", f"127.0.0.1:{port}", "-servername", sni, "-CAfile", str(ca)),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    got: list[bytes] = []
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(line)
        proc.stdin.flush()
        reader = threading.Thread(target=lambda: got.append(proc.stdout.readline()))  # type: ignore[union-attr]
        reader.start()
        reader.join(10)
    except BrokenPipeError:
        pass  # the gateway closed the connection: nothing comes back
    finally:
        proc.kill()
        proc.wait()
    return got[0] if got else b""


def test_simple_serves_each_host_its_certificate_and_renews_it_in_place(
    mesh: Mesh, tmp_path: Path
) -> None:
    mesh.run("reviews", "v1")
    mesh.run("ratings", "v1")
    gw = mesh.gateway("edge", {"edge": "tls-simple"})
    # Two CAs: a client trusting one of them can only reach the host whose certificate it
    # signed, so a success says which certificate the gateway chose by SNI.
    shop_ca, blog_ca = make_ca("shop-ca"), make_ca("blog-ca")
    shop_ca_file, _ = write_pem(tmp_path, "shop-ca", shop_ca)
    blog_ca_file, _ = write_pem(tmp_path, "blog-ca", blog_ca)
    shop = make_cert("shop.example.com", issuer=shop_ca)
    create_tls_secret(mesh, "shop-credential", *write_pem(tmp_path, "shop", shop))
    names = ("blog.example.com", "modern.example.com", "legacy.example.com")
    blog = make_cert("blog.example.com", names, blog_ca)
    create_tls_secret(mesh, "blog-credential", *write_pem(tmp_path, "blog", blog))
    port = free_port()
    stderr = applied(
        mesh,
        f"""
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: secure}}
spec:
  selector: {{edge: tls-simple}}
  servers:
  - port: {{number: {port}, name: https-shop, protocol: HTTPS}}
    hosts: [shop.example.com]
    tls: {{mode: SIMPLE, credentialName: shop-credential}}
  - port: {{number: {port}, name: https-blog, protocol: HTTPS}}
    hosts: [blog.example.com]
    tls: {{mode: SIMPLE, credentialName: blog-credential}}
  - port: {{number: {port}, name: https-modern, protocol: HTTPS}}
    hosts: [modern.example.com]
    tls: {{mode: SIMPLE, credentialName: blog-credential, minProtocolVersion: TLSV1_3}}
  - port: {{number: {port}, name: https-legacy, protocol: HTTPS}}
    hosts: [legacy.example.com]
    tls:
      mode: SIMPLE
      credentialName: blog-credential
      maxProtocolVersion: TLSV1_2
      cipherSuites: [ECDHE-ECDSA-AES256-GCM-SHA384]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: shop}}
spec:
  hosts: [shop.example.com]
  gateways: [secure]
  http:
  - route: [{{destination: {{host: reviews, port: {{number: 9080}}}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: blog}}
spec:
  hosts: [blog.example.com, modern.example.com, legacy.example.com]
  gateways: [secure]
  http:
  - route: [{{destination: {{host: ratings, port: {{number: 9080}}}}}}]
""",
    )
    assert "not applied yet" not in stderr and "not supported" not in stderr, stderr
    wait_until(
        lambda: service(port, "shop.example.com", shop_ca_file) == "reviews",
        what="shop.example.com over HTTPS",
    )
    assert service(port, "blog.example.com", blog_ca_file) == "ratings"
    # The other certificate does not verify: each name got its own.
    assert service(port, "shop.example.com", blog_ca_file) == "curl 60"
    assert service(port, "blog.example.com", shop_ca_file) == "curl 60"
    # ALPN: HTTP/2 when the client offers it, HTTP/1.1 when it does not.
    assert curl(port, "blog.example.com", blog_ca_file, "--http2")[1] == "2"
    assert curl(port, "blog.example.com", blog_ca_file, "--http1.1")[1] == "1.1"
    # minProtocolVersion TLSV1_3: a client that stops at TLS 1.2 is refused, on that name only.
    assert service(port, "modern.example.com", blog_ca_file) == "ratings"
    assert service(port, "modern.example.com", blog_ca_file, "--tls-max", "1.2") == "curl 35"
    assert service(port, "blog.example.com", blog_ca_file, "--tls-max", "1.2") == "ratings"
    # maxProtocolVersion TLSV1_2 and cipherSuites: a TLS 1.3-only client is refused, and a
    # TLS 1.2 client only with the one cipher the server names (blog.example.com takes both).
    aes128, aes256 = (
        ("--ciphers", "ECDHE-ECDSA-AES128-GCM-SHA256"),
        ("--ciphers", "ECDHE-ECDSA-AES256-GCM-SHA384"),
    )
    assert service(port, "legacy.example.com", blog_ca_file, *aes256) == "ratings"
    assert service(port, "legacy.example.com", blog_ca_file, "--tlsv1.3") == "curl 35"
    assert service(port, "legacy.example.com", blog_ca_file, *aes128) == "curl 35"
    assert service(port, "blog.example.com", blog_ca_file, "--tls-max", "1.2", *aes128) == "ratings"

    # Renewed in place: the next connection gets the new certificate, with no restart.
    envoy = gw.envoy_pid()
    first = served_certificate(port, "shop.example.com")
    assert first is not None and first.serial_number == shop.serial
    renewed = make_cert("shop.example.com", issuer=shop_ca)
    cert, key = write_pem(tmp_path, "shop-renewed", renewed)
    renew_tls_secret(mesh, "shop-credential", cert, key)

    def serial() -> int | None:
        c = served_certificate(port, "shop.example.com")
        return c.serial_number if c is not None else None

    wait_until(lambda: serial() == renewed.serial, what="the renewed certificate")
    assert service(port, "shop.example.com", shop_ca_file) == "reviews"
    assert gw.envoy_pid() == envoy and gw.proc.poll() is None


def test_mutual_requires_a_client_certificate_from_the_credential_ca(
    mesh: Mesh, tmp_path: Path
) -> None:
    mesh.run("reviews", "v1")
    mesh.gateway("edge", {"edge": "tls-mutual"})
    server_ca, client_ca, stranger_ca = make_ca("server-ca"), make_ca("client-ca"), make_ca()
    server_ca_file, _ = write_pem(tmp_path, "server-ca", server_ca)
    client_ca_file, _ = write_pem(tmp_path, "client-ca", client_ca)
    server = make_cert("bank.example.com", issuer=server_ca)
    create_tls_secret(mesh, "bank-credential", *write_pem(tmp_path, "bank", server), client_ca_file)
    client_cert, client_key = write_pem(tmp_path, "client", make_cert("client", issuer=client_ca))
    stranger_cert, stranger_key = write_pem(
        tmp_path, "stranger", make_cert("x", issuer=stranger_ca)
    )
    port = free_port()
    applied(
        mesh,
        f"""
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: bank}}
spec:
  selector: {{edge: tls-mutual}}
  servers:
  - port: {{number: {port}, name: https, protocol: HTTPS}}
    hosts: [bank.example.com]
    tls: {{mode: MUTUAL, credentialName: bank-credential}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: bank}}
spec:
  hosts: [bank.example.com]
  gateways: [bank]
  http:
  - route: [{{destination: {{host: reviews, port: {{number: 9080}}}}}}]
""",
    )
    with_cert = ("--cert", str(client_cert), "--key", str(client_key))
    wait_until(
        lambda: service(port, "bank.example.com", server_ca_file, *with_cert) == "reviews",
        what="bank.example.com with a client certificate",
    )
    # No certificate, or one from a CA the credential does not name: refused in the handshake.
    code, _, error = curl(port, "bank.example.com", server_ca_file)
    assert code != 0, error
    stranger = ("--cert", str(stranger_cert), "--key", str(stranger_key))
    code, _, error = curl(port, "bank.example.com", server_ca_file, *stranger)
    assert code != 0, error


def test_passthrough_routes_by_sni_to_the_backends_own_tls(
    mesh: Mesh, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca = make_ca("backend-ca")
    ca_file, _ = write_pem(tmp_path, "backend-ca", ca)
    backend = make_cert("nginx.example.com", issuer=ca)
    cert, key = write_pem(tmp_path, "nginx", backend)
    monkeypatch.setenv("TCP_ECHO_CERT", str(cert))
    monkeypatch.setenv("TCP_ECHO_KEY", str(key))
    mesh.run("nginx", "v1", "443/tls", "tcp_echo.py")  # type: ignore[arg-type]
    monkeypatch.delenv("TCP_ECHO_CERT")
    monkeypatch.delenv("TCP_ECHO_KEY")
    mesh.gateway("edge", {"edge": "tls-passthrough"})
    port = free_port()
    stderr = applied(
        mesh,
        f"""
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: passthrough}}
spec:
  selector: {{edge: tls-passthrough}}
  servers:
  - port: {{number: {port}, name: tls, protocol: TLS}}
    hosts: ["*.example.com"]
    tls: {{mode: PASSTHROUGH}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: nginx}}
spec:
  hosts: [nginx.example.com]
  gateways: [passthrough]
  tls:
  - match: [{{port: {port}, sniHosts: [nginx.example.com]}}]
    route: [{{destination: {{host: nginx, port: {{number: 443}}}}}}]
""",
    )
    assert "not applied yet" not in stderr, stderr
    wait_until(
        lambda: openssl_line(port, "nginx.example.com", ca_file) == b"v1 hello\n",
        what="a line through the passthrough",
    )
    # The certificate the client sees is the backend's own: the gateway holds no key here.
    seen = served_certificate(port, "nginx.example.com")
    assert seen is not None and seen.serial_number == backend.serial
    # A name no tls route matches has no filter chain: no handshake at all.
    assert served_certificate(port, "other.example.com") is None
    assert openssl_line(port, "other.example.com", ca_file) == b""


def test_tcp_and_tls_servers_forward_bytes_along_tcp_routes(mesh: Mesh, tmp_path: Path) -> None:
    mesh.run("tcp-echo", "v1", "9000/tcp", "tcp_echo.py")  # type: ignore[arg-type]
    mesh.gateway("edge", {"edge": "tcp"})
    ca = make_ca("echo-ca")
    ca_file, _ = write_pem(tmp_path, "echo-ca", ca)
    create_tls_secret(
        mesh,
        "echo-credential",
        *write_pem(tmp_path, "echo", make_cert("echo.example.com", issuer=ca)),
    )
    plain, tls = free_port(), free_port()
    applied(
        mesh,
        f"""
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: tcp-echo}}
spec:
  selector: {{edge: tcp}}
  servers:
  - port: {{number: {plain}, name: tcp, protocol: TCP}}
    hosts: ["*"]
  - port: {{number: {tls}, name: tls, protocol: TLS}}
    hosts: [echo.example.com]
    tls: {{mode: SIMPLE, credentialName: echo-credential}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: tcp-echo}}
spec:
  hosts: ["*"]
  gateways: [tcp-echo]
  tcp:
  - route: [{{destination: {{host: tcp-echo, port: {{number: 9000}}}}}}]
""",
    )

    def exchange() -> bytes:
        try:
            with socket.create_connection(("127.0.0.1", plain), timeout=5) as s:
                s.sendall(b"hello\n")
                return s.makefile("rb").readline()
        except OSError:
            return b""

    wait_until(lambda: exchange() == b"v1 hello\n", what="a line through the TCP server")
    # The TLS server ends the TLS with the credential and sends the plain bytes on.
    wait_until(
        lambda: openssl_line(tls, "echo.example.com", ca_file) == b"v1 hello\n",
        what="a line through the TLS server",
    )
