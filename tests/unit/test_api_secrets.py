"""The Secret kind: loading and checks, redaction, Istio's credential rules, SDS resources
for exactly the gateway that needs them, and apply's warnings about credentialName."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from tests.certs import leaks, make_ca, make_cert
from tsunagi.api import ValidationFailed, load_documents
from tsunagi.api.secrets import REDACTED, SecretSpec, redact
from tsunagi.ca.issue import Issued
from tsunagi.mesh import Node, World
from tsunagi.mesh.credential_analysis import credential_problems
from tsunagi.mesh.credentials import credentials_of
from tsunagi.xds import resources as rs
from tsunagi.xds.translate import translate
from tsunagi.xds.translate.names import credential_ca_secret, credential_secret

from envoy.extensions.transport_sockets.tls.v3 import secret_pb2  # isort: skip

SERVER = make_cert("bookinfo.example.com")
OTHER = make_cert("other.example.com")
CA = make_ca()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def tls_secret(
    name: str = "cred",
    ns: str = "istio-system",
    pem: Issued = SERVER,
    key: bytes | None = None,
    ca: bytes | None = None,
    type_: str = "kubernetes.io/tls",
) -> str:
    data = {"tls.crt": b64(pem.cert), "tls.key": b64(pem.key if key is None else key)}
    if ca is not None:
        data["ca.crt"] = b64(ca)
    doc = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": ns},
        "type": type_,
        "data": data,
    }
    return json.dumps(doc)


def errors_of(text: str) -> list[tuple[str, str]]:
    with pytest.raises(ValidationFailed) as e:
        load_documents(text, "s.yaml")
    return [(x.path, x.reason) for x in e.value.errors]


# ----------------------------------------------------------------------------- model


def test_a_kubectl_made_tls_secret_loads() -> None:
    [r] = load_documents(tls_secret(), "s.yaml")
    assert (r.api_version, r.kind, r.namespace, r.name) == ("v1", "Secret", "istio-system", "cred")
    assert isinstance(r.spec, SecretSpec)
    assert r.spec.decoded == {"tls.crt": SERVER.cert, "tls.key": SERVER.key}


def test_string_data_is_plain_text_and_wins_over_data() -> None:
    text = (
        "apiVersion: v1\nkind: Secret\nmetadata: {name: g}\n"
        f"data: {{cert: {b64(OTHER.cert)}}}\n"
        "stringData:\n  cert: |\n"
        + "".join(f"    {line}\n" for line in SERVER.cert.decode().splitlines())
        + "  key: |\n"
        + "".join(f"    {line}\n" for line in SERVER.key.decode().splitlines())
    )
    [r] = load_documents(text)
    assert r.spec.decoded["cert"].strip() == SERVER.cert.strip()


@pytest.mark.parametrize(
    ("change", "path", "says"),
    [
        (lambda d: d["data"].update({"tls.key": "not base64!"}), 'data["tls.key"]', "base64"),
        (
            lambda d: d["data"].update({"tls.crt": b64(b"hello")}),
            'data["tls.crt"]',
            "not a PEM certificate",
        ),
        (
            lambda d: d["data"].update({"tls.crt": b64(b"-----BEGIN CERTIFICATE-----\nAAAA\n")}),
            'data["tls.crt"]',
            "does not parse",
        ),
        (
            lambda d: d["data"].update({"tls.key": b64(SERVER.key[:120])}),
            'data["tls.key"]',
            "not a valid PEM private key",
        ),
        (
            lambda d: d["data"].update({"tls.key": b64(OTHER.key)}),
            'data["tls.key"]',
            "does not match the certificate",
        ),
        (
            lambda d: d["data"].update({"ca.crt": b64(b"nope")}),
            'data["ca.crt"]',
            "not a PEM CA certificate",
        ),
        (lambda d: d["data"].pop("tls.key"), 'data["tls.key"]', "required for a Secret of type"),
        (lambda d: d["data"].update({"tls.key": REDACTED}), 'data["tls.key"]', "give the key"),
        (lambda d: d["data"].update({"bad/key": "AA=="}), 'data["bad/key"]', "invalid key name"),
        (lambda d: d.update({"spec": {}}), "spec", "unknown field"),
        (lambda d: d.update({"data": "a string"}), "data", "must be a mapping"),
    ],
)
def test_bad_secrets_are_refused_with_their_field(change: Any, path: str, says: str) -> None:
    doc = json.loads(tls_secret())
    change(doc)
    errors = errors_of(json.dumps(doc))
    assert [p for p, _ in errors] == [path], errors
    assert says in errors[0][1]


def test_no_error_quotes_key_material() -> None:
    doc = json.loads(tls_secret(key=OTHER.key))
    doc["data"]["ca.crt"] = "%%%"
    doc["stringData"] = {"key": OTHER.key.decode()[:200], "cert": SERVER.key.decode()}
    with pytest.raises(ValidationFailed) as e:
        load_documents(json.dumps(doc), "s.yaml")
    text = str(e.value)
    assert len(e.value.errors) >= 3
    for secret in (SERVER.key, OTHER.key):
        assert not leaks(text, secret)
    assert "%%%" not in text


def test_opaque_secrets_with_other_keys_are_not_read_as_tls() -> None:
    doc = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "api-token"},
        "stringData": {"key": "sk-123", "token": "t"},
    }
    [r] = load_documents(json.dumps(doc))
    assert r.spec.type == "Opaque"


def test_no_repr_shows_the_key() -> None:
    doc = json.loads(tls_secret(pem=SERVER))
    doc["stringData"] = {"key": SERVER.key.decode(), "cert": SERVER.cert.decode()}
    [resource] = load_documents(json.dumps(doc))
    world = _world(_gateway(), json.dumps(doc))
    assert world.credentials["istio-system", "cred"].private_key == SERVER.key
    for shown in (repr(world), repr(resource), repr(resource.spec), repr(world.resources)):
        assert not leaks(shown, SERVER.key)
    assert "cred" in repr(resource) and "kubernetes.io/tls" in repr(resource.spec)


# ----------------------------------------------------------------------------- redaction


def test_redaction_keeps_certificates_and_hides_everything_else() -> None:
    doc = json.loads(tls_secret(ca=CA.cert))
    doc["stringData"] = {"key": "x", "cacert": CA.cert.decode(), "cert": SERVER.key.decode()}
    shown = redact(doc)
    assert shown["data"] == {
        "tls.crt": b64(SERVER.cert),
        "tls.key": REDACTED,
        "ca.crt": b64(CA.cert),
    }
    # a certificate key holding a private key (a bundle) is hidden too
    assert shown["stringData"] == {"key": REDACTED, "cacert": CA.cert.decode(), "cert": REDACTED}
    assert doc["data"]["tls.key"] == b64(SERVER.key)  # the stored document is untouched


# ----------------------------------------------------------------------------- credentials


def _generic(name: str, ns: str = "istio-system", **values: bytes) -> str:
    doc = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": ns},
        "type": "Opaque",
        "data": {k: b64(v) for k, v in values.items()},
    }
    return json.dumps(doc)


def _credentials(*docs: str) -> Any:
    return credentials_of(load_documents("\n---\n".join(docs)))


def test_istio_key_rules() -> None:
    creds = _credentials(
        tls_secret("tls", ca=CA.cert),
        _generic("generic", cert=OTHER.cert, key=OTHER.key, cacert=CA.cert),
        # generic keys win when both pairs are there, as in Istio
        _generic(
            "both",
            cert=OTHER.cert,
            key=OTHER.key,
            **{"tls.crt": SERVER.cert, "tls.key": SERVER.key},
        ),
        tls_secret("split"),
        _generic("split-cacert", cacert=CA.cert),
    )
    tls = creds["istio-system", "tls"]
    assert (tls.certificate_chain, tls.private_key, tls.ca) == (SERVER.cert, SERVER.key, CA.cert)
    generic = creds["istio-system", "generic"]
    assert (generic.certificate_chain, generic.ca) == (OTHER.cert, CA.cert)
    assert creds["istio-system", "both"].certificate_chain == OTHER.cert
    # the CA of NAME may come from the Secret NAME-cacert
    assert creds["istio-system", "split"].ca == CA.cert
    # the key is in no repr (nor, so, in a log line)
    assert not leaks(repr(tls), SERVER.key)


def test_get_secrets_describes_the_certificate_the_gateway_serves() -> None:
    from tsunagi.cli.secrets import secrets_table

    # both pairs: Istio serves cert/key; a lone cert or tls.crt (no key) is not what it serves
    both = _generic(
        "both", cert=OTHER.cert, key=OTHER.key, **{"tls.crt": SERVER.cert, "tls.key": SERVER.key}
    )
    lone = _generic("lone", cert=OTHER.cert, key=OTHER.key, **{"tls.crt": SERVER.cert})
    lone_cert = _generic(
        "lone-cert", cert=SERVER.cert, **{"tls.crt": OTHER.cert, "tls.key": OTHER.key}
    )
    docs = (both, lone, lone_cert)
    creds = _credentials(*docs)
    items = [
        {
            "namespace": "istio-system",
            "name": json.loads(doc)["metadata"]["name"],
            "document": redact(json.loads(doc)),
            "revision": 1,
        }
        for doc in docs
    ]
    rows = secrets_table(items, wide=True).splitlines()[1:]
    for row, name in zip(rows, ("both", "lone", "lone-cert"), strict=True):
        assert creds["istio-system", name].certificate_chain == OTHER.cert
        assert "CN=other.example.com" in row and "bookinfo" not in row, row
        assert f"{OTHER.serial:x}" in row and "DNS:other.example.com" in row, row


# ----------------------------------------------------------------------------- SDS


def _gateway(ns: str = "istio-system", mode: str = "SIMPLE", cred: str = "cred") -> str:
    return f"""
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: {ns}}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 8443, name: https, protocol: HTTPS}}
    hosts: ["*"]
    tls: {{mode: {mode}, credentialName: {cred}}}
