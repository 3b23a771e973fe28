"""``tsunagi proxy-config secret`` end to end: a real control plane, a real ``tsunagi gateway``
holding the certificate its Gateway names, renewed in place; what the command lists agrees
with what the gateway's Envoy itself says it serves (admin ``/certs``). No output carries a
private key."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.certs import leaks, make_cert

from .mesh import Mesh, free_port, started_mesh, wait_until
from .test_secrets import _serials
from .test_workload_identity import served_serials
from .tls_helpers import create_tls_secret, renew_tls_secret, write_pem

pytestmark = pytest.mark.e2e

CRED = "kubernetes://edge-cred"


def _rows(mesh: Mesh, *proxy: str) -> dict[str, dict[str, Any]]:
    out = mesh.cli("proxy-config", "secret", *proxy, "-o", "json")
    assert out.returncode == 0, out.stderr
    return {s["name"]: s for s in json.loads(out.stdout)["secrets"]}


def _active_serial(mesh: Mesh, proxy: str) -> str:
    row = _rows(mesh, proxy).get(CRED)
    return row["serial_number"] if row and row["status"] == "ACTIVE" else ""


def test_proxy_config_secret_lists_what_the_gateway_holds(mesh: Mesh, tmp_path: Path) -> None:
    first, renewed = make_cert("tls.example.com"), make_cert("tls.example.com")
    cert, key = write_pem(tmp_path, "first", first)
    create_tls_secret(mesh, "edge-cred", cert, key, namespace="edge")
    gw = mesh.gateway("edge", {"edge": "tls"}, namespace="edge")
    proxy = f"{gw.name}.edge"  # as proxy-status names it
    applied = mesh.apply(
        f"""apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: edge-tls, namespace: edge}}
spec:
  selector: {{edge: tls}}
  servers:
  - port: {{number: {free_port()}, name: https, protocol: HTTPS}}
    hosts: ["*"]
    tls: {{mode: SIMPLE, credentialName: edge-cred}}
""",
        "--wait",
    )
    assert applied.returncode == 0, applied.stderr + mesh.log()

    wait_until(lambda: _active_serial(mesh, proxy) == f"{first.serial:x}", what="ACTIVE")
    assert _serials(gw) == {first.serial}  # what Envoy itself serves

    table = mesh.cli("proxy-config", "secret", proxy)
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split("   ")[0] == "RESOURCE NAME"
    for column in ("TYPE", "STATUS", "VALID CERT", "SERIAL NUMBER", "NOT AFTER", "NOT BEFORE"):
        assert column in header
    # its own certificate and trust bundle first (as istioctl), then the credential
    assert [r.split()[0] for r in rows] == ["default", "ROOTCA", CRED]
    assert [r.split()[:6] for r in rows if r.startswith(CRED)] == [
        [CRED, "Cert", "Chain", "ACTIVE", "true", f"{first.serial:x}"]
    ]
    # NAME with its namespace apart, as istioctl's -n
    short = mesh.cli("proxy-config", "secret", gw.name, "-n", "edge")
    assert short.returncode == 0 and short.stdout == table.stdout, short.stderr

    as_yaml = mesh.cli("proxy-config", "secret", proxy, "-o", "yaml")
    as_json = mesh.cli("proxy-config", "secret", proxy, "-o", "json")
    for doc in (yaml.safe_load(as_yaml.stdout), json.loads(as_json.stdout)):
        row = {s["name"]: s for s in doc["secrets"]}[CRED]
        assert doc["proxy"] == proxy and row["subject"] == "CN=tls.example.com"
        assert row["sans"] == ["DNS:tls.example.com"] and row["issuer"] == "CN=tls.example.com"
        assert row["source"] == "control-plane" and row["valid"] is True
    for out in (table, short, as_yaml, as_json):
        assert not leaks(out.stdout + out.stderr, first.key)

    # Renewed in place: the row follows, once the gateway ACKed the new certificate
    rcert, rkey = write_pem(tmp_path, "renewed", renewed)
    renew_tls_secret(mesh, "edge-cred", rcert, rkey, "edge")
    wait_until(lambda: _active_serial(mesh, proxy) == f"{renewed.serial:x}", what="renewal")
    wait_until(lambda: _serials(gw) == {renewed.serial}, what="Envoy serving the renewal")
    after = mesh.cli("proxy-config", "secret", proxy, "-o", "json")
    assert not leaks(after.stdout, renewed.key) and f"{first.serial:x}" not in after.stdout


def test_an_unknown_proxy_is_refused_and_a_sidecar_holds_only_its_own_certificate(
    mesh: Mesh,
) -> None:
    client = mesh.client()
    unknown = mesh.cli("proxy-config", "secret", "nope")
    assert unknown.returncode == 1 and unknown.stdout == ""
    assert "no proxy" in unknown.stderr and "proxy-status" in unknown.stderr
    assert f"{client.name}.default" in unknown.stderr  # the names it could have given

    # The sidecar's name as given to `tsunagi run --name` (namespace default)
    own = mesh.cli("proxy-config", "secret", client.name)
    assert own.returncode == 0, own.stderr
    assert [r.split()[:3] for r in own.stdout.splitlines()[1:]] == [
        ["default", "Cert", "Chain"],
        ["ROOTCA", "CA", "ACTIVE"],
    ]
    rows = _rows(mesh, client.name)
    assert list(rows) == ["default", "ROOTCA"]  # no pushed Secret: a sidecar gets none
    assert rows["default"]["sans"] == ["URI:spiffe://cluster.local/ns/default/sa/client"]


def test_a_credential_the_gateway_asks_for_but_that_is_missing_is_warming(mesh: Mesh) -> None:
    gw = mesh.gateway("edge", {"edge": "lost"}, namespace="edge")
    proxy = f"{gw.name}.edge"
    applied = mesh.apply(
        f"""apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: lost, namespace: edge}}
