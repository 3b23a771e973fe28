"""Istio's validation rules for RequestAuthentication (``security.istio.io``), plus what
Envoy's JWT filter would refuse later (a JWK set it cannot read, a header name it cannot
write), so that such a rule is refused at ``apply`` rather than failing every token."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

from .checks_common import Issue, Path, check_policy_target
from .names import check_header_name
from .security import JWTRule, RequestAuthenticationSpec

_MIN_RSA_BITS = 512
"""Envoy's JWT library refuses shorter moduli (found by trying)."""
_MIN_TIMEOUT = 0.001
"""Istio refuses durations under 1 ms."""

# The members each key type needs (RFC 7518 section 6, RFC 8037), as Envoy's JWT library
# reads them; the curves it verifies with.
_KEY_MEMBERS = {"RSA": ("n", "e"), "EC": ("crv", "x", "y"), "oct": ("k",), "OKP": ("crv", "x")}
_CURVES = {"EC": ("P-256", "P-384", "P-521"), "OKP": ("Ed25519",)}
_NOT_ENCODED = frozenset({"kty", "crv", "kid", "alg", "use"})
_BASE64URL = re.compile(r"^[A-Za-z0-9_-]+={0,2}$")


def check_request_authentication(spec: RequestAuthenticationSpec) -> Iterator[Issue]:
    """Istio's RequestAuthentication rules."""
    yield from check_policy_target(spec.selector, spec.target_ref, spec.target_refs)
    for i, rule in enumerate(spec.jwt_rules):
        yield from check_jwt_rule(rule, ("jwtRules", i))


def check_jwt_rule(rule: JWTRule, path: Path) -> Iterator[Issue]:
    """One ``jwtRules[]`` entry."""
    if not rule.issuer and not rule.jwks_uri:
        yield Issue((*path, "issuer"), "issuer or jwksUri must be set (the token's `iss`)")
    for j, audience in enumerate(rule.audiences):
        if not audience:
            yield Issue((*path, "audiences", j), "audience must not be empty")
    if rule.jwks and rule.jwks_uri:
        yield Issue(
            (*path, "jwks"),
            "set only one of jwks (the keys inline) and jwksUri (where the control plane "
            "fetches them)",
        )
    if rule.jwks_uri:
        err = jwks_uri_error(rule.jwks_uri)
        if err:
            yield Issue((*path, "jwksUri"), err)
    if rule.jwks:
        err = jwks_error(rule.jwks)
        if err:
            yield Issue((*path, "jwks"), f"not a JWK set Envoy can verify with: {err}")
    for j, header in enumerate(rule.from_headers):
        err = check_header_name(header.name)
        if err:
            yield Issue((*path, "fromHeaders", j, "name"), err)
    for alias, names in (("fromParams", rule.from_params), ("fromCookies", rule.from_cookies)):
        for j, name in enumerate(names):
            if not name:
                yield Issue((*path, alias, j), "name must not be empty")
    if rule.output_payload_to_header:
        err = check_header_name(rule.output_payload_to_header)
        if err:
            yield Issue((*path, "outputPayloadToHeader"), err)
    for j, ch in enumerate(rule.output_claim_to_headers):
        at: Path = (*path, "outputClaimToHeaders", j)
        if not ch.claim:
            yield Issue((*at, "claim"), "claim must not be empty")
        err = check_header_name(ch.header)
        if err:
            yield Issue((*at, "header"), err)
    for j, claim in enumerate(rule.space_delimited_claims):
        if not claim:
            yield Issue((*path, "spaceDelimitedClaims", j), "claim must not be empty")
    if rule.timeout is not None and rule.timeout < _MIN_TIMEOUT:
        yield Issue((*path, "timeout"), "timeout must be at least 1ms")


def jwks_uri_error(uri: str) -> str | None:
    """Why ``uri`` is not a URL the control plane can fetch a JWK set from (Istio's rule:
    http or https, with a host and a valid port), or None."""
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError as e:
        return f"{uri!r} is not a valid URL: {e}"
    if parts.scheme.lower() not in ("http", "https"):
        return f"{uri!r}: URI scheme {parts.scheme!r} is not supported; use http or https"
    if not parts.hostname:
        return f"{uri!r} has no host"
    if port == 0:
        return f"{uri!r}: port must be between 1 and 65535"
    return None


def jwks_error(text: str, *, every_key: bool = True) -> str | None:
    """Why ``text`` is not a JWK set (``{"keys": [...]}``) of public keys Envoy reads, or
    None. ``every_key``: each key must be one (Istio's rule for an inline set); otherwise one
    is enough (Envoy skips the others: a fetched set may hold kinds it does not use)."""
    try:
        doc = json.loads(text)
    except ValueError as e:
        return f"invalid JSON ({e})"
    keys = doc.get("keys") if isinstance(doc, dict) else None
    if not isinstance(keys, list) or not keys:
        return 'expected a JSON object with a non-empty "keys" list'
    errors = [(i, err) for i, key in enumerate(keys) if (err := _key_error(key))]
    if errors and (every_key or len(errors) == len(keys)):
        i, err = errors[0]
        return f"keys[{i}]: {err}"
    return None


def _key_error(key: Any) -> str | None:
    if not isinstance(key, dict):
        return "must be a JSON object"
    kty = key.get("kty")
    if kty not in _KEY_MEMBERS:
        return f'"kty" must be one of {", ".join(_KEY_MEMBERS)}, got {kty!r}'
    for member in _KEY_MEMBERS[kty]:
        value = key.get(member)
        if not isinstance(value, str) or not value:
            return f'a {kty} key needs "{member}" (a non-empty string)'
        if member not in _NOT_ENCODED and not _is_base64url(value):
            return f'"{member}" is not base64url'
    curves = _CURVES.get(kty)
    if curves and key["crv"] not in curves:
        return f'"crv" must be one of {", ".join(curves)}, got {key["crv"]!r}'
    return _public_key_error(key)


def _b64int(value: str) -> int:
    return int.from_bytes(_b64(value), "big")


def _b64(value: str) -> bytes:
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


def _public_key_error(key: dict[str, Any]) -> str | None:
    """Whether the numbers make a public key: Envoy refuses a config whose inline set has
    one that does not (a modulus that is no RSA modulus, a point off its curve)."""
    # Imported here: only a rule with keys needs it, and the agent never loads it.
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    curves = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1(), "P-521": ec.SECP521R1()}
    try:
        if key["kty"] == "RSA":
            n = _b64int(key["n"])
            if n.bit_length() < _MIN_RSA_BITS:
                return f"an RSA modulus of {n.bit_length()} bits is too short for Envoy"
            rsa.RSAPublicNumbers(_b64int(key["e"]), n).public_key()
        elif key["kty"] == "EC":
            x, y = _b64int(key["x"]), _b64int(key["y"])
            ec.EllipticCurvePublicNumbers(x, y, curves[key["crv"]]).public_key()
        elif key["kty"] == "OKP":
            ed25519.Ed25519PublicKey.from_public_bytes(_b64(key["x"]))
    except ValueError as e:
        return f"not a valid {key['kty']} public key ({e})"
    return None


def _is_base64url(value: str) -> bool:
    # A length of 1 modulo 4 is never a whole number of bytes.
    return bool(_BASE64URL.match(value)) and len(value.rstrip("=")) % 4 != 1
