"""The mark that lets a proxy receive private keys: a ``certificatePolicies`` extension with
:data:`GATEWAY_POLICY_OID` in its workload certificate.

Only the mesh's CA writes it (it copies nothing from a CSR), and only for a caller that may
run a gateway: the admin token, or a workload token made with ``tsunagi token create
--gateway``. The xDS server reads the client certificate at stream open and gives SDS
Secrets (a gateway's credentials, keys included) only to a node whose certificate carries
the mark. So a namespace's ordinary workload token cannot pose as that namespace's gateway
and walk away with its keys; Istio gets the same effect by authorizing gateway SDS per
service account.

Shared by the CA (writes) and the xDS server (reads); imports nothing of tsunagi.
"""

from __future__ import annotations

GATEWAY_POLICY_OID = "2.25.269816073412073062184878672691810355836"
"""Tsunagi's "may hold gateway keys" certificate policy. A UUID-based OID under 2.25, which
anyone may mint without registration (ITU-T X.667); made once from the random UUID
cafcaf7e-a3f3-478c-9434-107928d14a7c and never to change: certificates already issued
carry it."""


def has_gateway_mark(cert_pem: bytes) -> bool:
    """Whether the (first) certificate in ``cert_pem`` carries the gateway policy. False for
    anything that does not parse."""
    from cryptography import x509  # here: sidecar agents import tsunagi and never parse

    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        policies = cert.extensions.get_extension_for_class(x509.CertificatePolicies).value
    except (ValueError, x509.ExtensionNotFound):
        return False
    return any(p.policy_identifier.dotted_string == GATEWAY_POLICY_OID for p in policies)