spec:
  selector: {{edge: lost}}
  servers:
  - port: {{number: {free_port()}, name: https, protocol: HTTPS}}
    hosts: ["*"]
    tls: {{mode: SIMPLE, credentialName: no-such-cred}}
"""
    )
    assert applied.returncode == 0, applied.stderr
    missing = "kubernetes://no-such-cred"
    wait_until(lambda: missing in _rows(mesh, proxy), what="Envoy asking for the credential")
    row = _rows(mesh, proxy)[missing]
    assert (row["status"], row["valid"], row["certificates"]) == ("WARMING", False, [])
    table = mesh.cli("proxy-config", "secret", proxy).stdout
    # the note under the table
    assert f"{missing}: " in table and "no usable Secret no-such-cred in namespace edge" in table


@pytest.fixture
def short_lived(tmp_path: Path) -> Any:
    """A mesh whose workload certificates live 20 seconds (renewed at 10)."""
    yield from started_mesh(tmp_path, "--workload-cert-ttl", "20s")


def test_proxy_config_secret_shows_the_sidecars_own_certificate_and_its_rotation(
    short_lived: Mesh,
) -> None:
    """``default`` is the certificate the agent got for its proxy: the serial Envoy itself
    serves (admin ``/certs``), its SPIFFE ID; after a renewal (20 s certificates), the new one."""
    mesh = short_lived
    web = mesh.run("web", "v1", 9080, "echo.py", True, "--service-account", "web-sa")

    def own() -> dict[str, Any]:
        return _rows(mesh, f"{web.name}.default")["default"]

    first = own()
    assert (first["type"], first["status"], first["valid"]) == ("Cert Chain", "ACTIVE", True)
    assert first["sans"] == ["URI:spiffe://cluster.local/ns/default/sa/web-sa"]
    assert first["source"] == "agent"
    assert int(first["serial_number"], 16) in served_serials(web)
    roots = _rows(mesh, f"{web.name}.default")["ROOTCA"]
    assert roots["type"] == "CA" and roots["serial_number"]

    wait_until(
        lambda: own()["serial_number"] != first["serial_number"], timeout=40, what="a renewal"
    )
    renewed = own()["serial_number"]
    wait_until(lambda: int(renewed, 16) in served_serials(web), what="Envoy serving the renewal")
    assert first["serial_number"] != renewed
