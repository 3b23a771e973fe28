"""The CA and workload tokens against a real ``tsunagi up``: certificates signed for CSRs
that ``openssl req`` made, read back with ``openssl x509`` and ``openssl verify``; what the
admin token and a ``tsunagi token create`` token may obtain; the CA's files; a restart; an
operator's plug-in CA."""

from __future__ import annotations

import datetime
import http.client
import json
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .mesh import Mesh, started_mesh, stop, wait_until

pytestmark = pytest.mark.e2e


def call(
    mesh: Mesh, method: str, path: str, token: str | None, body: Any = None
) -> tuple[int, Any]:
    c = http.client.HTTPConnection("127.0.0.1", mesh.api_port, timeout=30)
    try:
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        c.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
        r = c.getresponse()
        return r.status, json.loads(r.read())
    finally:
        c.close()


def openssl_csr(tmp_path: Path, spiffe_id: str = "") -> str:
    """A P-256 key and its CSR, made by ``openssl`` as any workload could."""
    key = tmp_path / "workload-key.pem"
    csr = tmp_path / "workload.csr"
    subprocess.run(
        ["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(key)],
        check=True,
        timeout=30,
    )
    extra = ["-addext", f"subjectAltName=URI:{spiffe_id}"] if spiffe_id else []
    subprocess.run(
        ["openssl", "req", "-new", "-key", str(key), "-subj", "/CN=ignored", *extra,
         "-out", str(csr)],
        check=True,
        timeout=30,
    )  # fmt: skip
    return csr.read_text()


def certificate(
    mesh: Mesh, tmp_path: Path, token: str, ns: str = "default", sa: str = "web"
) -> tuple[int, Any]:
    body = {"csr": openssl_csr(tmp_path), "namespace": ns, "serviceAccount": sa}
    return call(mesh, "POST", "/v1/certificates", token, body)


def openssl(*args: str, stdin: str = "") -> str:
    out = subprocess.run(
        ["openssl", *args], input=stdin, capture_output=True, text=True, timeout=30
    )
    return out.stdout + out.stderr


def verified(tmp_path: Path, reply: dict[str, Any], root: str | None = None) -> str:
    """``openssl verify`` of the reply's leaf against ``root`` (else the reply's bundle),
    with the reply's intermediates as untrusted links."""
    certs = x509.load_pem_x509_certificates(reply["certificateChain"].encode())
    pem = [c.public_bytes(serialization.Encoding.PEM).decode() for c in certs]
    (tmp_path / "leaf.pem").write_text(pem[0])
    (tmp_path / "bundle.pem").write_text(root or reply["rootCertificates"])
    args = ["verify", "-CAfile", str(tmp_path / "bundle.pem")]
    if pem[1:]:
        (tmp_path / "inter.pem").write_text("".join(pem[1:]))
        args += ["-untrusted", str(tmp_path / "inter.pem")]
    return openssl(*args, str(tmp_path / "leaf.pem"))


def test_the_admin_token_obtains_any_identity(mesh: Mesh, tmp_path: Path) -> None:
    for ns, sa in (("default", "web"), ("prod", "db")):
        status, reply = certificate(mesh, tmp_path, mesh.token(), ns, sa)
        assert status == 200, reply
        wanted = f"spiffe://cluster.local/ns/{ns}/sa/{sa}"
        assert reply["spiffeId"] == wanted
        text = openssl("x509", "-noout", "-text", stdin=reply["certificateChain"])
        assert f"URI:{wanted}" in text and "CN=ignored" not in text
        assert "CA:FALSE" in text and "TLS Web Client Authentication" in text
        assert verified(tmp_path, reply).strip().endswith("OK")
        serial = openssl("x509", "-noout", "-serial", stdin=reply["certificateChain"])
        assert int(serial.strip().split("=")[1], 16) == int(reply["serial"], 16)


def test_a_workload_token_gets_its_own_identity_and_nothing_more(
    mesh: Mesh, tmp_path: Path
) -> None:
    made = mesh.cli("token", "create", "--namespace", "default", "--service-account", "web")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert "\n" not in token and "spiffe://cluster.local/ns/default/sa/web" in made.stderr

    status, reply = certificate(mesh, tmp_path, token)
    assert status == 200 and reply["spiffeId"] == "spiffe://cluster.local/ns/default/sa/web"
    status, reply = certificate(mesh, tmp_path, token, sa="db")
    assert status == 403
    assert "may obtain only spiffe://cluster.local/ns/default/sa/web" in reply["error"]

    # Admin routes: the CLI exits 1 and says what the token is for.
    applied = mesh.cli("apply", "-f", "-", "--token", token, stdin="kind: X\n")
    assert applied.returncode == 1
    assert "not allowed with a workload token for namespace 'default'" in applied.stderr
    listed = mesh.cli("get", "vs", "--token", token)
    assert listed.returncode == 1 and "workload token" in listed.stderr
    # A workload token may not make tokens.
    again = mesh.cli("token", "create", "-n", "default", "--service-account", "x", "--token", token)
    assert again.returncode == 1 and "POST /v1/tokens is not allowed" in again.stderr


def test_missing_and_wrong_tokens_are_401(mesh: Mesh, tmp_path: Path) -> None:
    body = {"csr": openssl_csr(tmp_path), "namespace": "default", "serviceAccount": "web"}
    status, reply = call(mesh, "POST", "/v1/certificates", None, body)
    assert status == 401 and "missing token" in reply["error"]
    for wrong in ("wrong", "tsw1.e30.AAAA"):
        status, reply = call(mesh, "POST", "/v1/certificates", wrong, body)
        assert status == 401 and "unknown token" in reply["error"]


def test_bad_csrs_are_400(mesh: Mesh, tmp_path: Path) -> None:
    other = "spiffe://cluster.local/ns/default/sa/db"
    body = {"csr": openssl_csr(tmp_path, other), "namespace": "default", "serviceAccount": "web"}
    status, reply = call(mesh, "POST", "/v1/certificates", mesh.token(), body)
    assert status == 400 and f"URI:{other}" in reply["error"]
    rsa_key = tmp_path / "small.pem"
    subprocess.run(["openssl", "genrsa", "-out", str(rsa_key), "1024"], check=True, timeout=60)
    small = openssl("req", "-new", "-key", str(rsa_key), "-subj", "/CN=x")
    body["csr"] = small
    status, reply = call(mesh, "POST", "/v1/certificates", mesh.token(), body)
    assert status == 400 and "RSA of 1024 bits" in reply["error"]


def test_the_root_is_private_and_survives_a_restart_as_do_tokens(
    mesh: Mesh, tmp_path: Path
) -> None:
    ca = mesh.state_dir / "ca"
    assert stat.S_IMODE(ca.stat().st_mode) == 0o700
    assert stat.S_IMODE((ca / "ca-key.pem").stat().st_mode) == 0o600
    token = mesh.cli("token", "create", "-n", "default", "--service-account", "web").stdout.strip()
    _, before = certificate(mesh, tmp_path, mesh.token())
    mesh.down()
    mesh.up()
    status, after = certificate(mesh, tmp_path, token)
    assert status == 200
    assert after["rootCertificates"] == before["rootCertificates"]
    # What was signed before the restart still verifies against the bundle after it.
    assert verified(tmp_path, before, after["rootCertificates"]).strip().endswith("OK")


# ----------------------------------------------------------------------------- plug-in CA


def _ca(
    name: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[x509.Certificate, Any] | None = None
) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_name, signer = (issuer[0].subject, issuer[1]) if issuer else (subject, key)
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(signer, hashes.SHA256())
    )


