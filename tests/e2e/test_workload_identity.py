"""Workload identity end to end: a real ``tsunagi up`` (its own CA), real ``tsunagi run``
sidecars whose agents make their keys and get SPIFFE certificates, Envoy serving them from
SDS files and renewing them in place, and the xDS port that admits only a node whose
certificate says what its metadata claims (raw gRPC clients try the rest)."""

from __future__ import annotations

import base64
import http.client
import json
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import struct_pb2

from tests.certs import make_cert
from tsunagi import proxy_contract as pc
from tsunagi.agent.csr import key_and_csr
from tsunagi.spiffe import spiffe_id
from tsunagi.xds import resources as rs
from tsunagi.xds.translate.names import credential_secret

from .mesh import Mesh, Traffic, Workload, cmdline, free_port, started_mesh, stop, wait_until
from .test_gateway_tls import served_certificate

pytestmark = pytest.mark.e2e

_SOTW = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
_BOUND = 20.0  # seconds a gRPC answer may take: a bound, not a measurement


def workdir(w: Workload) -> Path:
    """The agent's workdir: Envoy's working directory, where its bootstrap lives."""
    pid = w.envoy_pid()
    args = cmdline(pid) if pid else []
    return Path(args[args.index("-c") + 1]).parent


def sds_certificate(w: Workload) -> x509.Certificate:
    """The leaf certificate of the proxy's ``sds/default.json``."""
    doc = json.loads((workdir(w) / pc.sds_file(pc.WORKLOAD_SECRET)).read_text())
    chain = doc["resources"][0]["tls_certificate"]["certificate_chain"]["inline_string"]
    return x509.load_pem_x509_certificates(chain.encode())[0]


def served_serials(w: Workload) -> set[int]:
    """Serials of the workload certificates Envoy holds now (its admin ``/certs``), as
    numbers: Envoy writes them in hex with leading zeros, the API without."""
    body = w.envoy_admin("/certs")
    if not body:
        return set()
    return {
        int(c["serial_number"], 16)
        for entry in json.loads(body).get("certificates", [])
        for c in entry.get("cert_chain", [])
    }


def ask_certificate(
    mesh: Mesh, namespace: str, account: str, gateway: bool = False, token: str = ""
) -> tuple[int, dict[str, Any], bytes]:
    """``POST /v1/certificates`` for ``namespace``/``account`` and a key made here, with
    ``token`` (the admin's, which may obtain any identity, when empty); ``gateway``: ask
    for a gateway's certificate. ``(status, reply, key)``."""
    key, csr = key_and_csr(spiffe_id("cluster.local", namespace, account))
    doc = {"csr": csr.decode(), "namespace": namespace, "serviceAccount": account}
    body = json.dumps({**doc, "gateway": True} if gateway else doc)
    c = http.client.HTTPConnection("127.0.0.1", mesh.api_port, timeout=10)
    try:
        bearer = token or mesh.token()
        headers = {"Authorization": f"Bearer {bearer}", "Content-Type": "application/json"}
        c.request("POST", "/v1/certificates", body, headers)
        resp = c.getresponse()
        return resp.status, json.loads(resp.read()), key
    finally:
        c.close()


def certificate(
    mesh: Mesh, namespace: str, account: str, gateway: bool = False
) -> tuple[bytes, bytes, bytes]:
    """``(key, chain, roots)`` for ``namespace``/``account``, with the admin token."""
    status, reply, key = ask_certificate(mesh, namespace, account, gateway)
    assert status == 200, reply
    return key, reply["certificateChain"].encode(), reply["rootCertificates"].encode()


def ads_call(channel: grpc.Channel) -> Any:
    return channel.stream_stream(
        _SOTW,
        request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString,
        response_deserializer=discovery_pb2.DiscoveryResponse.FromString,
    )


def first_response(
    mesh: Mesh, creds: grpc.ChannelCredentials | None, node_id: str, metadata: dict[str, Any]
) -> discovery_pb2.DiscoveryResponse:
    """Open an ADS stream as ``node_id`` (plaintext without ``creds``), ask for the SDS
    secret of credential ``cred`` as Envoy does, and return the first response (or raise the
    stream's error)."""
    meta = struct_pb2.Struct()
    meta.update(metadata)
    request = discovery_pb2.DiscoveryRequest(
        type_url=rs.SECRET,
        resource_names=[credential_secret("cred")],
        node=base_pb2.Node(id=node_id, cluster="x", metadata=meta),
    )
    target = f"127.0.0.1:{mesh.xds_port}"
    channel = (
        grpc.secure_channel(target, creds) if creds is not None else grpc.insecure_channel(target)
    )
    with channel:
        responses = ads_call(channel)(iter([request]), timeout=_BOUND)
        return next(responses)  # type: ignore[no-any-return]


@pytest.fixture
def short_lived(tmp_path: Path) -> Any:
    """A mesh whose workload certificates live 20 seconds (renewed at 10)."""
    yield from started_mesh(tmp_path, "--workload-cert-ttl", "20s")


