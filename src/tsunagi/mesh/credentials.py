"""The TLS credentials a Gateway's ``credentialName`` names, read from Secrets by Istio's rules
(:mod:`tsunagi.secret_keys`: which keys hold the chain, the key and the CA, in which order).

A gateway reads only Secrets of its own namespace, so credentials are looked up by
``(namespace, name)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from tsunagi.api import Resource
from tsunagi.api.secrets import SecretSpec
from tsunagi.secret_keys import CA_KEYS, CA_SUFFIX, served_pair


@dataclass(frozen=True)
class Credential:
    """What one ``credentialName`` gives a gateway. Empty bytes: the Secret has none."""

    namespace: str
    name: str
    certificate_chain: bytes = b""
    private_key: bytes = field(default=b"", repr=False)  # never in a log line
    ca: bytes = b""
    """The trusted CA (PEM) that verifies clients of a MUTUAL server."""

    @property
    def has_certificate(self) -> bool:
        """A chain and a key: enough for a SIMPLE server."""
        return bool(self.certificate_chain and self.private_key)


def _ca(values: Mapping[str, bytes]) -> bytes:
    return next((values[k] for k in CA_KEYS if values.get(k)), b"")


def credentials_of(resources: Iterable[Resource]) -> Mapping[tuple[str, str], Credential]:
    """Every Secret as a :class:`Credential` by ``(namespace, name)`` (empty when it holds
    none of Istio's keys), with its CA found by Istio's rules."""
    secrets = {
        (r.namespace, r.name): r.spec.decoded for r in resources if isinstance(r.spec, SecretSpec)
    }
    out: dict[tuple[str, str], Credential] = {}
    for (ns, name), values in sorted(secrets.items()):
        pair = served_pair(values)
        chain, key = (values[pair[0]], values[pair[1]]) if pair else (b"", b"")
        ca_source = secrets.get((ns, name + CA_SUFFIX), values)
        out[ns, name] = Credential(ns, name, chain, key, _ca(ca_source))
    return MappingProxyType(out)
