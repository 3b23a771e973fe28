"""Which keys of a Secret hold what, by Istio's rules: one place for the API's checks, the
gateway's credentials and the CLI's ``get secrets``, so all three describe the same
certificate. Dependency-free (the CLI and the agent import it).

Istio (pilot's Kubernetes credentials controller) reads, whatever the Secret's type, the
certificate chain and key from ``cert``/``key`` when both are non-empty, else from
``tls.crt``/``tls.key``; the CA that verifies clients from ``cacert``, else ``ca.crt``, in the
Secret ``NAME-cacert`` when it exists, else in ``NAME`` itself.
"""

from __future__ import annotations

from collections.abc import Mapping

TLS_TYPE = "kubernetes.io/tls"
"""kubectl's ``create secret tls`` type; Kubernetes requires tls.crt and tls.key in it."""
OPAQUE_TYPE = "Opaque"
"""kubectl's ``create secret generic`` type (and Kubernetes' default)."""

TLS_CERT, TLS_KEY, TLS_CA = "tls.crt", "tls.key", "ca.crt"
GENERIC_CERT, GENERIC_KEY, GENERIC_CA = "cert", "key", "cacert"

CERT_KEY_PAIRS = ((GENERIC_CERT, GENERIC_KEY), (TLS_CERT, TLS_KEY))
"""``(certificate key, private key key)`` pairs, in the order Istio looks: the first pair
whose two values are both non-empty is what the gateway serves."""
CA_KEYS = (GENERIC_CA, TLS_CA)
"""Where Istio finds a CA, in the order it looks."""
CA_SUFFIX = "-cacert"
"""Istio's suffix of a Secret that holds only the CA for the credential it is named after."""

PUBLIC_KEYS = frozenset({TLS_CERT, TLS_CA, GENERIC_CERT, GENERIC_CA})
"""Keys whose values are certificates (public); every other value is redacted on the way out."""


def served_pair(values: Mapping[str, object]) -> tuple[str, str] | None:
    """``(certificate key, private key key)`` of the pair a gateway serves from a Secret
    holding ``values`` (key → value): the first of :data:`CERT_KEY_PAIRS` whose two values
    are both non-empty; None when no pair is."""
    return next(((c, k) for c, k in CERT_KEY_PAIRS if values.get(c) and values.get(k)), None)
