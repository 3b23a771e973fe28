"""Egress through a sidecar's HTTP proxy: the outbound traffic policy, ServiceEntries of every
resolution, and TLS origination, against servers this test starts on loopback.

An "external" host is a name that resolves to loopback without editing /etc/hosts:
``localhost`` itself, an IP literal, or an invented name (``api.example.test``) that a
ServiceEntry gives a STATIC endpoint on 127.0.0.1.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.certs import make_ca, make_cert

from .mesh import (
    Mesh,
    free_port,
    outside_echo,
    outside_https_echo,
    started_mesh,
    stop,
    wait_until,
)
from .test_gateway import accepts
from .tls_helpers import write_pem

pytestmark = pytest.mark.e2e


@pytest.fixture
def outside() -> Iterator[tuple[int, int]]:
    """Two plain HTTP servers outside the mesh: ``outside-1`` and ``outside-2``, by port."""
    ports = free_port(), free_port()
    procs = [outside_echo(f"outside-{i + 1}", p) for i, p in enumerate(ports)]
    try:
        yield ports
    finally:
        for p in procs:
            stop(p)


@pytest.fixture
def locked_mesh(tmp_path: Path) -> Iterator[Mesh]:
    """A mesh whose sidecars only reach hosts the registry knows, logging every request."""
    yield from started_mesh(tmp_path, "--outbound-policy", "REGISTRY_ONLY", "--access-log", "text")


@pytest.fixture
def logged_mesh(tmp_path: Path) -> Iterator[Mesh]:
    """A mesh whose sidecars log every request (Istio's text access log)."""
    yield from started_mesh(tmp_path, "--access-log", "text")


def _name(answer: tuple[int, object]) -> str:
    status, body = answer
    return body["name"] if status == 200 and isinstance(body, dict) else f"{status} {body}"


def _curl(proxy_port: int, url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    """``curl`` through the sidecar, as an app with ``HTTP_PROXY`` set would call."""
    proxy = f"http://127.0.0.1:{proxy_port}"
    return subprocess.run(
        ["curl", "-sS", "--max-time", "10", "--proxy", proxy, *extra, url],
        capture_output=True,
        text=True,
        check=False,
    )


# --------------------------------------------------------------------------- policy


def test_allow_any_passes_a_host_the_mesh_does_not_know(
    mesh: Mesh, outside: tuple[int, int]
) -> None:
    client = mesh.client()
    # Istio's default: no ServiceEntry needed; the request goes where its name resolves.
    assert _name(client.get(f"localhost:{outside[0]}")) == "outside-1"
    assert _name(client.get(f"127.0.0.1:{outside[1]}")) == "outside-2"
    # A host outside the mesh never learns which workload calls it.
    status, body = client.get(f"localhost:{outside[0]}")
    assert status == 200 and isinstance(body, dict) and "x-tsunagi-peer" not in body["headers"]


def test_registry_only_answers_502_until_a_service_entry_declares_the_host(
    locked_mesh: Mesh, outside: tuple[int, int]
) -> None:
    mesh = locked_mesh
    client = mesh.client()
    status, body = client.get(f"localhost:{outside[0]}")
    assert status == 502 and "REGISTRY_ONLY" in str(body), body
    # The access log says why: Istio's block_all route answered directly.
    log = (mesh.state_dir / f"{client.name}.log").read_text
    wait_until(lambda: "block_all" in log(), what="the access log line")
    line = next(ln for ln in log().splitlines() if "block_all" in ln)
    assert " 502 - direct_response " in line, line

    # resolution NONE: the declared host and port pass through to where the name resolves.
    entry = f"""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: local}}
spec:
  hosts: [localhost]
  location: MESH_EXTERNAL
  resolution: NONE
  ports: [{{number: {outside[0]}, name: http, protocol: HTTP}}]
"""
    assert mesh.apply(entry, "--wait").returncode == 0
    wait_until(lambda: _name(client.get(f"localhost:{outside[0]}")) == "outside-1", what="NONE")
    # Another port of the same name is still not declared.
    assert client.get(f"localhost:{outside[1]}")[0] == 502

    # A Sidecar resource overrides the mesh's policy for its namespace's workloads.
    sidecar = """
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: default}
spec:
  outboundTrafficPolicy: {mode: ALLOW_ANY}
"""
    applied = mesh.apply(sidecar, "--wait")
    assert applied.returncode == 0 and "outboundTrafficPolicy" not in applied.stderr
    wait_until(
        lambda: _name(client.get(f"localhost:{outside[1]}")) == "outside-2", what="ALLOW_ANY"
    )


# --------------------------------------------------------------------------- ServiceEntry


def test_service_entries_static_endpoints_addresses_and_workload_selector(
    mesh: Mesh, outside: tuple[int, int]
) -> None:
    legacy = mesh.run("legacy", "v1", 9080, "echo.py", True, "--label", "tier=old")
    client = mesh.client()
    entries = f"""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: api}}
spec:
  hosts: [api.example.test]
  addresses: [240.0.0.1, 240.1.0.0/16]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  endpoints:
  - {{address: 127.0.0.1, ports: {{http: {outside[0]}}}}}
  - {{address: 127.0.0.1, ports: {{http: {outside[1]}}}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: legacy-vms}}
spec:
  hosts: [legacy.internal.test]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  workloadSelector: {{labels: {{tier: old}}}}
"""
    applied = mesh.apply(entries, "--wait")
    assert applied.returncode == 0, applied.stderr
    seen = {_name(client.get("api.example.test")) for _ in range(20)}
    assert seen == {"outside-1", "outside-2"}
    # An address of the entry, alone or inside its range, reaches the entry's endpoints.
    for authority in ("240.0.0.1", "240.0.0.1:80", "240.1.7.9"):
        assert _name(client.get(authority)) in {"outside-1", "outside-2"}, authority
    # A registered workload the selector picks serves the entry's host.
    assert _name(client.get("legacy.internal.test:9080")) == legacy.name
    # A real client through the proxy, as an app with HTTP_PROXY set.
    curl = _curl(client.outbound_port, "http://api.example.test/")
    assert curl.returncode == 0 and json.loads(curl.stdout)["name"].startswith("outside-")


# --------------------------------------------------------------------------- TLS origination


def _server_cert(tmp: Path, host: str, ca_name: str) -> tuple[Path, Path, Path]:
    """(CA file, certificate file, key file) for ``host``, signed by a new CA."""
    ca = make_ca(ca_name)
    ca_file = tmp / f"{ca_name}.pem"
    ca_file.write_bytes(ca.cert)
    cert_file, key_file = write_pem(tmp, host, make_cert(host, issuer=ca))
    return ca_file, cert_file, key_file


@contextmanager
def _https_echo(tmp: Path, cert: Path, key: Path) -> Iterator[tuple[int, Path]]:
    """``apps/https_echo.py`` as ``secure`` with ``cert`` and ``key``: its port, and its
    output (each hello's SNI)."""
    port = free_port()
    log = tmp / f"secure-{port}.log"
    proc = outside_https_echo("secure", port, cert, key, log)
    try:
        wait_until(lambda: accepts(port), what="the https server")
        yield port, log
    finally:
        stop(proc)


def _origination(port: int, ca: Path) -> str:
    # Istio's "Egress TLS Origination" task: the app calls http://HOST/ (port 80), the
    # sidecar opens TLS to the server's port and checks its certificate against ``ca``.
    return f"""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: secure}}
spec:
  hosts: [secure.example.test]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: {port}}}]
  endpoints: [{{address: 127.0.0.1}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: secure}}
spec:
  host: secure.example.test
  trafficPolicy:
    portLevelSettings:
    - port: {{number: 80}}
      tls: {{mode: SIMPLE, sni: secure.example.test, caCertificates: {ca}}}
"""


def test_tls_origination_verifies_the_server_with_the_given_ca(
    logged_mesh: Mesh, tmp_path: Path
) -> None:
    mesh = logged_mesh
    ca, cert, key = _server_cert(tmp_path, "secure.example.test", "test-ca")
    other_ca, _, _ = _server_cert(tmp_path, "elsewhere.example.test", "other-ca")
    with _https_echo(tmp_path, cert, key) as (port, _):
        client = mesh.client()
        applied = mesh.apply(_origination(port, ca), "--wait")
        assert applied.returncode == 0, applied.stderr
        assert "tls" not in applied.stderr  # enforced: no "not applied" warning
        curl = _curl(client.outbound_port, "http://secure.example.test/")
        assert curl.returncode == 0, curl.stderr
        assert curl.stdout == "secure sni=secure.example.test\n"

        # A CA that did not sign the server's certificate: the sidecar refuses the server.
        assert mesh.apply(_origination(port, other_ca), "--wait").returncode == 0

        wait_until(
            lambda: client.get("secure.example.test")[0] == 503, what="a 503 for a bad certificate"
        )
        # The access log says why: an upstream connection failure (UF), and the TLS error.
        log = (mesh.state_dir / f"{client.name}.log").read_text

        def failures() -> list[str]:
            return [ln for ln in log().splitlines() if '"GET / HTTP/1.1" 503 ' in ln]

        wait_until(failures, what="the access log line of the 503")
        lines = failures()
        flags = lines[-1].split('" 503 ', 1)[1].split()[0].split(",")
        assert "UF" in flags, lines[-1]
        assert "CERTIFICATE_VERIFY_FAILED" in lines[-1], lines[-1]


# --------------------------------------------------------------------------- review fixes


def _headers(answer: tuple[int, object]) -> dict[str, str]:
    status, body = answer
    assert status == 200 and isinstance(body, dict), answer
    headers: dict[str, str] = body["headers"]
    return headers


def _api_entry(port: int) -> str:
    """A STATIC MESH_EXTERNAL ServiceEntry: ``api.example.test`` and the addresses of
    240.1.0.0/16, port 80, sent to 127.0.0.1:``port``."""
    return f"""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: api}}
spec:
  hosts: [api.example.test]
  addresses: [240.1.0.0/16]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: {port}}}]
  endpoints: [{{address: 127.0.0.1}}]
"""


def test_external_hosts_never_learn_the_caller(mesh: Mesh, outside: tuple[int, int]) -> None:
    # A STATIC MESH_EXTERNAL entry and a request by an address of its CIDR range leave the
    # mesh: the caller's identity header is removed there, and kept toward a mesh service.
    mesh.run("inside", "v1", 9080, "echo.py", True)
    client = mesh.client()
    assert mesh.apply(_api_entry(outside[0]), "--wait").returncode == 0
    assert "x-tsunagi-peer" in _headers(client.get("inside:9080"))  # the test can see it
    assert _name(client.get("api.example.test")) == "outside-1"
    assert "x-tsunagi-peer" not in _headers(client.get("api.example.test"))
    assert _name(client.get("240.1.7.9")) == "outside-1"  # the CIDR route
    assert "x-tsunagi-peer" not in _headers(client.get("240.1.7.9"))


def test_registry_only_refuses_what_an_entry_does_not_declare(
    locked_mesh: Mesh, outside: tuple[int, int]
) -> None:
    mesh = locked_mesh
    client = mesh.client()
    assert mesh.apply(_api_entry(outside[0]), "--wait").returncode == 0
    # What the entry declares passes: its host on its port, an address in its range.
    assert _name(client.get("api.example.test")) == "outside-1"
    assert _name(client.get("240.1.255.255")) == "outside-1"
    # Just outside the range, on either side, and the host on a port it does not declare.
    for authority in ("240.2.0.0", "240.0.255.255", "api.example.test:8080"):
        status, body = client.get(authority)
        assert status == 502 and "REGISTRY_ONLY" in str(body), (authority, status, body)


def test_origination_defaults_check_the_host_name_and_the_system_roots(
    mesh: Mesh, tmp_path: Path
) -> None:
    # No sni: the sidecar sends the request's host as SNI and checks the certificate
    # against it (auto SNI and SAN validation), as Istio does.
    good_ca, good_cert, good_key = _server_cert(tmp_path, "secure.example.test", "good-ca")
    ca, cert, key = _server_cert(tmp_path, "elsewhere.example.test", "trusted-ca")
    with (
        _https_echo(tmp_path, good_cert, good_key) as (right, _),
        _https_echo(tmp_path, cert, key) as (wrong, wrong_log),
    ):
        client = mesh.client()

        def without_sni(port: int, ca_file: Path) -> str:
            return _origination(port, ca_file).replace("sni: secure.example.test, ", "")

        assert "sni:" not in without_sni(right, good_ca)
        assert mesh.apply(without_sni(right, good_ca), "--wait").returncode == 0
        status, body = client.get("secure.example.test")
        assert (status, body) == (200, "secure sni=secure.example.test\n")
        # A certificate signed by the trusted CA, for another name: refused.
        assert mesh.apply(without_sni(wrong, ca), "--wait").returncode == 0
        wait_until(
            lambda: client.get("secure.example.test")[0] == 503,
            what="a 503 for a certificate of another name",
        )
        # It came from the handshake with that server, which was asked for the host's name.
        assert "hello sni=secure.example.test" in wrong_log.read_text()

        # Without caCertificates the system's roots decide: a private CA is not one of them.
        # (With sni, so that no SAN check could refuse the server on its own.)
        assert mesh.apply(_origination(right, good_ca), "--wait").returncode == 0
        wait_until(lambda: client.get("secure.example.test")[0] == 200, what="back to 200")
        no_ca = _origination(right, good_ca).replace(f", caCertificates: {good_ca}", "")
        assert "caCertificates" not in no_ca
        assert mesh.apply(no_ca, "--wait").returncode == 0
        wait_until(
            lambda: client.get("secure.example.test")[0] == 503,
            what="a 503 for a server the system roots do not trust",
        )

        # A CA file that is not there: `apply` says so before a sidecar rejects it.
        typo = without_sni(right, tmp_path / "no-such-ca.pem")
        applied = mesh.apply(typo)
        assert applied.returncode == 0
        assert "caCertificates" in applied.stderr and "not a readable file" in applied.stderr


def test_a_passthrough_entry_with_http2_keeps_every_cluster_update(
    mesh: Mesh, outside: tuple[int, int]
) -> None:
    # resolution NONE with an HTTP/2 port: a forward proxy cluster with protocol options,
    # which Envoy would reject, and every other cluster of the same update with it.
    client = mesh.client()
    entries = f"""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: anything-h2}}
spec:
  hosts: ["*.h2.example.test"]
  location: MESH_EXTERNAL
  resolution: NONE
  ports: [{{number: 8080, name: grpc, protocol: GRPC}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: api}}
spec:
  hosts: [api.example.test]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: {outside[0]}}}]
  endpoints: [{{address: 127.0.0.1}}]
"""
    applied = mesh.apply(entries, "--wait")
    assert applied.returncode == 0, applied.stderr
    assert _name(client.get("api.example.test")) == "outside-1"