def test_a_sidecar_holds_its_spiffe_certificate_from_sds_files(mesh: Mesh) -> None:
    web = mesh.run("web", "v1", 9080, "echo.py", True, "--service-account", "web-sa")
    identity = "spiffe://cluster.local/ns/default/sa/web-sa"
    cert = sds_certificate(web)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [identity]
    # the key is its owner's alone, in a directory only its owner may enter
    sds = workdir(web) / pc.SDS_DIR
    assert sds.stat().st_mode & 0o777 == 0o700
    assert (sds / f"{pc.WORKLOAD_SECRET}.json").stat().st_mode & 0o777 == 0o600
    # Envoy serves exactly that certificate (it reached xDS with it: the port is mTLS only)
    assert cert.serial_number in served_serials(web)
    [instance] = [
        i for i in mesh.api("GET", "/v1/resources?kind=workloads")["items"] if i["name"] == web.name
    ]
    assert instance["document"]["service_account"] == "web-sa"
    # the agent (`tsunagi run`'s own process) made its key without loading cryptography
    assert "cryptography" not in Path(f"/proc/{web.proc.pid}/maps").read_text()
    # the default service account is the service name
    other = mesh.run("ratings", "v1", 9080, "echo.py", True)
    sans = sds_certificate(other).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert sans.value.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://cluster.local/ns/default/sa/ratings"
    ]


GATEWAY_CONFIG = """
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8443, name: https, protocol: HTTPS}
    hosts: ["*"]
    tls: {mode: SIMPLE, credentialName: cred}
---
apiVersion: v1
kind: Secret
metadata: {name: cred, namespace: istio-system}
type: kubernetes.io/tls
data: {tls.crt: %s, tls.key: %s}
"""


def test_the_xds_port_admits_only_a_node_its_certificate_vouches_for(mesh: Mesh) -> None:
    served = make_cert("shop.example.com")
    b64 = [base64.b64encode(pem).decode() for pem in (served.cert, served.key)]
    applied = mesh.apply(GATEWAY_CONFIG % tuple(b64))
    assert applied.returncode == 0, applied.stderr
    gateway = {
        pc.META_NAMESPACE: "istio-system",
        pc.META_SERVICE_ACCOUNT: "ingress",
        pc.META_KIND: pc.GATEWAY_KIND,
        pc.META_LABELS: {"istio": "ingressgateway"},
    }

    # plaintext: no stream at all
    with pytest.raises(grpc.RpcError) as plain:
        first_response(mesh, None, "ingress-1.istio-system", gateway)
    assert plain.value.code() == grpc.StatusCode.UNAVAILABLE
    # TLS without a client certificate: the handshake fails
    _, _, roots = certificate(mesh, "default", "sleep")
    with pytest.raises(grpc.RpcError) as anonymous:
        first_response(
            mesh,
            grpc.ssl_channel_credentials(root_certificates=roots),
            "ingress-1.istio-system",
            gateway,
        )
    assert anonymous.value.code() == grpc.StatusCode.UNAVAILABLE

    # a forged gateway: a real certificate of namespace default, claiming istio-system
    key, chain, roots = certificate(mesh, "default", "ingress")
    forged = grpc.ssl_channel_credentials(roots, key, chain)
    with pytest.raises(grpc.RpcError) as refused:
        first_response(mesh, forged, "ingress-1.istio-system", gateway)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    details = refused.value.details() or ""
    assert "namespace 'istio-system'" in details
    assert "spiffe://cluster.local/ns/default/sa/ingress" in details
    wait_until(lambda: "refused an xDS stream" in mesh.log(), what="the refusal in the log")

    # a workload token of istio-system, not made with --gateway: no gateway certificate...
    made = mesh.cli("token", "create", "-n", "istio-system", "--service-account", "ingress")
    assert made.returncode == 0, made.stderr
    status, reply, _ = ask_certificate(mesh, "istio-system", "ingress", True, made.stdout.strip())
    assert status == 403 and "--gateway" in reply["error"], reply
    # ...and its ordinary one opens a stream but gets no key
    key, chain, roots = certificate(mesh, "istio-system", "ingress")
    plain = grpc.ssl_channel_credentials(roots, key, chain)
    response = first_response(mesh, plain, "ingress-2.istio-system", gateway)
    assert not response.resources and served.key not in response.SerializeToString()

    # the control: a gateway's certificate of istio-system gets the gateway's key
    key, chain, roots = certificate(mesh, "istio-system", "ingress", gateway=True)
    genuine = grpc.ssl_channel_credentials(roots, key, chain)
    response = first_response(mesh, genuine, "ingress-3.istio-system", gateway)
    assert [r.type_url for r in response.resources] == [rs.SECRET]
    assert served.key in response.resources[0].value


