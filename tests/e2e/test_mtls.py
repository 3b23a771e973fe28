"""Automatic mutual TLS end to end, in the shape of Istio's "Mutual TLS Migration" task:
real sidecars with their CA-signed SPIFFE certificates, real Envoy TLS, and clients that
have no sidecar (plain HTTP, ``openssl s_client``) knocking on a sidecar's inbound port,
which is where another sidecar connects.

One mesh for the module (a ``web`` echo server and an idle client, both with sidecars; the
last tests add gateways and a TCP pair); each test applies the PeerAuthentications it needs
with ``--wait`` and deletes them after. Also: Istio's egress gateway with mutual TLS
(DestinationRule and Gateway server ``ISTIO_MUTUAL``), an ingress gateway reaching a STRICT
sidecar, TCP ports.
"""

from __future__ import annotations

import datetime
import http.client
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tsunagi.ca.keystore import self_signed

from .mesh import (
    Mesh,
    Traffic,
    Workload,
    apply_recorded,
    concurrent_gets,
    delete_recorded,
    free_port,
    outside_echo,
    request,
    stop,
    wait_until,
)
from .test_metrics import metrics_port, samples, scrape, total
from .test_tcp import answers, exchange

pytestmark = pytest.mark.e2e

WEB = "web:9080"
TRUST = "spiffe://cluster.local/ns/default/sa"
QUIET = ("-quiet", "-ign_eof")


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Mesh, Workload, Workload]]:
    mesh = Mesh(Path(tmp_path_factory.mktemp("mtls")) / "state")
    mesh.state_dir.mkdir(parents=True)
    mesh.up()
    try:
        web = mesh.run("web", "v1")
        yield mesh, web, mesh.client()
    finally:
        mesh.close()


@pytest.fixture
def policies(live: tuple[Mesh, Workload, Workload]) -> Iterator[list[str]]:
    """Policies a test applies; deleted afterwards (so the next test starts PERMISSIVE)."""
    applied: list[str] = []
    yield applied
    delete_recorded(live[0], applied)


def peer_authentication(name: str, namespace: str, spec: str) -> str:
    return (
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n"
        f"metadata: {{name: {name}, namespace: {namespace}}}\nspec: {spec}\n"
    )


MESH_STRICT = peer_authentication("default", "istio-system", "{mtls: {mode: STRICT}}")


def inbound_port(mesh: Mesh, workload: Workload) -> int:
    """Where ``workload``'s sidecar takes connections from other sidecars (its registered
    endpoint: ``tsunagi get workloads`` lists it too)."""
    for item in mesh.api("GET", "/v1/resources?kind=workloads")["items"]:
        if item["name"] == workload.name:
            return int(item["document"]["target_port"])
    raise AssertionError(f"{workload.name} is not registered")


