"""SPIFFE identities of workloads, as Istio writes them:
``spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT``.

Shared by the CA (what it signs), the translation (whom a client expects, whom a policy
names) and the agent (what it asks for), so it imports nothing: the agent keeps its
steady-state memory small.
"""

from __future__ import annotations

SCHEME = "spiffe://"
DEFAULT_TRUST_DOMAIN = "cluster.local"


def spiffe_id(trust_domain: str, namespace: str, service_account: str) -> str:
    """The workload identity of ``service_account`` in ``namespace``."""
    return f"{SCHEME}{trust_domain}/ns/{namespace}/sa/{service_account}"


def parse(uri: str) -> tuple[str, str, str] | None:
    """``(trust domain, namespace, service account)`` of a workload identity, or None when
    ``uri`` is not one (another SPIFFE path, another scheme, an empty part)."""
    if not uri.startswith(SCHEME):
        return None
    parts = uri[len(SCHEME) :].split("/")
    if len(parts) != 5 or parts[1] != "ns" or parts[3] != "sa" or not all(parts):
        return None
    return parts[0], parts[2], parts[4]


def principal(uri: str) -> str:
    """The identity as AuthorizationPolicy ``principals`` name it: the URI without
    ``spiffe://`` (``cluster.local/ns/default/sa/sleep``)."""
    return uri[len(SCHEME) :] if uri.startswith(SCHEME) else uri