@pytest.fixture
def cacerts(tmp_path: Path) -> dict[str, Path]:
    """An operator's root and an intermediate under it, as Istio's plug-in cacerts files."""
    d = tmp_path / "cacerts"
    d.mkdir()
    root_key, inter_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    root = _ca("operator root", root_key)
    inter = _ca("operator intermediate", inter_key, (root, root_key))
    pem = serialization.Encoding.PEM
    files = {
        "cert": inter.public_bytes(pem),
        "key": inter_key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
        "chain": inter.public_bytes(pem) + root.public_bytes(pem),
        "root": root.public_bytes(pem),
    }
    out = {}
    for name, data in files.items():
        out[name] = d / f"{name}.pem"
        out[name].write_bytes(data)
    return out


@pytest.fixture
def plugged(tmp_path: Path, cacerts: dict[str, Path]) -> Iterator[Mesh]:
    yield from started_mesh(
        tmp_path,
        "--ca-cert", str(cacerts["cert"]), "--ca-key", str(cacerts["key"]),
        "--ca-chain", str(cacerts["chain"]), "--trust-domain", "example.org",
        "--workload-cert-ttl", "90m",
    )  # fmt: skip


def test_a_plug_in_ca_signs_leaves_that_verify_to_the_operators_root(
    plugged: Mesh, cacerts: dict[str, Path], tmp_path: Path
) -> None:
    status, reply = certificate(plugged, tmp_path, plugged.token())
    assert status == 200, reply
    assert reply["spiffeId"] == "spiffe://example.org/ns/default/sa/web"
    assert reply["rootCertificates"] == cacerts["root"].read_text()
    assert reply["notAfter"] - reply["notBefore"] == 95 * 60  # 90m, started 5 minutes back
    assert verified(tmp_path, reply, cacerts["root"].read_text()).strip().endswith("OK")
    assert not (plugged.state_dir / "ca").exists()  # no root of its own was made
    # istiod's CA metrics: the root's expiry, requests and certificates signed.
    c = http.client.HTTPConnection("127.0.0.1", plugged.api_port, timeout=30)
    try:
        c.request("GET", "/metrics", headers={"Authorization": f"Bearer {plugged.token()}"})
        text = c.getresponse().read().decode()
    finally:
        c.close()
    root = x509.load_pem_x509_certificate(cacerts["root"].read_bytes())
    expiry = next(
        float(line.split()[1])
        for line in text.splitlines()
        if line.startswith("citadel_server_root_cert_expiry_timestamp ")
    )
    assert expiry == root.not_valid_after_utc.timestamp()
    assert "\ncitadel_server_success_cert_issuance_count 1\n" in text