def plain_get(port: int, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """A client without a sidecar: plain HTTP straight to ``port``; (0, error) when the
    connection is refused or closed without an answer."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        c.request("GET", "/", headers={"Host": WEB, **(headers or {})})
        resp = c.getresponse()
        raw = resp.read().decode(errors="replace")
        return resp.status, json.loads(raw) if raw.startswith("{") else raw
    except (OSError, http.client.HTTPException) as e:
        return 0, repr(e)
    finally:
        c.close()


def via_sidecar(client: Workload) -> tuple[int, Any]:
    return request(client.outbound_port, WEB)


def xfcc(answer: tuple[int, Any]) -> str | None:
    """The ``X-Forwarded-Client-Cert`` web's app received ("" for none); None when the
    request did not reach it."""
    status, body = answer
    if status != 200 or not isinstance(body, dict):
        return None
    return str(body["headers"].get("x-forwarded-client-cert", ""))


def s_client(port: int, tmp: Path, *cert: str) -> str:
    """``openssl s_client`` to ``port`` offering ALPN ``istio`` (as a mesh client does),
    sending one HTTP request; its output (the answer, if any)."""
    request_text = f"GET / HTTP/1.1\r\nHost: {WEB}\r\nConnection: close\r\n\r\n"
    done = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-alpn", "istio", *QUIET, *cert],
        input=request_text,
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp,
    )
    return done.stdout


def _key_and_csr(account: str) -> tuple[bytes, bytes]:
    """A new key (PEM) and a CSR (PEM) for ``TRUST/account``, as an agent makes them."""
    key = ec.generate_private_key(ec.SECP256R1())
    spiffe = f"{TRUST}/{account}"
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe)]), False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key_pem, csr.public_bytes(serialization.Encoding.PEM)


def mesh_certificate(mesh: Mesh, tmp: Path, account: str) -> list[str]:
    """A certificate the mesh CA signs for ``account`` (asked with the admin token, as an
    agent would with its own), written to ``tmp``: ``openssl s_client`` arguments."""
    key_pem, csr = _key_and_csr(account)
    body = json.dumps({"csr": csr.decode(), "namespace": "default", "serviceAccount": account})
    c = http.client.HTTPConnection("127.0.0.1", mesh.api_port, timeout=10)
    try:
        c.request(
            "POST",
            "/v1/certificates",
            body=body,
            headers={"Authorization": f"Bearer {mesh.token()}", "Content-Type": "application/json"},
        )
        resp = c.getresponse()
        signed = json.loads(resp.read())
        assert resp.status == 200, signed
    finally:
        c.close()
    (tmp / "chain.pem").write_text(signed["certificateChain"])
    (tmp / "roots.pem").write_text(signed["rootCertificates"])
    (tmp / "key.pem").write_bytes(key_pem)
    return ["-cert", "chain.pem", "-key", "key.pem", "-CAfile", "roots.pem"]


def test_sidecars_talk_mtls_and_the_app_sees_the_callers_identity(
    live: tuple[Mesh, Workload, Workload],
) -> None:
    mesh, web, client = live
    seen = xfcc(via_sidecar(client)) or ""
    # Istio's XFCC: the server's own identity, the peer certificate's hash, the caller's.
    # Envoy sets it only for a TLS connection whose peer presented a certificate that the
    # mesh roots sign: the client's sidecar spoke mTLS with its own SPIFFE certificate.
    # Exactly these three: no empty Subject="" (sidecars set uri only, see inbound_tls).
    trust = re.escape(TRUST)
    assert re.fullmatch(f"By={trust}/web;Hash=[0-9a-f]{{64}};URI={trust}/client", seen), seen
    # web's sidecar reports it as Istio does: the caller's principal, over mutual TLS.
    wanted = f'source_principal="{TRUST}/client"'

    def reported() -> list[str]:
        text = scrape(metrics_port(mesh, web))
        return [ln for ln in text.splitlines() if ln.startswith("istio_requests_total{")]

    wait_until(lambda: any(wanted in ln for ln in reported()), what="the principal in metrics")
    mine = [ln for ln in reported() if wanted in ln]
    assert all('connection_security_policy="mutual_tls"' in ln for ln in mine), mine
    # The client's sidecar names the server by the certificate web's sidecar presented.
    wait_until(lambda: answered_by_web(mesh, client, f"{TRUST}/web") > 0, what="web's principal")


def answered_by_web(mesh: Mesh, client: Workload, principal: str) -> float:
    """Requests the client's sidecar reports web's app answered (200) with the server's
    ``destination_principal`` (``reporter="source"``)."""
    series = samples(scrape(metrics_port(mesh, client)), "istio_requests_total")
    return total(
        series,
        reporter="source",
        destination_workload="web-v1",
        response_code="200",
        destination_principal=principal,
        connection_security_policy="unknown",  # Istio's value on the client side
    )


def test_permissive_takes_plain_text_and_nobody_forges_an_identity(
    live: tuple[Mesh, Workload, Workload],
) -> None:
    mesh, web, _ = live
    forged = {"x-forwarded-client-cert": f"By={TRUST}/web;URI={TRUST}/admin"}
    status, body = plain_get(inbound_port(mesh, web), forged)
    assert status == 200 and isinstance(body, dict), body
    # Envoy drops what a caller without a certificate claims.
    assert "x-forwarded-client-cert" not in body["headers"]


def test_strict_refuses_clients_without_a_sidecar_while_sidecars_never_notice(
    live: tuple[Mesh, Workload, Workload], policies: list[str], tmp_path: Path
) -> None:
    mesh, web, client = live
    port = inbound_port(mesh, web)
    assert plain_get(port)[0] == 200
    with Traffic(client.outbound_port, WEB) as traffic:
        wait_until(lambda: len(traffic.results) >= 20, what="traffic before STRICT")
        apply_recorded(mesh, policies, MESH_STRICT)
        wait_until(lambda: plain_get(port)[0] == 0, what="plain text refused under STRICT")
        after = len(traffic.results)
        wait_until(lambda: len(traffic.results) >= after + 50, what="traffic after STRICT")
    assert traffic.failures() == []
    assert traffic.seen_after(after) == {"web/v1"}
    # Connections opened before STRICT drain slowly: new ones (concurrent callers need
    # more) must speak mTLS to the new listener, and do.
    fresh = concurrent_gets(client, WEB, "/?sleep=0.3", threads=8, each=2)
    assert [status for status, _ in fresh] == [200] * 16
    # proxy-status shows each sidecar's inbound mode.
    rows = mesh.cli("proxy-status").stdout.splitlines()
    assert "MTLS" in rows[0].split(), rows
    assert all(" STRICT " in row for row in rows[1:] if row.startswith(("web-", "client-"))), rows
    # TLS without a client certificate gets no answer; with one the mesh CA signed, it does.
    assert "HTTP/1.1" not in s_client(port, tmp_path)
    answer = s_client(port, tmp_path, *mesh_certificate(mesh, tmp_path, "outsider"))
    assert "HTTP/1.1 200" in answer and f"URI={TRUST}/outsider" in answer, answer


def foreign_certificate(tmp: Path, account: str) -> list[str]:
    """A certificate that names mesh identity ``TRUST/account`` (same trust domain), signed
    by a throwaway CA of its own that the mesh never trusted, written to ``tmp``: ``openssl
    s_client`` arguments."""
    now = datetime.datetime.now(datetime.UTC)
    foreign = self_signed(tmp / "foreign", "cluster.local", now)
    key, csr = _key_and_csr(account)
    signed = foreign.sign_csr(csr, f"{TRUST}/{account}", datetime.timedelta(hours=1), now)
    (tmp / "foreign-chain.pem").write_bytes(signed.chain)
    (tmp / "foreign-key.pem").write_bytes(key)
    return ["-cert", "foreign-chain.pem", "-key", "foreign-key.pem"]


def test_strict_refuses_a_certificate_from_another_ca(
    live: tuple[Mesh, Workload, Workload], policies: list[str], tmp_path: Path
) -> None:
    """A client certificate naming a mesh identity, signed by a CA the mesh does not trust,
    gets no answer under STRICT; one the mesh CA signed for the same identity does."""
    mesh, web, _ = live
    port = inbound_port(mesh, web)
    apply_recorded(mesh, policies, MESH_STRICT)
    wait_until(lambda: plain_get(port)[0] == 0, what="plain text refused under STRICT")
    assert "HTTP/1.1" not in s_client(port, tmp_path, *foreign_certificate(tmp_path, "client"))
    answer = s_client(port, tmp_path, *mesh_certificate(mesh, tmp_path, "client"))
    assert "HTTP/1.1 200" in answer, answer


def destination_rule_sans(*sans: str) -> str:
    """web's DestinationRule: ISTIO_MUTUAL, the server's certificate checked for ``sans``."""
    return (
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n"
        "metadata: {name: web, namespace: default}\n"
        f"spec: {{host: web, trafficPolicy: {{tls: {{mode: ISTIO_MUTUAL, "
        f"subjectAltNames: {list(sans)}}}}}}}\n"
    )


def test_a_client_sidecar_refuses_a_server_whose_identity_is_not_in_the_san_list(
    live: tuple[Mesh, Workload, Workload], policies: list[str]
) -> None:
    """Istio's secure naming: ISTIO_MUTUAL with ``subjectAltNames`` naming another identity
    makes web's own certificate unacceptable to the client's sidecar (503, the app never
    sees the request); naming web's identity lets it through."""
    mesh, _, client = live
    apply_recorded(mesh, policies, destination_rule_sans(f"{TRUST}/somebody-else"))
    wait_until(lambda: via_sidecar(client)[0] == 503, what="the server's identity refused")
    assert [via_sidecar(client)[0] for _ in range(3)] == [503] * 3
    apply_recorded(mesh, policies, destination_rule_sans(f"{TRUST}/somebody-else", f"{TRUST}/web"))
    wait_until(lambda: via_sidecar(client)[0] == 200, what="web's identity accepted")
    assert f"By={TRUST}/web" in (xfcc(via_sidecar(client)) or "")


def test_disable_goes_back_to_plain_text(
    live: tuple[Mesh, Workload, Workload], policies: list[str], tmp_path: Path
) -> None:
    mesh, web, client = live
    port = inbound_port(mesh, web)
    over_plain_text = answered_by_web(mesh, client, "unknown")
    apply_recorded(
        mesh, policies, peer_authentication("default", "default", "{mtls: {mode: DISABLE}}")
    )
    # Clients learn from EDS that web takes no mTLS: their requests arrive in plain text
    # (no caller identity), and plain clients keep working.
    wait_until(lambda: xfcc(via_sidecar(client)) == "", what="sidecar requests in plain text")
    assert plain_get(port)[0] == 200
    # No server certificate, no destination_principal on the client's side.
    wait_until(
        lambda: answered_by_web(mesh, client, "unknown") > over_plain_text,
        what="plain-text requests reported with the principal unknown",
    )
    # The listener has no TLS chain any more: even a mesh certificate gets no answer.
    assert "HTTP/1.1" not in s_client(port, tmp_path, *mesh_certificate(mesh, tmp_path, "vm"))


def test_port_level_mtls_overrides_the_workloads_mode(
    live: tuple[Mesh, Workload, Workload], policies: list[str]
) -> None:
    mesh, web, client = live
    port = inbound_port(mesh, web)
    selector = "selector: {matchLabels: {app: web}}, mtls: {mode: STRICT}"
    # Keyed by the workload's port: `tsunagi run --port 9080`.
    apply_recorded(
        mesh,
        policies,
        peer_authentication(
            "web", "default", f"{{{selector}, portLevelMtls: {{9080: {{mode: PERMISSIVE}}}}}}"
        ),
    )
    assert plain_get(port)[0] == 200
    # The client's sidecar learns from EDS alone that web takes mTLS again (the cluster
    # keeps both transport sockets, as in Istio); a connection it pooled in plain text
    # under the previous test's DISABLE lasts until web's replaced listener drains it.
    wait_until(
        lambda: f"URI={TRUST}/client" in (xfcc(via_sidecar(client)) or ""), what="mTLS again"
    )
    # The port-level entry names another port now: web's port is STRICT like the workload.
    apply_recorded(
        mesh,
        policies,
        peer_authentication(
            "web", "default", f"{{{selector}, portLevelMtls: {{9999: {{mode: DISABLE}}}}}}"
        ),
    )
    wait_until(lambda: plain_get(port)[0] == 0, what="plain text refused on the STRICT port")
    assert f"URI={TRUST}/client" in (xfcc(via_sidecar(client)) or "")
    # New connections (concurrent callers need several) speak mTLS: STRICT takes them all.
    fresh = concurrent_gets(client, WEB, "/?sleep=0.3", threads=6, each=1)
    assert [status for status, _ in fresh] == [200] * 6


EXTERNAL = "edition.example.test"


def egress_yaml(external_port: int, allowed: str) -> str:
    """Istio's egress gateway with mutual TLS: the sidecar reaches the gateway over mesh
    mTLS (ISTIO_MUTUAL, SNI the external host), the gateway's ISTIO_MUTUAL server admits
    the ``allowed`` service account only, and sends plain HTTP on."""
    return f"""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: cnn}}
spec:
  hosts: [{EXTERNAL}]
  ports: [{{number: 80, name: http-port, protocol: HTTP, targetPort: {external_port}}}]
  location: MESH_EXTERNAL
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1}}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: istio-egressgateway}}
spec:
  selector: {{istio: egressgateway}}
  servers:
  - port: {{number: 443, name: https, protocol: HTTPS}}
    hosts: [{EXTERNAL}]
    tls: {{mode: ISTIO_MUTUAL, subjectAltNames: ["{TRUST}/{allowed}"]}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: egressgateway-for-cnn}}
spec:
  host: istio-egressgateway.istio-system.svc.cluster.local
  subsets:
  - name: cnn
    trafficPolicy:
      portLevelSettings:
      - port: {{number: 443}}
        tls: {{mode: ISTIO_MUTUAL, sni: {EXTERNAL}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: direct-cnn-through-egress-gateway}}
spec:
  hosts: [{EXTERNAL}]
  gateways: [istio-egressgateway, mesh]
  http:
  - match: [{{gateways: [mesh], port: 80}}]
    route:
    - destination:
        host: istio-egressgateway.istio-system.svc.cluster.local
        subset: cnn
        port: {{number: 443}}
  - match: [{{gateways: [istio-egressgateway], port: 443}}]
    route:
    - destination: {{host: {EXTERNAL}, port: {{number: 80}}}}
"""


def test_an_egress_gateway_takes_mesh_mtls_from_the_identities_it_names(
    live: tuple[Mesh, Workload, Workload], policies: list[str]
) -> None:
    mesh, _, client = live
    external_port, listen = free_port(), free_port()
    external = outside_echo("edition", external_port)
    try:
        mesh.gateway(
            "istio-egressgateway",
            {"istio": "egressgateway"},
            "--port",
            f"443:{listen}",
            namespace="istio-system",
        )
        apply_recorded(mesh, policies, egress_yaml(external_port, "client"))

        def answered() -> tuple[int, str]:
            status, body = client.get(EXTERNAL)
            return status, body.get("name", "") if isinstance(body, dict) else str(body)[:80]

        wait_until(lambda: answered() == (200, "edition"), what="the external host via mTLS")
        # The gateway's TLS checks are real: plain text gets nothing, another identity 503.
        assert plain_get(listen)[0] == 0
        apply_recorded(mesh, policies, egress_yaml(external_port, "somebody-else"))
        wait_until(lambda: answered()[0] == 503, what="the gateway refusing the client")
    finally:
        stop(external)


def test_tcp_ports_take_the_same_modes(
    live: tuple[Mesh, Workload, Workload], policies: list[str]
) -> None:
    mesh = live[0]
    echo = mesh.run("tcp-echo", "v1", "9000/tcp", "tcp_echo.py")  # type: ignore[arg-type]
    local = free_port()
    tcp_client = mesh.run(
        "tcp-client", "v1", 80, "idle.py", False, "--upstream", f"tcp-echo:9000@{local}"
    )
    port = inbound_port(mesh, echo)
    # PERMISSIVE: a sidecar's connection (mTLS) and a plain one both reach the app.
    wait_until(lambda: answers(local), what="tcp-echo through the client's sidecar")
    assert exchange(port) == b"v1 hello\n"

    # The client's sidecar reports its connections with tcp-echo's identity, from the
    # first line of each (at connect) to the last: opened and closed in the same series.
    def reported(name: str, principal: str) -> float:
        series = samples(scrape(metrics_port(mesh, tcp_client)), name)
        return total(
            series,
            reporter="source",
            destination_workload="tcp-echo-v1",
            response_flags="-",
            destination_principal=principal,
        )

    closed = "istio_tcp_connections_closed_total"
    wait_until(lambda: reported(closed, f"{TRUST}/tcp-echo") >= 1, what="the TCP principal")
    opened = reported("istio_tcp_connections_opened_total", f"{TRUST}/tcp-echo")
    assert opened >= reported(closed, f"{TRUST}/tcp-echo") >= 1
    assert reported("istio_tcp_connections_opened_total", "unknown") == 0
    selector = "selector: {matchLabels: {app: tcp-echo}}, mtls: {mode: STRICT}"
    apply_recorded(mesh, policies, peer_authentication("tcp-echo", "default", f"{{{selector}}}"))
    wait_until(lambda: not answers(port), what="plain TCP refused under STRICT")
    assert exchange(local) == b"v1 hello\n"


def test_an_ingress_gateway_reaches_sidecars_over_mtls(
    live: tuple[Mesh, Workload, Workload], policies: list[str]
) -> None:
    mesh = live[0]
    listen = free_port()
    mesh.gateway("ingress", {"istio": "ingressgateway"}, "--port", f"80:{listen}")
    apply_recorded(
        mesh,
        policies,
        """
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: web-gateway}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web-from-outside}
spec:
  hosts: ["*"]
  gateways: [web-gateway]
  http:
  - route: [{destination: {host: web, port: {number: 9080}}}]
""",
    )
    # STRICT web: only mTLS gets in, and the gateway's own identity arrives with it.
    apply_recorded(mesh, policies, MESH_STRICT)
    wait_until(lambda: xfcc(request(listen, "web.example")) is not None, what="web via gateway")
    seen = xfcc(request(listen, "web.example")) or ""
    assert f"URI={TRUST}/ingress" in seen, seen
