"""The Kubernetes core ``Secret`` kind (``apiVersion: v1``), as kubectl writes it, and its
checks: what a Gateway's ``credentialName`` names.

A Secret has no ``spec``: its ``type``, ``data`` (base64) and ``stringData`` (plain text) sit
at the top level of the document. Istio reads TLS credentials by key name, whatever the type:
``tls.crt``/``tls.key``/``ca.crt`` (``kubernetes.io/tls``) or ``cert``/``key``/``cacert``
(generic). Those values are checked here with ``cryptography`` (imported only when a Secret
is checked: the sidecar's agent never needs it). No message ever quotes a value: the values
are private keys.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterator, Mapping
from functools import cached_property
from types import MappingProxyType
from typing import Annotated, Any

from pydantic import BeforeValidator, Field

from tsunagi.secret_keys import (
    CA_KEYS,
    CERT_KEY_PAIRS,
    OPAQUE_TYPE,
    PUBLIC_KEYS,
    TLS_CERT,
    TLS_KEY,
    TLS_TYPE,
)

from .checks_common import Issue, Path
from .common import IstioModel, StrictBool

LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
"""The annotation where ``kubectl apply`` keeps the whole document it applied: for a Secret,
its keys in plain sight. Dropped before a Secret is stored (:func:`without_last_applied`)."""

REDACTED = "<redacted>"
"""What the API shows instead of a value that is not a certificate (see :func:`redact`)."""

# Kubernetes' rule for data keys (IsConfigMapKey).
_KEY_NAME = re.compile(r"^[-._a-zA-Z0-9]+$")
_MAX_KEY_NAME = 253


def _values(value: Any) -> Any:
    """``data``/``stringData`` checked with messages that never quote a value (pydantic's
    would show the start of one, which may be a private key)."""
    if not isinstance(value, Mapping):
        raise ValueError("must be a mapping of key names (e.g. tls.crt) to values")
    for key, v in value.items():
        if not isinstance(key, str) or not isinstance(v, str):
            raise ValueError(f"the value of {str(key)[:80]!r} must be a string")
    return value


_Values = Annotated[Mapping[str, str], BeforeValidator(_values)]


class SecretSpec(IstioModel):
    """The content of a ``Secret``: its top-level ``type``, ``data``, ``stringData``."""

    type: str = OPAQUE_TYPE
    # repr=False: a repr (in a log line, a traceback) must never show a key
    data: _Values = Field(default_factory=dict, repr=False)
    """Base64-encoded values."""
    string_data: _Values = Field(default_factory=dict, repr=False)
    """Plain-text values; they win over ``data`` for the same key, as in Kubernetes."""
    immutable: StrictBool | None = None

    @cached_property
    def decoded(self) -> Mapping[str, bytes]:
        """Every key's bytes (``data`` decoded, ``stringData`` over it), decoded once per
        parsed Secret (every World build reads it). A value that is not base64 is left out
        (the checks refuse such a Secret)."""
        out: dict[str, bytes] = {}
        for key, text in self.data.items():
            decoded = _b64(text)
            if decoded is not None:
                out[key] = decoded
        for key, text in self.string_data.items():
            out[key] = text.encode()
        return MappingProxyType(out)


SECRET_FIELDS = ("type", "data", "stringData", "immutable")
"""The top-level fields of a Secret document (it has no ``spec``)."""


def _b64(text: str) -> bytes | None:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def _where(spec: SecretSpec, key: str) -> Path:
    """The field a key's value came from (``stringData`` wins, so it is the one to blame)."""
    return ("stringData", key) if key in spec.string_data else ("data", key)


def check_secret(spec: SecretSpec) -> Iterator[Issue]:
    """Kubernetes' rules for a Secret, then Istio's TLS keys: certificates that parse, a
    private key that parses and matches its certificate, CAs that parse."""
    if not spec.type:
        yield Issue(("type",), "must not be empty (e.g. kubernetes.io/tls or Opaque)")
    for field, mapping in (("data", spec.data), ("stringData", spec.string_data)):
        for key, text in mapping.items():
            reason = _key_name_problem(key)
            if reason:
                yield Issue((field, key), reason)
            if text == REDACTED:
                yield Issue(
                    (field, key),
                    f"holds {REDACTED}, which `tsunagi get` shows instead of a private key; "
                    "give the key itself (e.g. `tsunagi create secret tls NAME --cert FILE "
                    "--key FILE`)",
                )
            elif field == "data" and _b64(text) is None:
                yield Issue(
                    (field, key),
                    "is not valid base64 (data values are base64-encoded; put plain text "
                    "under stringData instead)",
                )
    values = spec.decoded
    if spec.type == TLS_TYPE:
        for key in (TLS_CERT, TLS_KEY):
            if key not in spec.data and key not in spec.string_data:
                yield Issue(("data", key), f"required for a Secret of type {TLS_TYPE}")
    yield from _check_tls(spec, values)


