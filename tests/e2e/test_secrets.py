"""Secrets end to end: the real CLI against a real control plane (``create secret``,
``get secrets``, kubectl-style YAML, ``delete``), and a real ``tsunagi gateway`` whose Envoy
holds the certificate its Gateway names, renewed in place. Every certificate is made here;
no output anywhere carries a private key."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from tests.certs import leaks, make_ca, make_cert
from tsunagi import proxy_contract as pc

from .mesh import Mesh, Workload, free_port, wait_until
from .tls_helpers import create_tls_secret, renew_tls_secret, write_pem

pytestmark = pytest.mark.e2e


def test_create_get_and_delete_a_tls_secret_without_showing_its_key(
    mesh: Mesh, tmp_path: Path
) -> None:
    server, ca = make_cert("shop.example.com"), make_ca("shop-clients")
    cert, key = write_pem(tmp_path, "shop", server)
    (tmp_path / "ca.crt").write_bytes(ca.cert)
    made = mesh.cli(
        "create", "secret", "tls", "shop-cred", "--cert", str(cert), "--key", str(key),
        "--ca", str(tmp_path / "ca.crt"), "-n", "istio-system",
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert made.stdout.strip() == "secret/shop-cred created"

    table = mesh.cli("get", "secrets", "-n", "istio-system")
    assert table.returncode == 0, table.stderr
    header, row = table.stdout.splitlines()
    for column in ("NAMESPACE", "NAME", "TYPE", "DATA", "SUBJECT", "SANS", "NOT AFTER"):
        assert column in header
    assert "shop-cred" in row and "kubernetes.io/tls" in row
    assert "ca.crt,tls.crt,tls.key" in row
    assert "CN=shop.example.com" in row and "DNS:shop.example.com" in row
    wide = mesh.cli("get", "secret", "shop-cred", "-n", "istio-system", "-o", "wide")
    assert f"{server.serial:x}" in wide.stdout  # SERIAL, as openssl x509 -serial shows it
    for out in (table, wide):
        assert not leaks(out.stdout + out.stderr, server.key)

    as_yaml = mesh.cli("get", "secret", "shop-cred", "-n", "istio-system", "-o", "yaml")
    as_json = mesh.cli("get", "secrets", "-n", "istio-system", "-o", "json")
    for out in (as_yaml, as_json):
        assert out.returncode == 0, out.stderr
        assert not leaks(out.stdout, server.key)
        assert "<redacted>" in out.stdout
    doc = json.loads(as_json.stdout)
    assert base64.b64decode(doc["data"]["tls.crt"]) == server.cert  # certificates are public
    assert doc["data"]["tls.key"] == "<redacted>"

    # kubectl's habit: create refuses what exists
    again = mesh.cli(
        "create", "secret", "tls", "shop-cred", "--cert", str(cert), "--key", str(key),
        "-n", "istio-system",
    )  # fmt: skip
    assert again.returncode == 1 and "already exists" in again.stderr

    gone = mesh.cli("delete", "secret", "shop-cred", "-n", "istio-system")
    assert gone.returncode == 0, gone.stderr
    listed = mesh.cli("get", "secrets", "-n", "istio-system")
    assert listed.stdout.strip() == "No resources found."


def test_a_key_that_is_not_the_certificates_is_refused_naming_its_field(
    mesh: Mesh, tmp_path: Path
) -> None:
    server, other = make_cert("a.example.com"), make_cert("b.example.com")
    cert, _ = write_pem(tmp_path, "a", server)
    _, wrong = write_pem(tmp_path, "b", other)
    refused = mesh.cli(
        "create", "secret", "tls", "a-cred", "--cert", str(cert), "--key", str(wrong)
    )
    assert refused.returncode == 1
    assert 'data["tls.key"]: the private key does not match the certificate' in refused.stderr
    assert str(wrong) in refused.stderr  # which file that key came from
    assert not leaks(refused.stdout + refused.stderr, other.key)
    assert mesh.cli("get", "secrets").stdout.strip() == "No resources found."

    # a kubectl-made YAML with a key that is not base64: refused by file, field and reason
    bad = (
        "apiVersion: v1\nkind: Secret\nmetadata: {name: y}\ntype: kubernetes.io/tls\n"
        f"data:\n  tls.crt: {base64.b64encode(server.cert).decode()}\n  tls.key: '%%%'\n"
    )
    applied = mesh.apply(bad)
    assert applied.returncode == 1
    assert '<stdin>: document 1 (Secret default/y): data["tls.key"]: is not valid base64' in (
        applied.stderr
    )


def test_kubectl_yaml_and_generic_secrets_apply(mesh: Mesh, tmp_path: Path) -> None:
    server, ca = make_cert("g.example.com"), make_ca()
    cert, key = write_pem(tmp_path, "g", server)
    (tmp_path / "ca.pem").write_bytes(ca.cert)
    # `kubectl create secret tls ... --dry-run=client -o yaml`, which ours prints too
    printed = mesh.cli(
        "create", "secret", "tls", "kube", "--cert", str(cert), "--key", str(key),
        "--dry-run=client", "-o", "yaml",
    )  # fmt: skip
    assert printed.returncode == 0 and "kind: Secret" in printed.stdout
    applied = mesh.apply(printed.stdout)
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.strip() == "secret/kube created"

    generic = mesh.cli(
        "create", "secret", "generic", "gen", f"--from-file=cert={cert}",
        f"--from-file=key={key}", f"--from-file=cacert={tmp_path / 'ca.pem'}",
    )  # fmt: skip
    assert generic.returncode == 0, generic.stderr
    row = next(ln for ln in mesh.cli("get", "secrets").stdout.splitlines() if "gen " in ln)
    assert "Opaque" in row and "cacert,cert,key" in row and "CN=g.example.com" in row


def _sds_secrets(gw: Workload) -> dict[str, dict[str, object]]:
    """The secrets the gateway's Envoy holds from xDS (its admin's config dump), by name;
    not its own certificate and trust bundle, which its agent's SDS files hold."""
    dump = gw.envoy_admin("/config_dump?resource=dynamic_active_secrets")
    if not dump:
        return {}
    own = {pc.WORKLOAD_SECRET, pc.ROOT_CA_SECRET}
    return {c["name"]: c for c in json.loads(dump).get("configs", []) if c["name"] not in own}


