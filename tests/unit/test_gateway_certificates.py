"""Who may receive a gateway's private keys, and the proxy's own certificate in
``proxy-config secret``: the CA's gateway mark (written only when asked and allowed, never
copied from a CSR), the xDS server's reading of it, the ``--gateway`` token claim, the API's
403, the agent's request, and the per-proxy record of issued certificates."""

from __future__ import annotations

import datetime
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from envoy.service.discovery.v3 import discovery_pb2

from tests.certs import make_cert
from tsunagi.agent.identity import WorkloadIdentity
from tsunagi.ca.authority import Authority
from tsunagi.ca.keystore import self_signed
from tsunagi.client import Rejected
from tsunagi.controlplane import workload_tokens as wt
from tsunagi.controlplane.http_api import certificate_reply
from tsunagi.controlplane.issued_certs import IssuedCertificates, IssuedRecord
from tsunagi.controlplane.openapi import ProxySecrets
from tsunagi.controlplane.proxy_secrets import proxy_secrets
from tsunagi.gateway_mark import GATEWAY_POLICY_OID, has_gateway_mark
from tsunagi.xds import peer_identity
from tsunagi.xds.cache import NodeEntry
from tsunagi.xds.protocol import SotwStream
from tsunagi.xds.resources import SECRET, Snapshot

from .test_http_api_identity import Plane, plane  # noqa: F401  (the fixture)

GW = "spiffe://cluster.local/ns/istio-system/sa/ingress"
POLICY = x509.ObjectIdentifier(GATEWAY_POLICY_OID)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@pytest.fixture(scope="module")
def authority(tmp_path_factory: pytest.TempPathFactory) -> Authority:
    return self_signed(tmp_path_factory.mktemp("ca"), "cluster.local", _now())


