"""RequestAuthentication → Envoy's JWT authentication filter, as Istio generates it.

One provider per ``jwtRules`` entry of every RequestAuthentication that selects the proxy
(sorted by issuer, named ``origins-N``), its keys inline: the rule's ``jwks``, or the set the
control plane fetched for its ``jwksUri`` (:attr:`WorkloadSecurity.jwks`). A key set not
fetched yet (or never: the issuer is unreachable) is replaced by one no token verifies
against, as Istio does, so a token is refused rather than let through unchecked.

Istio's requirement: a request with an invalid token gets 401; a request without one passes
(each provider OR ``allow_missing``); an AuthorizationPolicy decides whether it must have
one. The verified payload goes to dynamic metadata ``envoy.filters.http.jwt_authn`` under
``payload``: the RBAC filter reads ``request.auth.principal`` (``iss/sub``) and claims there,
and a gateway's routes match ``@request.auth.claims.NAME`` there (:func:`claim_matcher`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2

from tsunagi.api import JWTRule, RequestAuthenticationSpec, Resource, ResourceOf
from tsunagi.mesh import ClientScope, Node, World
from tsunagi.mesh import request_authentication as ra
from tsunagi.mesh.security import WorkloadSecurity
from tsunagi.xds.translate.same import Same, same_all

FILTER_NAME = "envoy.filters.http.jwt_authn"
"""The filter's name, and the dynamic metadata namespace it writes."""
PAYLOAD_KEY = "payload"
"""Where in :data:`FILTER_NAME`'s metadata the verified payload is (the contract with
:mod:`.authz`)."""
JWT_AUTHN_TYPE = "type.googleapis.com/" + config_pb2.JwtAuthentication.DESCRIPTOR.full_name
_SPACE_DELIMITED = ("permission", "scope")
"""Claims Istio always splits on spaces into lists (OAuth scopes)."""


def http_filters(security: WorkloadSecurity, node: Node, port: int) -> tuple[dict[str, Any], ...]:
    """The ``jwt_authn`` filter for inbound ``port``; none without RequestAuthentication."""
    rules = _rules(security.authentication)
    if not rules:
        return ()
    return (jwt_filter(rules, dict(security.jwks)),)


def gateway_filters(world: World, scope: ClientScope) -> tuple[dict[str, Any], ...]:
    """The ``jwt_authn`` filter of a gateway's HTTP connection managers, from the
    RequestAuthentications that select the gateway's labels in its namespace (or the root
    namespace); none without. It clears the route cache once it has verified a token, so
    routes can match its claims (Istio does the same on gateways)."""
    applied = ra.for_workload(world, scope.namespace, dict(scope.labels))
    rules = _rules(applied)
    if not rules:
        return ()
    return (jwt_filter(rules, dict(ra.jwks_of(world, applied)), clear_route_cache=True),)


def _rules(resources: Iterable[Resource | ResourceOf[RequestAuthenticationSpec]]) -> list[JWTRule]:
    out: list[JWTRule] = []
    for r in resources:
        if isinstance(r.spec, RequestAuthenticationSpec):
            out += r.spec.jwt_rules
    # Istio sorts by issuer (stable), so the config is deterministic.
    return sorted(out, key=lambda rule: rule.issuer)


def jwt_filter(
    rules: Sequence[JWTRule], jwks: Mapping[str, str], clear_route_cache: bool = False
) -> dict[str, Any]:
    """The filter for ``rules`` (in order), with the fetched key sets ``jwks`` (by
    :func:`tsunagi.mesh.request_authentication.jwks_key`)."""
    providers = {
        f"origins-{i}": provider(rule, jwks, clear_route_cache) for i, rule in enumerate(rules)
    }
    return {
        "name": FILTER_NAME,
        "typed_config": {
            "@type": JWT_AUTHN_TYPE,
            "providers": providers,
            "rules": [{"match": {"prefix": "/"}, "requires": requirement(list(providers))}],
            "bypass_cors_preflight": True,
        },
    }


def requirement(names: Sequence[str]) -> dict[str, Any]:
    """Istio's requirement over providers ``names``: a token, if any, must be valid for its
    issuer. Each provider OR allow_missing, all ANDed (a token no provider accepts fails);
    with several providers, that AND is ORed with each one alone, since providers reading
    the same header would otherwise fail each other's tokens."""
    each = [
        {"requires_any": {"requirements": [{"provider_name": n}, {"allow_missing": {}}]}}
        for n in names
    ]
    if len(each) == 1:
        return each[0]
    alone = [{"provider_name": n} for n in names]
    return {"requires_any": {"requirements": [*alone, {"requires_all": {"requirements": each}}]}}