def test_up_refuses_plug_in_files_that_do_not_fit(tmp_path: Path, cacerts: dict[str, Path]) -> None:
    def up(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "tsunagi.cli.main", "up", "--state-dir",
             str(tmp_path / "state"), "--api-port", "0", "--xds-port", "0",
             "--dashboard-port", "0", "--zipkin-port", "0", "--otlp-port", "0", *args],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    no_chain = up("--ca-cert", str(cacerts["cert"]), "--ca-key", str(cacerts["key"]))
    assert no_chain.returncode == 1
    assert f"{cacerts['cert']} is not self-signed" in no_chain.stderr
    assert "--ca-chain" in no_chain.stderr
    wrong_key = up("--ca-cert", str(cacerts["root"]), "--ca-key", str(cacerts["key"]))
    assert wrong_key.returncode == 1 and "is not the key of" in wrong_key.stderr
    alone = up("--ca-cert", str(cacerts["cert"]))
    assert alone.returncode == 2 and "--ca-cert needs --ca-key" in alone.stderr
    bad_domain = up("--trust-domain", "Not A Domain")
    assert bad_domain.returncode == 2 and "--trust-domain" in bad_domain.stderr


# ----------------------------------------------------------------------------- sidecars


def test_a_sidecar_runs_on_its_own_workload_token_and_no_other(mesh: Mesh) -> None:
    def token(sa: str) -> str:
        made = mesh.cli("token", "create", "-n", "default", "--service-account", sa)
        assert made.returncode == 0, made.stderr
        return made.stdout.strip()

    web = mesh.run("web", "v1", 9080, "echo.py", True, "--token", token("web"))
    client = mesh.client()
    wait_until(lambda: client.get("web:9080")[0] == 200, what="web answers through the mesh")
    status, body = client.get("web:9080")
    assert status == 200 and isinstance(body, dict) and body["service"] == "web"
    # It leaves as it came: deregistered with its own token.
    stop(web.proc)
    assert web.name not in mesh.workload_names()
    log = (mesh.state_dir / f"{web.name}.log").read_text()
    assert "could not deregister" not in log and "403" not in log

    # A token for another service account cannot start web's sidecar: no certificate.
    refused = mesh.cli(
        "run", "--service", "web", "--port", "9080", "--name", "web-forged",
        "--token", token("db"), "--", sys.executable, "-c", "pass",
        timeout=120,
    )  # fmt: skip
    assert refused.returncode != 0
    assert "may obtain only spiffe://cluster.local/ns/default/sa/db" in refused.stderr
    assert "web-forged" not in mesh.workload_names()
