"""TLS at the gateway, as Istio builds it: HTTPS servers' route tables, ``credentialNames``,
``subjectAltNames`` of any SAN type, and Istio's cipher suite filtering."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from tsunagi.api import GatewaySpec, load_documents
from tsunagi.api.errors import ValidationFailed
from tsunagi.mesh import World
from tsunagi.mesh.analysis import not_yet_enforced
from tsunagi.mesh.gateway_analysis import gateway_problems
from tsunagi.mesh.gateway_ports import merge_ports
from tsunagi.xds import resources as rs

from .test_translate_gateway import GATEWAY_NODE, resources_of, world_of

VS = """
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: web, namespace: default}
spec:
  hosts: ["*"]
  gateways: [edge]
  http:
  - route: [{destination: {host: web.default.svc.cluster.local, port: {number: 80}}}]
"""


def _gateway(servers: str) -> str:
    return f"""
apiVersion: networking.istio.io/v1beta1
kind: Gateway
metadata: {{name: edge, namespace: default}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
{servers}"""


def _world(*docs: str) -> World:
    return world_of(load_documents("---".join(docs), "test.yaml"))


def _of(world: World, type_url: str) -> dict[str, dict[str, Any]]:
    return resources_of(world, GATEWAY_NODE, type_url)


def _tls_context(world: World, port: int = 443) -> dict[str, Any]:
    [chain] = _of(world, rs.LISTENER)[f"gateway|{port}"]["filter_chains"]
    context: dict[str, Any] = chain["transport_socket"]["typed_config"]
    return context


TWO_HTTPS = """  - port: {number: 443, name: https-a, protocol: HTTPS}
    hosts: [a.example.com]
    tls: {mode: SIMPLE, credentialName: a}
  - port: {number: 443, name: https-b, protocol: HTTPS}
    hosts: [b.example.com]
    tls: {mode: SIMPLE, credentialName: b}
"""


def test_two_https_servers_sharing_a_port_name_are_refused_at_apply() -> None:
    servers = TWO_HTTPS.replace("name: https-b", "name: https-a")
    with pytest.raises(ValidationFailed) as e:
        load_documents(_gateway(servers), "gw.yaml")
    assert "servers[1].port.name" in str(e.value)
    assert "'https-a' is already used by servers[0] (port 443)" in str(e.value)


def test_port_names_are_unique_in_a_gateway_on_any_port_and_protocol() -> None:
    # Istio's ValidateGateway: "port names in servers must be unique", whatever the port
    # or protocol; two plain HTTP servers on one port sharing a name are refused too.
    for servers in (
        """  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [a.example.com]
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [b.example.com]
""",
        """  - port: {number: 80, name: web, protocol: HTTP}
    hosts: [a.example.com]
  - port: {number: 443, name: web, protocol: HTTPS}
    hosts: [b.example.com]
    tls: {mode: SIMPLE, credentialName: b}
""",
    ):
        with pytest.raises(ValidationFailed) as e:
            load_documents(_gateway(servers), "gw.yaml")
        assert "servers[1].port.name" in str(e.value) and "must be unique" in str(e.value)
    distinct = """  - port: {number: 80, name: http-a, protocol: HTTP}
    hosts: [a.example.com]
  - port: {number: 80, name: http-b, protocol: HTTP}
    hosts: [b.example.com]
"""
    assert len(load_documents(_gateway(distinct), "gw.yaml")) == 1


def test_a_stored_gateway_with_a_shared_https_port_name_keeps_the_first_servers_routes() -> None:
    # Validation refuses such a Gateway; one that got in anyway (older stores) is merged as
    # Istio merges it: the second server is left out instead of overwriting the first's
    # route table (before, a.example.com answered 404).
    [gateway, vs] = load_documents(_gateway(TWO_HTTPS) + "---" + VS, "test.yaml")
    spec = gateway.spec
    assert isinstance(spec, GatewaySpec)
    first, second = spec.servers
    renamed = second.model_copy(update={"port": second.port.model_copy(update={"name": "https-a"})})
    gateway = replace(gateway, spec=spec.model_copy(update={"servers": (first, renamed)}))
    world = world_of([gateway, vs])
    routes = _of(world, rs.ROUTE)
    assert [v["domains"] for v in routes["https.443.https-a.edge.default"]["virtual_hosts"]] == [
        ["a.example.com"]
    ]
    chains = _of(world, rs.LISTENER)["gateway|443"]["filter_chains"]
    assert [c["filter_chain_match"]["server_names"] for c in chains] == [["a.example.com"]]
    [left_out] = merge_ports([gateway])[1]
    assert left_out.index == 1 and "same port name 'https-a'" in left_out.reason
    warnings = gateway_problems(world, world.resources, running=[{"istio": "ingressgateway"}])
    assert [w for w in warnings if "spec.servers[1]" in w and "left out" in w], warnings


def test_each_https_chain_reads_the_route_table_translation_builds() -> None:
    world = _world(_gateway(TWO_HTTPS), VS)
    chains = _of(world, rs.LISTENER)["gateway|443"]["filter_chains"]
    read = [c["filters"][0]["typed_config"]["rds"]["route_config_name"] for c in chains]
    assert read == ["https.443.https-a.edge.default", "https.443.https-b.edge.default"]
    assert sorted(_of(world, rs.ROUTE)) == read


MUTUAL_TWO_CERTS = """  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: ["*"]
    tls:
      mode: MUTUAL
      credentialNames: [rsa, ecdsa]
      subjectAltNames: [client.example.com, spiffe://example.com/client]
"""


def test_credential_names_give_one_certificate_each_and_the_first_ones_ca() -> None:
    world = _world(_gateway(MUTUAL_TWO_CERTS), VS)
    common = _tls_context(world)["common_tls_context"]
    ads = {"ads": {}, "resource_api_version": "V3"}
    assert common["tls_certificate_sds_secret_configs"] == [
        {"name": "kubernetes://rsa", "sds_config": ads},
        {"name": "kubernetes://ecdsa", "sds_config": ads},
    ]
    validation = common["combined_validation_context"]
    assert validation["validation_context_sds_secret_config"]["name"] == "kubernetes://rsa-cacert"
    # No longer "not supported": apply does not warn about the server, nor about a CA the
    # second credential does not need.
    warnings = gateway_problems(world, world.resources)
    assert not [w for w in warnings if "not supported" in w], warnings
    assert not [w for w in warnings if "credentialNames[1]" in w and "CA" in w], warnings
    assert not [w for w in not_yet_enforced(world.resources) if "credentialNames" in w]


def test_subject_alt_names_match_a_san_of_any_type_as_in_istio() -> None:
    world = _world(_gateway(MUTUAL_TWO_CERTS), VS)
    validation = _tls_context(world)["common_tls_context"]["combined_validation_context"]
    matchers = validation["default_validation_context"]["match_typed_subject_alt_names"]
    got = {(m["san_type"], m["matcher"]["exact"]) for m in matchers}
    # "client.example.com" as a URI SAN passes too, and the SPIFFE ID as a DNS one: Istio's
    # untyped matcher does not guess the type from the name.
    assert got == {
        (t, n)
        for n in ("client.example.com", "spiffe://example.com/client")
        for t in ("DNS", "URI", "EMAIL", "IP_ADDRESS")
    }


def test_cipher_suites_keep_all_and_openssl_expressions_as_istio_does() -> None:
    servers = """  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: ["*"]
    tls:
      mode: SIMPLE
      credentialName: cert
      cipherSuites:
      - "[ECDHE-ECDSA-AES128-GCM-SHA256|ECDHE-ECDSA-CHACHA20-POLY1305]"
      - ALL
      - "-ECDHE-RSA-AES128-SHA"
      - "!DES-CBC3-SHA"
      - RC4-MD5
      - ALL
"""
    world = _world(_gateway(servers), VS)
    params = _tls_context(world)["common_tls_context"]["tls_params"]
    assert params["cipher_suites"] == [
        "[ECDHE-ECDSA-AES128-GCM-SHA256|ECDHE-ECDSA-CHACHA20-POLY1305]",
        "ALL",
        "-ECDHE-RSA-AES128-SHA",
        "!DES-CBC3-SHA",
    ]
    [warning] = [w for w in gateway_problems(world, world.resources) if "cipherSuites" in w]
    assert "ignoring unknown or repeated cipher suites ['RC4-MD5', 'ALL']" in warning


def test_a_tls_server_ending_tls_into_tcp_offers_no_alpn() -> None:
    # Istio offers h2,http/1.1 here too; we do not (gateway_chains.tls_context says why).
    servers = """  - port: {number: 9443, name: tls, protocol: TLS}
    hosts: ["*"]
    tls: {mode: SIMPLE, credentialName: cert}
"""
    tcp = """
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: bytes, namespace: default}
spec:
  hosts: ["*"]
  gateways: [edge]
  tcp:
  - route: [{destination: {host: web.default.svc.cluster.local, port: {number: 80}}}]
"""
    world = _world(_gateway(servers), tcp)
    assert "alpn_protocols" not in _tls_context(world, 9443)["common_tls_context"]


def test_tls_settings_envoy_does_not_get_are_warned_about() -> None:
    # Istio's own warnings: a CA file is not read (the CA comes from the credential), and
    # TLS 1.0/1.1 need ciphers of their own.
    servers = """  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: ["*"]
    tls:
      mode: MUTUAL
      credentialName: cert
      caCertificates: /etc/ca.pem
      minProtocolVersion: TLSV1_1
"""
    world = _world(_gateway(servers), VS)
    warnings = gateway_problems(world, world.resources)
    [ca] = [w for w in warnings if "tls.caCertificates" in w]
    assert "the client CA comes from the cert-cacert secret or the ca.crt of cert" in ca
    [old] = [w for w in warnings if "tls.minProtocolVersion TLSV1_1" in w]
    assert "need compatible ciphers set in cipherSuites" in old
    with_ciphers = servers + "      cipherSuites: [ECDHE-RSA-AES128-SHA]\n"
    world = _world(_gateway(with_ciphers), VS)
    assert not [w for w in gateway_problems(world, world.resources) if "minProtocolVersion" in w]
