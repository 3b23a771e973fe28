"""HTTPS from apps through their sidecar: ``tsunagi run`` sets ``HTTPS_PROXY``, clients
send ``CONNECT host:443`` to the sidecar, and the tunnelled TLS is routed by its SNI with
VirtualService ``tls:`` routes (a ServiceEntry host), or by the outbound traffic policy
(a host the mesh does not know).

The "external" services are HTTPS servers the test starts on loopback (apps/https_echo.py),
with a CA and certificate the test makes; each answers with its name and the SNI it saw. The
clients are nobody's here: curl, openssl s_client, Python's requests and httpx.
"""

from __future__ import annotations

import http.client
import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.certs import make_ca, make_cert

from .mesh import Mesh, Workload, free_port, outside_https_echo, started_mesh, stop, wait_until
from .test_gateway import accepts
from .tls_helpers import write_pem

pytestmark = pytest.mark.e2e

NAMES = ("api.example.test", "api-b.example.test", "localhost", "secure.localhost")
"""The server certificate's names. ``*.localhost`` resolves to loopback in Envoy's resolver
(RFC 6761), so it stands for an outside host with a real name."""


@dataclass
class Pki:
    ca: Path
    cert: Path
    key: Path


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    """A CA and a server certificate for :data:`NAMES`, made here (no key is checked in)."""
    ca = make_ca("tsunagi test CA")
    out = Pki(tmp_path / "ca.pem", *write_pem(tmp_path, "server", make_cert(NAMES[0], NAMES, ca)))
    out.ca.write_bytes(ca.cert)
    return out


@pytest.fixture
def logged_mesh(tmp_path: Path) -> Iterator[Mesh]:
    """A mesh whose sidecars log every request and connection (Istio's text access log)."""
    yield from started_mesh(tmp_path, "--access-log", "text")


@pytest.fixture
def servers(pki: Pki, tmp_path: Path) -> Iterator[dict[str, int]]:
    """Two HTTPS servers, ``a`` and ``b``: name → port. Stopped by their pids."""
    procs: list[subprocess.Popen[bytes]] = []
    ports = {}
    try:
        for name in ("a", "b"):
            port = free_port()
            log = tmp_path / f"https-{name}.log"
            procs.append(outside_https_echo(name, port, pki.cert, pki.key, log))
            ports[name] = port
        for name, port in ports.items():
            wait_until(lambda p=port: accepts(p), what=f"https server {name}")
        yield ports
    finally:
        for p in procs:
            stop(p)


def routing(ports: dict[str, int]) -> str:
    """api.example.test:443 (TLS) with endpoints a and b; SNI api-b.example.test goes to b,
    SNI api.example.test is split 50/50."""
    return f"""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: api}}
spec:
  hosts: [api.example.test]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{{number: 443, name: tls, protocol: TLS}}]
  endpoints:
  - {{address: 127.0.0.1, ports: {{tls: {ports["a"]}}}, labels: {{version: a}}}}
  - {{address: 127.0.0.1, ports: {{tls: {ports["b"]}}}, labels: {{version: b}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: api}}
spec:
  host: api.example.test
  subsets:
  - {{name: a, labels: {{version: a}}}}
  - {{name: b, labels: {{version: b}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: api}}
spec:
  hosts: [api.example.test, api-b.example.test]
  tls:
  - match: [{{port: 443, sniHosts: [api-b.example.test]}}]
    route:
    - destination: {{host: api.example.test, subset: b, port: {{number: 443}}}}
  - match: [{{port: 443, sniHosts: [api.example.test]}}]
    route:
    - destination: {{host: api.example.test, subset: a, port: {{number: 443}}}}
      weight: 50
    - destination: {{host: api.example.test, subset: b, port: {{number: 443}}}}
      weight: 50
"""


REGISTRY_ONLY = """
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default}
spec:
  outboundTrafficPolicy: {mode: REGISTRY_ONLY}
"""


def app_environ(w: Workload) -> dict[str, str]:
    """The environment ``tsunagi run`` gave the workload's app (read from /proc)."""
    pid = w.app_pid()
    assert pid is not None
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(v.decode().partition("=")[::2] for v in raw.split(b"\0") if v)


