"""JWT claims as a VirtualService names them: the match key ``@request.auth.claims.NAME``
(nested: ``@request.auth.claims.a.b`` or ``@request.auth.claims[a][b]``), Istio's syntax
for routing on a claim of the token a gateway verified."""

from __future__ import annotations

CLAIM_HEADER = "@request.auth.claims"
"""The pseudo header that names a claim."""
AUTHZ_CLAIMS = "request.auth.claims"
"""AuthorizationPolicy's ``when`` key prefix for a claim: ``request.auth.claims[A][B]``."""


def bracketed(rest: str) -> list[str] | None:
    """``[a][b]`` → ``["a", "b"]``: the claim names of Istio's bracketed form (empty names
    included, for validation to refuse); None when ``rest`` is not bracketed."""
    if rest.startswith("[") and rest.endswith("]") and len(rest) >= 2:
        return rest[1:-1].split("][")
    return None


def authz_claim_path(key: str) -> list[str] | None:
    """The claim names of an AuthorizationPolicy ``when`` key ``request.auth.claims[A][B]``;
    None for any other key."""
    if not key.startswith(AUTHZ_CLAIMS):
        return None
    return bracketed(key[len(AUTHZ_CLAIMS) :])


def claim_path(key: str) -> list[str] | None:
    """The claim names ``key`` spells (outermost first), as Istio reads them; None when
    ``key`` is an ordinary header name."""
    if not key.lower().startswith(CLAIM_HEADER):
        return None
    rest = key[len(CLAIM_HEADER) :]
    if rest.startswith(".") and len(rest) > 1:
        return rest[1:].split(".")
    names = bracketed(rest)
    return None if names == [""] else names  # "[]" names no claim: an ordinary header