"""


def _node(
    ns: str, labels: dict[str, str] | None = None, kind: str = "gateway", verified: bool = True
) -> Node:
    """A proxy; ``verified``: its xDS client certificate proved its namespace
    (tsunagi.xds.peer_identity)."""
    meta = {
        "kind": kind,
        "namespace": ns,
        "service": "ingress",
        "labels": labels if labels is not None else {"istio": "ingressgateway"},
    }
    return Node.from_metadata(f"{kind}-{ns}", meta, verified)


def _secrets(world: World, node: Node) -> dict[str, secret_pb2.Secret]:
    out = {}
    for name, r in translate(world, node).of(rs.SECRET).items():
        msg = secret_pb2.Secret()
        assert r.body.Unpack(msg)
        out[name] = msg
    return out


def _world(*docs: str) -> World:
    return World.build(1, load_documents("\n---\n".join(docs)), [])


def test_a_gateway_gets_the_credentials_its_servers_name_from_its_own_namespace() -> None:
    other_ca = make_ca("other")
    world = _world(
        _gateway(mode="MUTUAL"),
        tls_secret("cred", "istio-system", ca=CA.cert),
        tls_secret("cred", "b", OTHER, ca=other_ca.cert),
        tls_secret("unused", "istio-system"),
    )
    got = _secrets(world, _node("istio-system"))
    assert sorted(got) == [credential_secret("cred"), credential_ca_secret("cred")]
    cert = got["kubernetes://cred"].tls_certificate
    assert cert.certificate_chain.inline_bytes == SERVER.cert
    assert cert.private_key.inline_bytes == SERVER.key
    assert got["kubernetes://cred-cacert"].validation_context.trusted_ca.inline_bytes == CA.cert
    # the same Gateway served by a gateway in namespace b: b's Secret, never istio-system's
    in_b = _secrets(world, _node("b"))
    assert in_b["kubernetes://cred"].tls_certificate.certificate_chain.inline_bytes == OTHER.cert
    assert SERVER.key not in in_b["kubernetes://cred"].SerializeToString()


def test_sidecars_and_unselected_gateways_get_no_secrets() -> None:
    world = _world(_gateway(), tls_secret())
    # a sidecar with the gateway's labels (which the Gateway's selector matches), verified
    sidecar = _node("istio-system", kind="sidecar")
    assert rs.SECRET not in translate(world, sidecar).resources
    # the gateway itself, unverified (no certificate of its namespace): all but its Secrets
    unverified = translate(world, _node("istio-system", verified=False))
    assert rs.SECRET not in unverified.resources and unverified.of(rs.LISTENER)
    assert _secrets(world, _node("istio-system", {"istio": "egress"})) == {}
    # a gateway in a namespace without the Secret gets nothing (its listener waits for it)
    assert _secrets(world, _node("c")) == {}


def test_one_credential_that_fails_to_translate_costs_only_itself(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tsunagi.xds.translate import secrets as sds
    from tsunagi.xds.translate import translate_outbound

    real = sds.gateway_secrets

    def failing(credentials: Any) -> Any:
        if any(c.name == "bad" for c in credentials):
            raise ValueError("cannot pack it")
        return real(credentials)

    monkeypatch.setattr(sds, "gateway_secrets", failing)
    gateway = _gateway().replace(
        "tls: {mode: SIMPLE, credentialName: cred}",
        "tls: {mode: SIMPLE, credentialNames: [cred, bad]}",
    )
    world = _world(gateway, tls_secret("cred"), tls_secret("bad"))
    node = _node("istio-system")
    out = translate_outbound(world, world.scope_of(node))
    assert sorted(out.secrets) == [credential_secret("cred")]
    assert out.listeners  # the gateway's update goes on without it
    [error] = out.errors
    assert error.resources == (("Secret", "istio-system", "bad"),)
    assert "ValueError: cannot pack it" in error.describe()


def test_a_renewed_certificate_is_a_new_version() -> None:
    node = _node("istio-system")
    before = translate(_world(_gateway(), tls_secret()), node).of(rs.SECRET)
    renewed = make_cert("bookinfo.example.com")
    after = translate(_world(_gateway(), tls_secret(pem=renewed)), node).of(rs.SECRET)
    name = credential_secret("cred")
    assert before[name].version != after[name].version
    again = translate(_world(_gateway(), tls_secret()), node).of(rs.SECRET)
    assert again[name].version == before[name].version  # content-hashed: same content, same


# ----------------------------------------------------------------------------- analysis


def test_missing_credential_is_ist0101_in_the_gateways_namespace() -> None:
    gateway = load_documents(_gateway())
    world = _world(_gateway(), tls_secret("cred", "b"))
    running = [("istio-system", {"istio": "ingressgateway"})]
    [warning] = credential_problems(world, gateway, running)
    assert "spec.servers[0].tls.credentialName: [IST0101] Referenced credentialName not " in warning
    assert 'found: "cred"' in warning and "namespace istio-system" in warning
    # served from namespace b, where the Secret is: nothing to say
    assert credential_problems(world, gateway, [("b", {"istio": "ingressgateway"})]) == []
    # no gateway running: the Gateway's own namespace is looked in, and the warning says so
    [assumed] = credential_problems(world, gateway, [])
    assert "no running gateway serves this Gateway yet" in assumed


def test_mutual_without_a_ca_is_reported_and_a_cacert_secret_is_enough() -> None:
    gateway = load_documents(_gateway(mode="MUTUAL"))
    running = [("istio-system", {"istio": "ingressgateway"})]
    [warning] = credential_problems(_world(tls_secret()), gateway, running)
    assert "MUTUAL TLS verifies client certificates with a CA" in warning
    with_ca = _world(tls_secret(), _generic("cred-cacert", cacert=CA.cert))
    assert credential_problems(with_ca, gateway, running) == []


def test_optional_mutual_needs_a_ca_too() -> None:
    gateway = load_documents(_gateway(mode="OPTIONAL_MUTUAL"))
    running = [("istio-system", {"istio": "ingressgateway"})]
    [warning] = credential_problems(_world(tls_secret()), gateway, running)
    assert "OPTIONAL_MUTUAL TLS verifies client certificates with a CA" in warning
    assert credential_problems(_world(tls_secret(ca=CA.cert)), gateway, running) == []


def test_no_credential_warning_where_the_gateway_ends_no_tls_with_it() -> None:
    running = [("istio-system", {"istio": "ingressgateway"})]
    world = _world()  # no Secret at all
    # PASSTHROUGH forwards the client's TLS: its credentialName is not used (nor sent)
    passthrough = _gateway(mode="PASSTHROUGH")
    assert credential_problems(world, load_documents(passthrough), running) == []
    with_secret = _world(passthrough, tls_secret())
    assert _secrets(with_secret, _node("istio-system")) == {}
    # a server the gateway leaves out: its port is held by a plain-HTTP server before it
    clash = _gateway().replace(
        "  servers:\n",
        "  servers:\n  - port: {number: 8443, name: http, protocol: HTTP}\n    hosts: ['*']\n",
    )
    docs = load_documents(clash)
    assert credential_problems(_world(clash), docs, running) == []
    # ... and its key is not sent: the gateway ends no TLS with it
    assert _secrets(_world(clash, tls_secret()), _node("istio-system")) == {}
    # ... while a served one with the same missing Secret is reported
    assert credential_problems(_world(_gateway()), load_documents(_gateway()), running)