def _csr(spiffe_id: str, smuggle: bool = False) -> bytes:
    """A CSR for ``spiffe_id``; ``smuggle``: it also asks for the gateway policy (and a CA
    bit), which the CA must not copy."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    builder = builder.add_extension(
        x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id)]), critical=False
    )
    if smuggle:
        builder = builder.add_extension(
            x509.CertificatePolicies([x509.PolicyInformation(POLICY, None)]), critical=False
        ).add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    key = ec.generate_private_key(ec.SECP256R1())
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def _leaf_pem(chain: bytes) -> bytes:
    return x509.load_pem_x509_certificates(chain)[0].public_bytes(serialization.Encoding.PEM)


def _sign(authority: Authority, csr: bytes, gateway: bool) -> bytes:
    ttl = datetime.timedelta(hours=1)
    return _leaf_pem(authority.sign_csr(csr, GW, ttl, _now(), gateway=gateway).chain)


# ----------------------------------------------------------------------------- the CA


def test_the_mark_is_written_only_when_asked(authority: Authority) -> None:
    plain = _sign(authority, _csr(GW), gateway=False)
    assert not has_gateway_mark(plain)
    cert = x509.load_pem_x509_certificate(plain)
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.CertificatePolicies)

    marked = _sign(authority, _csr(GW), gateway=True)
    assert has_gateway_mark(marked)
    ext = x509.load_pem_x509_certificate(marked).extensions.get_extension_for_class(
        x509.CertificatePolicies
    )
    assert not ext.critical  # peers that do not know the policy still accept it
    assert [p.policy_identifier for p in ext.value] == [POLICY]


def test_a_csr_cannot_smuggle_the_mark(authority: Authority) -> None:
    smuggled = _sign(authority, _csr(GW, smuggle=True), gateway=False)
    assert not has_gateway_mark(smuggled)
    cert = x509.load_pem_x509_certificate(smuggled)
    # Nothing of the CSR's extensions: only the CA's own set, not a CA either.
    assert {type(e.value) for e in cert.extensions} == {
        x509.BasicConstraints,
        x509.KeyUsage,
        x509.ExtendedKeyUsage,
        x509.AuthorityKeyIdentifier,
        x509.SubjectAlternativeName,
    }
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_only_the_tsunagi_policy_is_the_mark() -> None:
    assert not has_gateway_mark(b"not a certificate")
    assert not has_gateway_mark(make_cert("a.example.com").cert)  # no policies at all


# ----------------------------------------------------------------------------- xDS


def test_the_xds_server_lets_only_a_marked_certificate_hold_keys(authority: Authority) -> None:
    marked, plain = (_sign(authority, _csr(GW), gateway=g) for g in (True, False))
    prop = peer_identity.CERT_PROPERTY
    assert peer_identity.may_hold_keys({prop: [marked]})
    assert not peer_identity.may_hold_keys({prop: [plain]})
    assert not peer_identity.may_hold_keys({})  # no certificate
    assert not peer_identity.may_hold_keys({prop: [marked, marked]})  # not one certificate


# ----------------------------------------------------------------------------- tokens


def test_the_gateway_claim_round_trips_and_others_keep_their_form(tmp_path: Path) -> None:
    key = wt.ensure_key(tmp_path)
    exp = time.time() + 60
    gateway = wt.create(key, wt.WorkloadClaims("istio-system", "ingress", exp, gateway=True))
    assert wt.verify(key, gateway, time.time()).gateway
    plain = wt.create(key, wt.WorkloadClaims("istio-system", "ingress", exp))
    assert not wt.verify(key, plain, time.time()).gateway
    # an ordinary token is exactly what it was before the claim existed
    assert b"gw" not in wt._unb64(plain[len(wt.PREFIX) :].split(".")[0])


# ----------------------------------------------------------------------------- the API


def _token(mesh: Plane, gateway: bool) -> str:
    claims = wt.WorkloadClaims("istio-system", "ingress", time.time() + 600, gateway=gateway)
    return wt.create(mesh.key, claims)


def _chain_leaf(body: dict[str, Any]) -> bytes:
    return _leaf_pem(body["certificateChain"].encode())


async def test_a_gateway_certificate_needs_the_admin_or_a_gateway_token(plane: Plane) -> None:  # noqa: F811
    ns, sa = "istio-system", "ingress"
    status, body = await plane.certificate(ns=ns, sa=sa)
    assert status == 200 and not has_gateway_mark(_chain_leaf(body))  # not asked
    status, body = await plane.certificate(ns=ns, sa=sa, gateway=True)
    assert status == 200 and has_gateway_mark(_chain_leaf(body))  # the admin

    plain = _token(plane, gateway=False)
    status, body = await plane.certificate(plain, ns=ns, sa=sa, gateway=True)
    assert status == 403, body
    assert "--gateway" in body["error"] and "private keys" in body["error"]
    status, body = await plane.certificate(plain, ns=ns, sa=sa)
    assert status == 200 and not has_gateway_mark(_chain_leaf(body))

    status, body = await plane.certificate(_token(plane, True), ns=ns, sa=sa, gateway=True)
    assert status == 200 and has_gateway_mark(_chain_leaf(body))
    # the token renewed with it keeps the claim, so the gateway's renewals keep the mark
    assert wt.verify(plane.key, body["token"], time.time()).gateway
    status, body = await plane.certificate(plain, ns=ns, sa=sa)
    assert not wt.verify(plane.key, body["token"], time.time()).gateway


async def test_token_create_gateway_makes_a_token_with_the_claim(plane: Plane) -> None:  # noqa: F811
    body = {"namespace": "istio-system", "serviceAccount": "ingress", "gateway": True}
    status, reply = await plane.call("POST", "/v1/tokens", body=body)
    assert status == 200 and reply["gateway"] is True, reply
    assert wt.verify(plane.key, reply["token"], time.time()).gateway
    status, reply = await plane.call("POST", "/v1/tokens", body={**body, "gateway": False})
    assert status == 200 and reply["gateway"] is False
    assert not wt.verify(plane.key, reply["token"], time.time()).gateway


async def test_the_proxy_named_must_be_of_the_identitys_namespace(plane: Plane) -> None:  # noqa: F811
    for wrong in ("web-1.prod", "default", ".default", "web-1.default.x"):
        status, body = await plane.certificate(proxy=wrong)
        assert status == 400, (wrong, body)
        assert body["error"].startswith("body proxy:") and "NAME.default" in body["error"]
    assert plane.api.issued.get("web-1.prod") is None


async def test_proxy_config_secret_shows_the_last_certificate_issued_to_the_proxy(
    plane: Plane,  # noqa: F811
) -> None:
    node = "web-1a2b.default"
    path = f"/v1/proxies/{node}/secrets"
    stream = SotwStream()
    snap = Snapshot.build({}, 1)
    stream.set_snapshot(snap)
    plane.api.cache.nodes[node] = NodeEntry(node, {"namespace": "default"}, snap, stream)
    status, reply = await plane.call("GET", path)
    assert status == 200 and reply["secrets"] == []  # nothing issued to it by name yet

    serials = []
    for _ in range(2):  # a renewal replaces the first
        status, body = await plane.certificate(proxy=node)
        assert status == 200, body
        serials.append(body["serial"])
        status, reply = await plane.call("GET", path)
        assert status == 200
        ProxySecrets.model_validate(reply)
        own, roots = reply["secrets"]
        assert (own["name"], own["type"], own["status"]) == ("default", "Cert Chain", "ACTIVE")
        assert own["serial_number"] == body["serial"] and own["valid"]
        assert own["sans"] == ["URI:spiffe://cluster.local/ns/default/sa/web"]
        assert own["source"] == "agent"
        assert (roots["name"], roots["type"], roots["status"]) == ("ROOTCA", "CA", "ACTIVE")
        root = x509.load_pem_x509_certificate(plane.api.authority.root_pem)  # type: ignore[union-attr]
        assert roots["serial_number"] == f"{root.serial_number:x}"
    assert serials[0] != serials[1]


def test_the_record_is_bounded_and_keeps_connected_proxies() -> None:
    connected = {"a.ns", "b.ns"}
    issued = IssuedCertificates(lambda n: n in connected, limit=3)
    rec = IssuedRecord(b"chain", b"roots")
    for node in ("a.ns", "b.ns", "x.ns", "y.ns", "z.ns"):
        issued.record(node, rec)
    assert len(issued) == 3
    # made-up names pushed out each other, never the connected proxies' records
    assert issued.get("a.ns") and issued.get("b.ns") and issued.get("z.ns")
    assert issued.get("x.ns") is None and issued.get("y.ns") is None
    connected.clear()  # none connected: the oldest goes
    issued.record("w.ns", rec)
    assert issued.get("a.ns") is None and issued.get("w.ns")


# ----------------------------------------------------------------------------- the agent


class _Ca:
    """A control plane that refuses gateway certificates, as for a token without --gateway."""

    def __init__(self, authority: Authority) -> None:
        self.authority, self.token = authority, "tsw1.x"
        self.bodies: list[dict[str, Any]] = []

    def request(self, method: str, path: str, body: Any = None, **_: Any) -> dict[str, Any]:
        self.bodies.append(body)
        if body.get("gateway"):
            raise Rejected(403, {"error": "may not obtain a gateway's certificate"})
        signed = self.authority.sign_csr(
            body["csr"].encode(), GW, datetime.timedelta(hours=1), _now()
        )
        return certificate_reply(signed)


def _gateway_identity(ca: _Ca, tmp_path: Path) -> WorkloadIdentity:
    """The identity keeper of gateway ``ingress-1a2b.istio-system``, asking ``ca``."""
    return WorkloadIdentity(
        ca,  # type: ignore[arg-type]
        str(tmp_path),
        "cluster.local",
        "istio-system",
        "ingress",
        "ingress-1a2b",
        gateway=True,
    )


def test_a_gateway_agent_asks_for_the_mark_and_goes_on_without_it(
    authority: Authority, tmp_path: Path
) -> None:
    ca = _Ca(authority)
    ident = _gateway_identity(ca, tmp_path)
    ident.obtain()
    first, second = ca.bodies
    assert first["gateway"] is True and "gateway" not in second
    assert first["proxy"] == second["proxy"] == "ingress-1a2b.istio-system"
    ident.obtain()  # a renewal does not ask again
    assert "gateway" not in ca.bodies[2]


def test_a_gateway_without_the_mark_is_told_why_it_has_no_keys() -> None:
    stream = SotwStream()
    snap = Snapshot.build({}, 1)
    stream.set_snapshot(snap)
    meta = {"kind": "gateway", "namespace": "edge"}
    stream.receive(
        discovery_pb2.DiscoveryRequest(type_url=SECRET, resource_names=["kubernetes://cred"])
    )
    for verified, says in ((False, "--gateway"), (True, "no usable Secret cred")):
        entry = NodeEntry("edge-1.edge", meta, snap, stream, verified=verified)
        (row,) = proxy_secrets(entry, _now())["secrets"]
        assert row["status"] == "WARMING" and says in row["message"], row


def test_a_gateway_that_had_the_mark_does_not_give_it_up_at_renewal(
    authority: Authority, tmp_path: Path
) -> None:
    class _Revoked(_Ca):
        """Signs the first gateway certificate, refuses the next."""

        def request(self, method: str, path: str, body: Any = None, **kw: Any) -> dict[str, Any]:
            if not self.bodies:  # as if allowed (the mark itself does not matter here)
                reply = super().request(method, path, {**body, "gateway": False}, **kw)
                self.bodies[0] = body
                return reply
            return super().request(method, path, body, **kw)

    ca = _Revoked(authority)
    ident = _gateway_identity(ca, tmp_path)
    ident.obtain()
    with pytest.raises(Rejected):
        ident.obtain()
    assert ident.gateway and all(b.get("gateway") for b in ca.bodies)
