"""ServiceEntry, WorkloadEntry, Gateway and Sidecar models and rules."""

from __future__ import annotations

import textwrap

import pytest

from tsunagi.api import (
    GatewaySpec,
    ServiceEntrySpec,
    SidecarSpec,
    ValidationFailed,
    WorkloadEntrySpec,
    load_documents,
)

from .examples import GATEWAY_BOOKINFO, SE_STATIC_ENDPOINTS, SIDECAR, WORKLOAD_ENTRY


def _doc(kind: str, spec: str) -> str:
    body = textwrap.indent(textwrap.dedent(spec).strip(), "  ")
    return (
        f"apiVersion: networking.istio.io/v1\nkind: {kind}\nmetadata:\n  name: r\nspec:\n{body}\n"
    )


def _errors(kind: str, spec: str) -> dict[str, str]:
    with pytest.raises(ValidationFailed) as info:
        load_documents(_doc(kind, spec))
    return {e.path: e.reason for e in info.value.errors}


# --------------------------------------------------------------------------- ServiceEntry


def test_service_entry_external_dns() -> None:
    [res] = load_documents(
        _doc(
            "ServiceEntry",
            """
            hosts: [httpbin.org]
            ports:
            - {number: 80, name: http, protocol: HTTP}
            - {number: 443, name: https, protocol: TLS, targetPort: 8443}
            location: MESH_EXTERNAL
            resolution: DNS
            """,
        )
    )
    spec = res.spec
    assert isinstance(spec, ServiceEntrySpec)
    assert spec.hosts == ("httpbin.org",)
    assert [(p.number, p.name, p.protocol) for p in spec.ports] == [
        (80, "http", "HTTP"),
        (443, "https", "TLS"),
    ]
    assert spec.ports[1].target_port == 8443
    assert spec.location == "MESH_EXTERNAL"


def test_service_entry_defaults() -> None:
    [res] = load_documents(_doc("ServiceEntry", "hosts: [api.example.com]"))
    assert isinstance(res.spec, ServiceEntrySpec)
    assert res.spec.resolution == "NONE"
    assert res.spec.location == "MESH_EXTERNAL"


def test_service_entry_static_endpoints() -> None:
    [res] = load_documents(_doc("ServiceEntry", SE_STATIC_ENDPOINTS))
    spec = res.spec
    assert isinstance(spec, ServiceEntrySpec)
    assert spec.endpoints[1].ports == {"mongo": 27019}
    assert spec.endpoints[1].weight == 10


def test_service_entry_hosts_required() -> None:
    errs = _errors("ServiceEntry", "ports: [{number: 80, name: http, protocol: HTTP}]")
    assert errs["spec.hosts"] == "at least one host is required"


def test_service_entry_port_rules() -> None:
    errs = _errors(
        "ServiceEntry",
        """
        hosts: [a.example.com]
        ports:
        - {number: 0, name: http, protocol: HTTP}
        - {number: 80, name: web, protocol: HTTP}
        - {number: 80, name: web, protocol: SMTP}
        - {number: 81, protocol: TCP}
        """,
    )
    assert "between 1 and 65535" in errs["spec.ports[0].number"]


def test_service_entry_port_uniqueness_and_protocol() -> None:
    errs = _errors(
        "ServiceEntry",
        """
        hosts: [a.example.com]
        ports:
        - {number: 80, name: web, protocol: HTTP}
        - {number: 80, name: web, protocol: SMTP}
        - {number: 81, protocol: TCP}
        """,
    )
    assert errs["spec.ports[1].number"] == "duplicate port number 80"
    assert errs["spec.ports[1].name"] == "duplicate port name 'web'"
    assert "unrecognized protocol 'SMTP'" in errs["spec.ports[1].protocol"]
    assert errs["spec.ports[2].name"] == "port name is required"


def test_service_entry_resolution_consistency() -> None:
    errs = _errors(
        "ServiceEntry",
        "hosts: [a.example.com]\nresolution: NONE\nendpoints: [{address: 1.1.1.1}]",
    )
    assert "resolution is NONE" in errs["spec.endpoints"]
    errs = _errors(
        "ServiceEntry",
        "hosts: [a.example.com]\nresolution: STATIC\nendpoints: [{address: db.example.com}]",
    )
    assert "not a valid IP" in errs["spec.endpoints[0].address"]
    errs = _errors("ServiceEntry", "hosts: ['*.example.com']\nresolution: DNS")
    assert "fully qualified" in errs["spec.hosts[0]"]
    errs = _errors(
        "ServiceEntry",
        "hosts: [a.example.com]\nresolution: DNS_ROUND_ROBIN\n"
        "endpoints: [{address: a.example.com}, {address: b.example.com}]",
    )
    assert "at most one endpoint" in errs["spec.endpoints"]


def test_service_entry_endpoint_port_must_be_declared() -> None:
    errs = _errors(
        "ServiceEntry",
        """
        hosts: [a.example.com]
        ports: [{number: 80, name: http, protocol: HTTP}]
        resolution: STATIC
        endpoints: [{address: 1.1.1.1, ports: {grpc: 9000}}]
        """,
    )
    assert "not declared" in errs["spec.endpoints[0].ports.grpc"]


def test_service_entry_resolution_enum() -> None:
    errs = _errors("ServiceEntry", "hosts: [a.example.com]\nresolution: DNS_ONLY")
    assert "DNS_ROUND_ROBIN" in errs["spec.resolution"]