def _key_name_problem(key: str) -> str | None:
    if not key or len(key) > _MAX_KEY_NAME or not _KEY_NAME.match(key) or key in (".", ".."):
        return (
            "invalid key name (at most 253 letters, digits, '-', '_' or '.'; "
            "e.g. tls.crt, tls.key, ca.crt)"
        )
    return None


def _check_tls(spec: SecretSpec, values: Mapping[str, bytes]) -> Iterator[Issue]:
    """The certificate/key pairs Istio reads (``cert``+``key``, ``tls.crt``+``tls.key``: each
    checked when the Secret is of type kubernetes.io/tls or holds both), and every CA."""
    for cert_key, key_key in CERT_KEY_PAIRS:
        both = cert_key in values and key_key in values
        if not both and not (spec.type == TLS_TYPE and cert_key == TLS_CERT):
            continue
        certs = None
        if cert_key in values:
            certs, reason = parse_certificates(values[cert_key])
            if reason:
                yield Issue(_where(spec, cert_key), reason)
        if key_key in values:
            key, reason = _parse_private_key(values[key_key])
            if reason:
                yield Issue(_where(spec, key_key), reason)
            elif certs and not _matches(key, certs[0]):
                yield Issue(
                    _where(spec, key_key),
                    f"the private key does not match the certificate in {cert_key} (the "
                    "first one, which must be the leaf: its public key differs); give the "
                    "key that certificate was issued for",
                )
    for ca_key in CA_KEYS:
        if ca_key in values:
            _, reason = parse_certificates(values[ca_key])
            if reason:
                yield Issue(_where(spec, ca_key), reason.replace("certificate", "CA certificate"))


def parse_certificates(pem: bytes) -> tuple[list[Any], str | None]:
    """The PEM certificates in ``pem`` (a chain, leaf first), or a reason they do not parse."""
    from cryptography import x509

    if b"-----BEGIN CERTIFICATE-----" not in pem:
        return [], "is not a PEM certificate (expected -----BEGIN CERTIFICATE-----)"
    try:
        return x509.load_pem_x509_certificates(pem), None
    except ValueError:
        return [], "is not a valid PEM certificate (it does not parse as X.509)"


def _parse_private_key(pem: bytes) -> tuple[Any, str | None]:
    # Never the exception's text: it is about key bytes.
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    if b"PRIVATE KEY-----" not in pem:
        return None, "is not a PEM private key (expected -----BEGIN ... PRIVATE KEY-----)"
    if b"ENCRYPTED" in pem:
        return None, (
            "is an encrypted private key; Envoy needs it unencrypted (e.g. "
            "`openssl pkey -in key.pem -out plain.pem`)"
        )
    try:
        return load_pem_private_key(pem, password=None), None
    except (ValueError, TypeError):
        return None, "is not a valid PEM private key (it does not parse)"
    except Exception:  # an unsupported algorithm: cryptography raises its own type
        return None, "is a private key of a kind this control plane cannot read"


def _matches(key: Any, cert: Any) -> bool:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    def spki(public: Any) -> bytes:
        return bytes(public.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo))

    try:
        return spki(key.public_key()) == spki(cert.public_key())
    except Exception:  # a key type without a SubjectPublicKeyInfo: cannot tell, so no
        return False


def without_last_applied(document: Mapping[str, Any]) -> dict[str, Any]:
    """``document`` without :data:`LAST_APPLIED` (a copy; the input is untouched), and
    without an ``annotations`` mapping it leaves empty."""
    out = dict(document)
    metadata = document.get("metadata")
    if not isinstance(metadata, Mapping):
        return out
    annotations = metadata.get("annotations")
    if not isinstance(annotations, Mapping) or LAST_APPLIED not in annotations:
        return out
    kept = {k: v for k, v in annotations.items() if k != LAST_APPLIED}
    out["metadata"] = {k: v for k, v in metadata.items() if k != "annotations"}
    if kept:
        out["metadata"]["annotations"] = kept
    return out


def redact(document: Mapping[str, Any]) -> dict[str, Any]:
    """A Secret document as the API shows it: certificate values as stored, every other
    value (private keys, and anything a generic Secret holds) replaced by
    :data:`REDACTED`. A value under a certificate key that holds a private key too (a PEM
    bundle) is redacted as well, and so is kubectl's copy of the whole Secret
    (:data:`LAST_APPLIED`, should a stored document still have it)."""
    out = without_last_applied(document)
    for field, encoded in (("data", True), ("stringData", False)):
        mapping = document.get(field)
        if not isinstance(mapping, Mapping):
            continue
        out[field] = {k: v if _public(k, v, encoded) else REDACTED for k, v in mapping.items()}
    return out


def _public(key: str, value: Any, encoded: bool) -> bool:
    if key not in PUBLIC_KEYS or not isinstance(value, str):
        return False
    raw = _b64(value) if encoded else value.encode()
    return raw is not None and b"PRIVATE KEY" not in raw