def curl(proxy: str, url: str, ca: Path) -> subprocess.CompletedProcess[str]:
    """``curl --proxy``: a new CONNECT (and TLS connection) per call."""
    return subprocess.run(
        ["curl", "-sS", "--max-time", "10", "--proxy", proxy, "--cacert", str(ca), url],
        capture_output=True,
        text=True,
        timeout=30,
    )


def python_client(env: dict[str, str], library: str, url: str, n: int) -> list[str]:
    """``n`` GETs of ``url`` by ``requests`` or ``httpx`` in a process with ``env`` (the
    proxy from ``HTTPS_PROXY``, as either library reads it by default), one connection
    each; the bodies."""
    if library == "requests":
        call = "requests.get(url, timeout=10).text"
    else:
        call = "httpx.get(url, timeout=10).text"
    script = (
        f"import sys, {library}\nurl = sys.argv[1]\n"
        f"for _ in range({n}):\n    sys.stdout.write({call})\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, url],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def _metrics(log: str) -> str:
    port = int(re.findall(r"metrics on http://127\.0\.0\.1:(\d+)/", log)[0])
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request("GET", "/stats/prometheus")
        return c.getresponse().read().decode()
    finally:
        c.close()


def _tcp_opened_to(metrics: str, host: str) -> int:
    total = 0
    for line in metrics.splitlines():
        if (
            line.startswith("istio_tcp_connections_opened_total{")
            and 'reporter="source"' in line
            and f'destination_service="{host}"' in line
        ):
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


@pytest.mark.skipif(not shutil.which("curl"), reason="needs curl")
def test_https_through_the_sidecar_is_routed_by_sni(
    logged_mesh: Mesh, pki: Pki, servers: dict[str, int]
) -> None:
    mesh = logged_mesh
    stderr = mesh.apply(routing(servers), "--wait")
    assert stderr.returncode == 0, stderr.stderr
    client = mesh.client()
    env = app_environ(client)
    proxy = f"http://127.0.0.1:{client.outbound_port}"
    # What tsunagi run gives the app: HTTPS goes to the same listener as HTTP.
    assert env["HTTPS_PROXY"] == env["https_proxy"] == env["HTTP_PROXY"] == proxy

    wait_until(
        lambda: curl(proxy, "https://api.example.test/", pki.ca).returncode == 0,
        what="HTTPS to api.example.test through the sidecar",
    )
    # The 50/50 split over new connections, seen by curl: all 40 from one server would
    # happen about once in 5 * 10^11 runs with a correct split.
    bodies = [curl(proxy, "https://api.example.test/", pki.ca) for _ in range(40)]
    assert all(b.returncode == 0 for b in bodies), [b.stderr for b in bodies]
    seen = Counter(b.stdout for b in bodies)
    assert set(seen) == {"a sni=api.example.test\n", "b sni=api.example.test\n"}, seen

    # The SNI decides, not the CONNECT target: openssl asks CONNECT api.example.test:443 but
    # says api-b.example.test in its hello, which the tls route sends to b only.
    if shutil.which("openssl"):
        for _ in range(5):
            out = subprocess.run(
                [
                    "openssl",
                    "s_client",
                    "-quiet",
                    "-proxy",
                    f"127.0.0.1:{client.outbound_port}",
                    "-connect",
                    "api.example.test:443",
                    "-servername",
                    "api-b.example.test",
                    "-CAfile",
                    str(pki.ca),
                    "-verify_return_error",
                ],
                input="GET / HTTP/1.0\r\nHost: api-b.example.test\r\n\r\n",
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert "b sni=api-b.example.test" in out.stdout, (out.stdout, out.stderr)

    # Python clients through HTTPS_PROXY from the app's environment, with the test CA.
    py_env = {**env, "REQUESTS_CA_BUNDLE": str(pki.ca), "SSL_CERT_FILE": str(pki.ca)}
    for library in ("requests", "httpx"):
        got = Counter(python_client(py_env, library, "https://api.example.test/", 30))
        assert set(got) == {"a sni=api.example.test", "b sni=api.example.test"}, (library, got)

    # A host the mesh does not know: ALLOW_ANY (the default) tunnels to the CONNECT target.
    # (localhost is in the app's NO_PROXY; curl with --proxy and no NO_PROXY still asks the
    # sidecar.)
    unknown = curl(proxy, f"https://localhost:{servers['a']}/", pki.ca)
    assert unknown.stdout == "a sni=localhost\n", unknown.stderr

    # The sidecar reports the tunnels as outbound TCP connections to the ServiceEntry host
    # (Istio's istio_tcp_* with reporter="source"), and no HTTP request for the tunnel itself.
    log = (mesh.state_dir / f"{client.name}.log").read_text()
    wait_until(
        lambda: _tcp_opened_to(_metrics(log), "api.example.test") >= 40 + 5 + 60,
        what="outbound TCP metrics for the tunnels",
    )
    assert "connect|" not in _metrics(log)

    # The access log has the CONNECT (authority, route) and each tunnelled connection: the
    # cluster the SNI route chose and the SNI itself.
    def logged(*parts: str) -> bool:
        lines = (mesh.state_dir / f"{client.name}.log").read_text().splitlines()
        return any(all(p in ln for p in parts) for ln in lines)

    wait_until(
        lambda: logged('"CONNECT - HTTP/1.1" 200', '"api.example.test:443"'),
        what="the CONNECT in the access log",
    )
    wait_until(
        lambda: logged("outbound|443|b|api.example.test", " api-b.example.test "),
        what="a tunnelled connection routed by SNI in the access log",
    )


@pytest.mark.skipif(not shutil.which("curl"), reason="needs curl")
def test_registry_only_refuses_connect_to_unknown_hosts(
    mesh: Mesh, pki: Pki, servers: dict[str, int]
) -> None:
    applied = mesh.apply(routing(servers) + "---" + REGISTRY_ONLY, "--wait")
    assert applied.returncode == 0, applied.stderr
    client = mesh.client()
    proxy = f"http://127.0.0.1:{client.outbound_port}"
    wait_until(
        lambda: curl(proxy, "https://api.example.test/", pki.ca).returncode == 0,
        what="HTTPS to api.example.test through the sidecar",
    )
    # The CONNECT itself is refused: 502 before any tunnel (curl exits 56 and says so).
    outside = f"https://secure.localhost:{servers['a']}/"
    refused = curl(proxy, outside, pki.ca)
    assert refused.returncode == 56 and "502" in refused.stderr, refused
    # What a client that reads the CONNECT answer sees: the status and why.
    c = http.client.HTTPConnection("127.0.0.1", client.outbound_port, timeout=10)
    try:
        c.request("CONNECT", f"localhost:{servers['a']}")
        resp = c.getresponse()
        body = resp.read().decode()
    finally:
        c.close()
    assert resp.status == 502 and "REGISTRY_ONLY" in body, (resp.status, body)
    # A ServiceEntry host still goes through.
    ok = curl(proxy, "https://api.example.test/", pki.ca)
    assert ok.stdout in ("a sni=api.example.test\n", "b sni=api.example.test\n"), ok

    # Declaring the outside host (resolution NONE: to where its name resolves) lets it through.
    declared = mesh.apply(passthrough_entry(servers["a"]), "--wait")
    assert declared.returncode == 0, declared.stderr
    wait_until(lambda: curl(proxy, outside, pki.ca).returncode == 0, what="the declared host")
    assert curl(proxy, outside, pki.ca).stdout == "a sni=secure.localhost\n"


def passthrough_entry(port: int) -> str:
    return f"""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: secure-localhost}}
spec:
  hosts: [secure.localhost]
  location: MESH_EXTERNAL
  resolution: NONE
  ports: [{{number: {port}, name: tls, protocol: TLS}}]
"""


def sni_routing(ports: dict[str, int]) -> str:
    """api.example.test on port ``a``'s number, its one endpoint server ``b``, a tls route
    that claims SNI api.example.test only; secure.localhost declared on the same port number
    (resolution NONE: where its name resolves, server ``a``). A CONNECT to api.example.test
    that says secure.localhost in its hello must never reach ``a``."""
    return f"""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: api}}
spec:
  hosts: [api.example.test]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{{number: {ports["a"]}, name: tls, protocol: TLS}}]
  endpoints: [{{address: 127.0.0.1, ports: {{tls: {ports["b"]}}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: api}}
spec:
  hosts: [api.example.test]
  tls:
  - match: [{{port: {ports["a"]}, sniHosts: [api.example.test]}}]
    route: [{{destination: {{host: api.example.test, port: {{number: {ports["a"]}}}}}}}]
---
{passthrough_entry(ports["a"])}"""


def s_client(proxy_port: int, target: str, sni: str, ca: Path) -> str:
    """What ``openssl s_client`` gets back for a GET through ``CONNECT target`` with
    ``sni`` in its hello ("" when the tunnel is closed or refused)."""
    out = subprocess.run(
        [
            "openssl",
            "s_client",
            "-quiet",
            "-proxy",
            f"127.0.0.1:{proxy_port}",
            "-connect",
            target,
            "-servername",
            sni,
            "-CAfile",
            str(ca),
            "-verify_return_error",
        ],
        input=f"GET / HTTP/1.0\r\nHost: {sni}\r\n\r\n",
        capture_output=True,
        text=True,
        timeout=30,
    )
    return out.stdout


@pytest.mark.skipif(not shutil.which("openssl"), reason="needs openssl")
def test_a_hello_no_tls_route_claims_follows_the_outbound_policy(
    mesh: Mesh, pki: Pki, servers: dict[str, int]
) -> None:
    applied = mesh.apply(sni_routing(servers), "--wait")
    assert applied.returncode == 0, applied.stderr
    client = mesh.client()
    target = f"api.example.test:{servers['a']}"
    wait_until(
        lambda: "b sni=api.example.test" in s_client(client.outbound_port, target, *_api(pki)),
        what="the tls route of api.example.test",
    )
    # ALLOW_ANY: an SNI no route claims goes on to the CONNECT target, api.example.test (its
    # endpoint is b), never to the host the SNI names (a), as Istio passes it through.
    for _ in range(3):
        got = s_client(client.outbound_port, target, "secure.localhost", pki.ca)
        assert "b sni=secure.localhost" in got, got

    # REGISTRY_ONLY: the same hello is refused (Istio's BlackHoleCluster), and still never
    # reaches the SNI's host, declared as it is.
    blocked = mesh.apply(sni_routing(servers) + "---" + REGISTRY_ONLY, "--wait")
    assert blocked.returncode == 0, blocked.stderr
    wait_until(
        lambda: "sni=" not in s_client(client.outbound_port, target, "secure.localhost", pki.ca),
        what="REGISTRY_ONLY to reach the sidecar",
    )
    for _ in range(3):
        assert "sni=" not in s_client(client.outbound_port, target, "secure.localhost", pki.ca)
    # The claimed SNI still goes to api.example.test, and the SNI's own host stays reachable
    # by its own name.
    assert "b sni=api.example.test" in s_client(client.outbound_port, target, *_api(pki))
    own = f"secure.localhost:{servers['a']}"
    assert "a sni=secure.localhost" in s_client(
        client.outbound_port, own, "secure.localhost", pki.ca
    )


def _api(pki: Pki) -> tuple[str, Path]:
    return "api.example.test", pki.ca


@pytest.mark.skipif(not shutil.which("curl"), reason="needs curl")
def test_a_tunnel_to_an_unknown_host_is_reported_as_tcp(
    mesh: Mesh, pki: Pki, servers: dict[str, int]
) -> None:
    """Istio reports a connection through PassthroughCluster as TCP (istio_tcp_*, the
    destination_service the host asked for), not as an HTTP request."""
    client = mesh.client()
    proxy = f"http://127.0.0.1:{client.outbound_port}"
    for _ in range(3):
        got = curl(proxy, f"https://localhost:{servers['a']}/", pki.ca)
        assert got.stdout == "a sni=localhost\n", got.stderr
    log = mesh.state_dir / f"{client.name}.log"

    def tunnels() -> list[str]:
        return [
            ln
            for ln in _metrics(log.read_text()).splitlines()
            if ln.startswith("istio_tcp_connections_closed_total{")
            and 'reporter="source"' in ln
            and 'destination_service="localhost"' in ln
            and 'destination_service_name="PassthroughCluster"' in ln
        ]

    def closed() -> int:
        return sum(int(float(ln.rsplit(" ", 1)[1])) for ln in tunnels())

    wait_until(lambda: closed() >= 3, what="TCP metrics for the tunnels")
    assert closed() == 3
    metrics = _metrics(log.read_text())
    requests = [ln for ln in metrics.splitlines() if ln.startswith("istio_requests_total{")]
    assert not [ln for ln in requests if "PassthroughCluster" in ln], requests
    sent = [
        ln
        for ln in metrics.splitlines()
        if ln.startswith("istio_tcp_received_bytes_total{") and "PassthroughCluster" in ln
    ]
    assert sent and float(sent[0].rsplit(" ", 1)[1]) > 0, sent