def test_service_entry_selector_and_endpoints_exclusive() -> None:
    errs = _errors(
        "ServiceEntry",
        "hosts: [a.internal]\nresolution: STATIC\nworkloadSelector: {labels: {app: a}}\n"
        "endpoints: [{address: 1.1.1.1}]",
    )
    assert "only one of endpoints and workloadSelector" in errs["spec"]


# --------------------------------------------------------------------------- WorkloadEntry


def test_workload_entry() -> None:
    [res] = load_documents(_doc("WorkloadEntry", WORKLOAD_ENTRY))
    spec = res.spec
    assert isinstance(spec, WorkloadEntrySpec)
    assert spec.address == "2.2.2.2"
    assert spec.ports == {"http": 8080}
    assert spec.service_account == "details-legacy"


def test_workload_entry_needs_address() -> None:
    errs = _errors("WorkloadEntry", "labels: {app: a}")
    assert "address is required" in errs["spec.address"]
    errs = _errors("WorkloadEntry", "address: 1.1.1.1\nports: {http: 0}")
    assert "between 1 and 65535" in errs["spec.ports.http"]


# --------------------------------------------------------------------------- Gateway


def test_bookinfo_gateway() -> None:
    [res] = load_documents(_doc("Gateway", GATEWAY_BOOKINFO))
    spec = res.spec
    assert isinstance(spec, GatewaySpec)
    assert spec.selector == {"istio": "ingressgateway"}
    assert spec.servers[1].tls is not None
    assert spec.servers[1].tls.credential_name == "bookinfo-cert"
    assert spec.servers[2].tls is not None and spec.servers[2].tls.https_redirect


def test_gateway_rules() -> None:
    errs = _errors("Gateway", "servers: []")
    assert errs["spec.servers"] == "at least one server is required"
    errs = _errors("Gateway", "servers:\n- hosts: ['*']")
    assert errs["spec.servers[0].port"] == "required field is missing"
    errs = _errors(
        "Gateway",
        """
        servers:
        - port: {number: 443, name: https, protocol: HTTPS}
          hosts: []
        - port: {number: 80, protocol: HTTP}
          hosts: [a.example.com]
          tls: {mode: SIMPLE, credentialName: c}
        """,
    )
    assert errs["spec.servers[0].hosts"] == "at least one host is required"
    assert "tls settings are required" in errs["spec.servers[0].tls"]
    assert errs["spec.servers[1].port.name"] == "port name is required"
    assert "only allowed on HTTPS/TLS" in errs["spec.servers[1].tls"]


def test_gateway_simple_tls_needs_certs() -> None:
    errs = _errors(
        "Gateway",
        "servers:\n- port: {number: 443, name: https, protocol: HTTPS}\n"
        "  hosts: ['*']\n  tls: {mode: SIMPLE}",
    )
    assert "spec.servers[0].tls.serverCertificate" in errs
    assert "spec.servers[0].tls.privateKey" in errs


def test_gateway_tls_versions_must_leave_some_version_and_crl_needs_files() -> None:
    errs = _errors(
        "Gateway",
        """
        servers:
        - port: {number: 443, name: https, protocol: HTTPS}
          hosts: [a.example.com]
          tls: {mode: SIMPLE, credentialName: c, maxProtocolVersion: TLSV1_1}
        - port: {number: 443, name: https-b, protocol: HTTPS}
          hosts: [b.example.com]
          tls: {mode: MUTUAL, credentialName: c, minProtocolVersion: TLSV1_3,
                maxProtocolVersion: TLSV1_2, caCrl: /crl.pem}
        - port: {number: 443, name: https-c, protocol: HTTPS}
          hosts: [c.example.com]
          tls: {mode: SIMPLE, credentialName: c, minProtocolVersion: TLSV1_0,
                maxProtocolVersion: TLSV1_1}
        """,
    )
    assert errs["spec.servers[0].tls.maxProtocolVersion"] == (
        "maxProtocolVersion TLSV1_1 is below minProtocolVersion TLSV1_2 (the default); raise "
        "it or lower minProtocolVersion"
    )
    assert "below minProtocolVersion TLSV1_3;" in errs["spec.servers[1].tls.maxProtocolVersion"]
    assert "not supported with credentialName" in errs["spec.servers[1].tls.caCrl"]
    assert not [k for k in errs if k.startswith("spec.servers[2]")]


# --------------------------------------------------------------------------- Sidecar


def test_sidecar() -> None:
    [res] = load_documents(_doc("Sidecar", SIDECAR))
    spec = res.spec
    assert isinstance(spec, SidecarSpec)
    assert spec.outbound_traffic_policy is not None
    assert spec.outbound_traffic_policy.mode == "REGISTRY_ONLY"
    assert spec.egress[1].hosts == ("istio-system/*", "./*")


def test_sidecar_rules() -> None:
    errs = _errors(
        "Sidecar",
        """
        egress:
        - hosts: ["./*"]
        - port: {number: 80, protocol: HTTP}
          hosts: [reviews]
        - hosts: []
        outboundTrafficPolicy: {mode: DENY_ALL}
        """,
    )
    assert "REGISTRY_ONLY" in errs["spec.outboundTrafficPolicy.mode"]
    errs = _errors(
        "Sidecar",
        """
        egress:
        - hosts: ["./*"]
        - port: {number: 80, protocol: HTTP}
          hosts: [reviews]
        - hosts: []
        """,
    )
    assert "must be the last" in errs["spec.egress[0]"]
    assert "namespace/host" in errs["spec.egress[1].hosts[0]"]
    assert "only one egress listener" in errs["spec.egress[2]"]
    assert "at least one host" in errs["spec.egress[2].hosts"]