def provider(rule: JWTRule, jwks: Mapping[str, str], clear_route_cache: bool) -> dict[str, Any]:
    """One Envoy JwtProvider for ``rule``. Where neither ``fromHeaders`` nor ``fromParams``
    is set, Envoy's defaults are Istio's: ``Authorization: Bearer`` and ``access_token``."""
    out: dict[str, Any] = {}
    if rule.issuer:
        out["issuer"] = rule.issuer
    if rule.audiences:
        out["audiences"] = list(rule.audiences)
    out["local_jwks"] = {"inline_string": key_set(rule, jwks)}
    if rule.forward_original_token:
        out["forward"] = True
    if rule.from_headers:
        out["from_headers"] = [
            {"name": h.name, **({"value_prefix": h.prefix} if h.prefix else {})}
            for h in rule.from_headers
        ]
    if rule.from_params:
        out["from_params"] = list(rule.from_params)
    if rule.from_cookies:
        out["from_cookies"] = list(rule.from_cookies)
    if rule.output_payload_to_header:
        out["forward_payload_header"] = rule.output_payload_to_header
    out["payload_in_metadata"] = PAYLOAD_KEY
    spaced = sorted({*rule.space_delimited_claims, *_SPACE_DELIMITED})
    out["normalize_payload_in_metadata"] = {"space_delimited_claims": spaced}
    if rule.output_claim_to_headers:
        out["claim_to_headers"] = [
            {"header_name": c.header, "claim_name": c.claim} for c in rule.output_claim_to_headers
        ]
    if clear_route_cache:
        out["clear_route_cache"] = True
    return out


def key_set(rule: JWTRule, jwks: Mapping[str, str]) -> str:
    """The JWK set ``rule``'s tokens are verified with: inline, fetched, or one that fails
    every token while the fetch has not succeeded."""
    if rule.jwks:
        return rule.jwks
    key = ra.jwks_key(rule) or ""
    fetched = jwks.get(key)
    return fetched if fetched is not None else unfetched_key_set(key)


def unfetched_key_set(key: str) -> str:
    """A JWK set no token verifies against, standing in for the one at ``key`` until the
    control plane has fetched it: Envoy refuses every token with 401 (its key id says why).

    Istio inlines a made-up key for this; Envoy now refuses a modulus that is not a real
    RSA one, so this is a real public key whose private key was thrown away at once."""
    kid = f"tsunagi-unfetched:{key}"
    return json.dumps({"keys": [{"kty": "RSA", "kid": kid, "e": "AQAB", "n": _NOBODYS_MODULUS}]})


_NOBODYS_MODULUS = (
    "v0wugf1DQw-lbPiczfnwnIRL-WMTZb1x_C3Ndk90uCzL5tm5j3CiAW3jaZcNV9B0CYzS6Y0VKCK6Tc1vnD8g7CKu"
    "bHvj9N7cK8D7xYAkva45YlLmIWydkk9ZT9pcdCHcbfQrqYdAwfEBA5BRpXBtyHoEbMPZqgtmsu4T3_PzxveDkOCk"
    "lkhaLF-zU6dw3bwWdX4cP1WZy5NKGDC_4ACO7MSxa8ZZbJjRif4WL0HlZWhLpPBCEGNlRqzktgcczNYjfkymLJzE"
    "hCwWeQ7DdxjCoAV1XTp7QykKpbmgpXJZuZ42I1_BeCgCWgg4NwrQ2L8ukv7sLqP1GwS6zCA_YfT3xw"
)
"""A 2048-bit RSA modulus made for :func:`unfetched_key_set`; its private key never left
the process that made it."""


def claim_matcher(claims: Sequence[str], string_match: dict[str, Any]) -> dict[str, Any]:
    """An Envoy metadata matcher for a claim at path ``claims`` of the verified payload:
    matches a string claim equal to ``string_match``, or a list claim holding one (Istio's
    form, so ``groups: [dev, ops]`` matches ``exact: dev``)."""
    value = {"string_match": string_match}
    either = {"or_match": {"value_matchers": [{"list_match": {"one_of": value}}, value]}}
    return payload_matcher(claims, either)


def claim_present(claims: Sequence[str]) -> dict[str, Any]:
    """An Envoy metadata matcher for a claim at path ``claims`` that is present at all."""
    return payload_matcher(claims, {"present_match": True})


def payload_matcher(claims: Sequence[str], value: dict[str, Any]) -> dict[str, Any]:
    """An Envoy metadata matcher for the claim at path ``claims`` of the verified payload
    (where :func:`provider` puts it), whose value Envoy's ``ValueMatcher`` ``value``
    matches."""
    return {
        "filter": FILTER_NAME,
        "path": [{"key": k} for k in (PAYLOAD_KEY, *claims)],
        "value": value,
    }


def gateway_key(
    world: World, scope: ClientScope
) -> tuple[tuple[Same, ...], tuple[tuple[str, str], ...]]:
    """What :func:`gateway_filters` depends on, for a memo of the gateway's listeners: the
    selected RequestAuthentications by identity (see :mod:`.same`) and the key sets fetched
    for them (each document's hash is computed once per fetch, by Python's str)."""
    applied = ra.for_workload(world, scope.namespace, dict(scope.labels))
    return same_all(applied), ra.jwks_of(world, applied)