def test_certificates_rotate_without_restarting_envoy_or_failing_requests(
    short_lived: Mesh,
) -> None:
    """Each agent renews at half its certificate's 20 s: Envoy serves the new serial, its
    xDS stream is the same one, its process the same, and continuous requests between two
    sidecars (mutual TLS between them: automatic mTLS) all succeed."""
    mesh = short_lived
    web = mesh.run("web", "v1", 9080, "echo.py")
    client = mesh.client()
    before = {w.name: served_serials(w) for w in (web, client)}
    envoys = {w.name: w.envoy_pid() for w in (web, client)}
    connected = {p["id"]: p["connected_at"] for p in mesh.api("GET", "/v1/proxies")["proxies"]}
    assert all(before.values()), before
    with Traffic(client.outbound_port, "web:9080") as traffic:
        wait_until(
            lambda: all(served_serials(w) - before[w.name] for w in (web, client)),
            timeout=40,
            what="both proxies serving a renewed certificate",
        )
        time.sleep(1)  # requests on the new certificates too
    assert traffic.results and not traffic.failures(), traffic.failures()[:5]
    # the requests went over mutual TLS: the server's sidecar names the caller's identity
    status, body = client.get("web:9080")
    assert status == 200 and isinstance(body, dict)
    xfcc = body["headers"].get("x-forwarded-client-cert", "")
    assert "URI=spiffe://cluster.local/ns/default/sa/client" in xfcc
    assert {w.name: w.envoy_pid() for w in (web, client)} == envoys
    after = {p["id"]: p["connected_at"] for p in mesh.api("GET", "/v1/proxies")["proxies"]}
    assert after == connected  # the same xDS streams


def test_a_sidecar_outlives_its_short_lived_workload_token(short_lived: Mesh) -> None:
    """A token of 30 s, certificates of 20 s: each renewal brings a fresh token, so the
    sidecar keeps its certificate, its registration and its traffic well past the first
    token's expiry. (Which identities a token may obtain: test_identity_api.py.)"""
    mesh = short_lived
    made = mesh.cli(
        "token", "create", "--namespace", "default", "--service-account", "web", "--ttl", "30s"
    )
    assert made.returncode == 0, made.stderr
    token, expires = made.stdout.strip(), time.time() + 30  # at most this
    web = mesh.run("web", "v1", 9080, "echo.py", True, "--token", token)
    sans = sds_certificate(web).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert sans.value.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://cluster.local/ns/default/sa/web"
    ]
    client = mesh.client()
    # The first token is dead for everybody else...
    wait_until(
        lambda: "expired" in mesh.cli("proxy-status", "--token", token).stderr,
        timeout=60,
        what="the first token expired",
    )
    # ...and then long enough for a heartbeat-less instance to have been dropped (TTL 15 s)
    # and for a renewal that needed the fresh token.
    time.sleep(20)
    assert web.name in mesh.workload_names()
    cert = sds_certificate(web)
    # issued (20 s before its notAfter) after the first token had expired
    assert cert.not_valid_after_utc.timestamp() - 20 > expires, cert.not_valid_after_utc
    status, body = client.get("web:9080")
    assert status == 200 and isinstance(body, dict) and body["service"] == "web", body
    stop(web.proc)
    assert web.name not in mesh.workload_names()
    log = (mesh.state_dir / f"{web.name}.log").read_text()
    assert "refused this sidecar's token" not in log and "could not deregister" not in log


def test_only_a_gateway_token_lets_tsunagi_gateway_serve_its_credential(mesh: Mesh) -> None:
    """`tsunagi gateway` with a workload token of its namespace runs, but its TLS server has
    no certificate (the handshake fails) and proxy-config says why; with a `--gateway` token
    of the same identity it serves the credential."""
    served = make_cert("shop.example.com")
    port = free_port()
    b64 = [base64.b64encode(pem).decode() for pem in (served.cert, served.key)]
    applied = mesh.apply((GATEWAY_CONFIG % tuple(b64)).replace("8443", str(port)))
    assert applied.returncode == 0, applied.stderr

    def token(*extra: str) -> str:
        made = mesh.cli(
            "token", "create", "-n", "istio-system", "--service-account", "ingress", *extra
        )
        assert made.returncode == 0, made.stderr
        return made.stdout.strip()

    labels = {"istio": "ingressgateway"}
    plain = mesh.gateway("ingress", labels, "--token", token(), namespace="istio-system")
    proxy = f"{plain.name}.istio-system"

    def cred_row() -> dict[str, Any]:
        out = mesh.cli("proxy-config", "secret", proxy, "-o", "json")
        assert out.returncode == 0, out.stderr
        rows = {s["name"]: s for s in json.loads(out.stdout)["secrets"]}
        return rows.get(credential_secret("cred"), {})

    wait_until(lambda: cred_row().get("status") == "WARMING", what="Envoy asking for the key")
    assert "--gateway" in cred_row()["message"]
    assert served_certificate(port, "shop.example.com") is None  # no certificate to show
    logs = "".join(f.read_text() for f in mesh.state_dir.glob("gateway-ingress-*.log"))
    assert "may not obtain a gateway's certificate" in logs  # the agent says why
    stop(plain.proc)

    genuine = mesh.gateway(
        "ingress", labels, "--token", token("--gateway"), namespace="istio-system"
    )
    wait_until(
        lambda: (
            (c := served_certificate(port, "shop.example.com")) is not None
            and c.serial_number == served.serial
        ),
        what="the gateway serving its credential",
    )
    assert genuine.proc.poll() is None