@pytest.mark.parametrize("xds", ["delta", "sotw"])
def test_the_gateway_that_names_a_credential_holds_it_and_gets_a_renewal(
    mesh: Mesh, tmp_path: Path, xds: str
) -> None:
    mesh.xds_protocol = xds
    first, renewed = make_cert("tls.example.com"), make_cert("tls.example.com")
    cert, key = write_pem(tmp_path, "first", first)
    create_tls_secret(mesh, "edge-cred", cert, key, namespace="edge")
    # The same name in another namespace: a gateway in `edge` must never get this one
    other = make_cert("elsewhere.example.com")
    ocert, okey = write_pem(tmp_path, "other", other)
    assert (
        mesh.cli("create", "secret", "tls", "edge-cred", "--cert", str(ocert), "--key", str(okey))
    ).returncode == 0

    gw = mesh.gateway("edge", {"edge": "tls"}, namespace="edge")
    port = free_port()
    applied = mesh.apply(
        f"""apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: edge-tls, namespace: edge}}
spec:
  selector: {{edge: tls}}
  servers:
  - port: {{number: {port}, name: https, protocol: HTTPS}}
    hosts: ["*"]
    tls: {{mode: SIMPLE, credentialName: edge-cred}}
""",
        "--wait",
    )
    assert applied.returncode == 0, applied.stderr + mesh.log()
    assert "credentialName" not in applied.stderr  # the Secret is there: no warning

    wait_until(lambda: first.serial in _serials(gw), what="the gateway holding edge-cred")
    dump = gw.envoy_admin("/config_dump?resource=dynamic_active_secrets")
    assert not leaks(dump, first.key)  # Envoy redacts it in its dump
    assert list(_sds_secrets(gw)) == ["kubernetes://edge-cred"]
    assert other.serial not in _serials(gw)
    status = mesh.cli("proxy-status").stdout.splitlines()
    assert status[0].split()[-2:] == ["SDS", "REVISION"], status
    row = next(line for line in status if line.startswith(gw.name))
    assert row.split()[-2] == "SYNCED", status

    # Renewed in place (kubectl's idiom): the running gateway takes it, no restart
    envoy = gw.envoy_pid()
    rcert, rkey = write_pem(tmp_path, "renewed", renewed)
    assert "configured" in renew_tls_secret(mesh, "edge-cred", rcert, rkey, "edge")
    wait_until(lambda: _serials(gw) == {renewed.serial}, what="the renewed certificate")
    assert gw.envoy_pid() == envoy
    # no log of the control plane, the gateway's agent or its Envoy holds a key
    logs = "".join(p.read_text(errors="replace") for p in mesh.state_dir.rglob("*.log"))
    assert logs and all(not leaks(logs, pem.key) for pem in (first, renewed, other))
    # the gateway's certificate proved its namespace on xDS: no refusal
    assert "refused an xDS stream" not in logs


def _serials(gw: Workload) -> set[int]:
    """The serial numbers of the certificates the gateway's Envoy serves (admin ``/certs``),
    but its own workload certificate (a SPIFFE URI SAN)."""
    certs = gw.envoy_admin("/certs")
    if not certs:
        return set()
    return {
        int(c["serial_number"], 16)
        for entry in json.loads(certs).get("certificates", [])
        for c in entry.get("cert_chain", [])
        if c.get("serial_number")
        and not any(
            str(san.get("uri", "")).startswith("spiffe://")
            for san in c.get("subject_alt_names", [])
        )
    }
