"""One AuthorizationPolicy rule → one Envoy RBAC policy, with Istio's meaning of every field.

A rule matches when one of its ``from`` sources, one of its ``to`` operations and all of its
``when`` conditions match; within a source or operation every field set must match (one of
its values, none of its ``not`` values). In Envoy's terms a rule is a policy whose
``permissions`` (what is asked: ``to`` and the ``when`` keys about the destination) and
``principals`` (who asks: ``from`` and the ``when`` keys about the caller) must both match.

Istio's value forms (pilot's authz model, taken as facts): ``*`` is any non-empty value,
``prefix*`` and ``*suffix`` match by prefix and suffix, anything else exactly. Principals
are matched against the peer certificate's URI SAN with ``spiffe://`` put in front;
``namespaces`` as the SAN regex ``.*/ns/NS/.*``; ``requestPrincipals`` as ``ISS/SUB`` of the
verified JWT (split at the last ``/``, issuers being URLs), read from the payload the JWT
filter leaves in dynamic metadata (:mod:`.jwt_authn`'s ``FILTER_NAME``, ``PAYLOAD_KEY``).
Hosts ignore case; ``{*}``/``{**}`` in paths are URI templates.

On a TCP port the HTTP-only attributes (hosts, methods, paths, request principals,
``request.*`` conditions) cannot be judged. As Istio does: an ALLOW rule using one is left
out (it allows less), while a DENY or AUDIT rule drops just those attributes (it denies or
logs more). ``ports`` and ``destination.port`` name the workload's service port; a listener
serves one, so they are judged here, while translating, and never reach Envoy.

:func:`rule_policies` names the rules of whole policies and :func:`rbac_filter` wraps them
in Envoy's filter, for the ALLOW/DENY/AUDIT filters (:mod:`.authz`) and CUSTOM's shadow
or fail-closed ones (:mod:`.ext_authz`) alike.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as network_rbac_pb2
from envoy.extensions.path.match.uri_template.v3 import uri_template_match_pb2

from tsunagi.api import AuthorizationPolicySpec, Resource
from tsunagi.api.jwt_claims import authz_claim_path
from tsunagi.api.security import Condition, Operation, Rule, Source
from tsunagi.spiffe import SCHEME
from tsunagi.xds.translate.jwt_authn import claim_matcher, payload_matcher

HTTP_RBAC_TYPE = "type.googleapis.com/" + http_rbac_pb2.RBAC.DESCRIPTOR.full_name
NETWORK_RBAC_TYPE = "type.googleapis.com/" + network_rbac_pb2.RBAC.DESCRIPTOR.full_name
HTTP_RBAC = "envoy.filters.http.rbac"
NETWORK_RBAC = "envoy.filters.network.rbac"
TCP_STAT_PREFIX = "tcp."
"""Istio's stat prefix of the network RBAC filter (``tcp.rbac.allowed``, ...)."""

URI_TEMPLATE_TYPE = (
    "type.googleapis.com/" + uri_template_match_pb2.UriTemplateMatchConfig.DESCRIPTOR.full_name
)
MATCH_ONE, MATCH_ANY = "{*}", "{**}"
"""Istio's path template segments: one path segment, any number of them."""

ANY: dict[str, Any] = {"any": True}
NEVER_PERMISSION: dict[str, Any] = {"not_rule": ANY}
NEVER_PRINCIPAL: dict[str, Any] = {"not_id": ANY}
MATCH_NEVER = {"permissions": [NEVER_PERMISSION], "principals": [NEVER_PRINCIPAL]}
"""A policy no request matches: what a policy without rules becomes (Istio's)."""

Matcher = dict[str, Any]


class HttpOnly(Exception):
    """An attribute only an HTTP request has, asked of a TCP connection."""


@dataclass(frozen=True)
class Target:
    """Where rules are enforced: one inbound port of one workload."""

    action: str
    """``ALLOW``, ``DENY`` or ``AUDIT``: what a rule left partly unjudged should lean to."""
    port: int
    """The service port the listener serves: ``ports`` are judged against it."""
    tcp: bool = False
    """A TCP proxy, not an HTTP connection manager."""


@dataclass(frozen=True)
class _Kind:
    """Envoy's names for combining permissions, or principals."""

    and_: str
    or_: str
    not_: str
    items: str


_PERMISSION = _Kind("and_rules", "or_rules", "not_rule", "rules")
_PRINCIPAL = _Kind("and_ids", "or_ids", "not_id", "ids")

Make = Callable[[str], Matcher]
Attribute = tuple[Sequence[str], Sequence[str], Make]
"""``(values, notValues, value → Envoy matcher)`` of one attribute."""


def string_matcher(value: str, prefix: str = "") -> Matcher:
    """Istio's string forms as an Envoy ``StringMatcher``, ``prefix`` put in front."""
    if value == "*":
        return {"safe_regex": {"regex": ".+"}}
    if value.startswith("*"):
        if not prefix:
            return {"suffix": value[1:]}
        # Escaped, so a dot in the value is a dot (Istio's own regex leaves it a wildcard).
        return {"safe_regex": {"regex": re.escape(prefix) + ".*" + re.escape(value[1:])}}
    if value.endswith("*"):
        return {"prefix": prefix + value[:-1]}
    return {"exact": prefix + value}


def _header(name: str, value: str, ignore_case: bool = False) -> Matcher:
    if value == "*":
        return {"name": name, "present_match": True}
    sm = string_matcher(value)
    if ignore_case:
        sm["ignore_case"] = True
    return {"name": name, "string_match": sm}


def _cidr(value: str) -> Matcher:
    address, _, length = value.partition("/")
    bits = ipaddress.ip_address(address).max_prefixlen
    return {"address_prefix": address, "prefix_len": int(length) if length else bits}


def _metadata(filter_name: str, path: Sequence[str], value: Matcher) -> Matcher:
    return {"filter": filter_name, "path": [{"key": k} for k in path], "value": value}


def _claim(path: Sequence[str], value: str) -> Matcher:
    """A JWT claim that is ``value``, or a list holding it (``aud``, ``groups``...)."""
    return {"metadata": claim_matcher(path, string_matcher(value))}


def _bracketed(key: str) -> str:
    return key[key.index("[") + 1 : -1]


# ---- principals: who asks ----


def _peer(value: str) -> Matcher:
    return {"authenticated": {"principal_name": string_matcher(value, SCHEME)}}


def _peer_regex(regex: str) -> Matcher:
    return {"authenticated": {"principal_name": {"safe_regex": {"regex": regex}}}}


def _namespace(value: str) -> Matcher:
    ns = ".*".join(re.escape(part) for part in value.split("*"))
    return _peer_regex(f".*/ns/{ns}/.*")


def _service_account(default_namespace: str) -> Make:
    def make(value: str) -> Matcher:
        ns, slash, sa = value.partition("/")
        if not slash:
            ns, sa = default_namespace, value
        return _peer_regex(f"spiffe://.+/ns/{re.escape(ns)}/(.+/|)sa/{re.escape(sa)}(/.+)?")

    return make


def _http_only(make: Make, tcp: bool) -> Make:
    def guarded(value: str) -> Matcher:
        if tcp:
            raise HttpOnly(value)
        return make(value)

    return guarded


def _request_principal(value: str) -> Matcher:
    """``ISS/SUB`` of the verified JWT, both parts matched (Istio's forms per part)."""
    iss, slash, sub = value.rpartition("/")
    if not slash:
        iss, sub = value, ""
    anything: Matcher = {"safe_regex": {"regex": ".+"}}
    if value == "*":
        m_iss, m_sub = anything, anything
    elif value.startswith("*"):
        if slash:
            m_iss = anything if iss == "*" else {"suffix": iss[1:]}
            m_sub = {"exact": sub}
        else:
            m_iss, m_sub = anything, {"suffix": value[1:]}
    elif value.endswith("*"):
        if slash:
            m_iss = {"exact": iss}
            m_sub = anything if sub == "*" else {"prefix": sub[:-1]}
        else:
            m_iss, m_sub = {"prefix": value[:-1]}, anything
    else:
        m_iss, m_sub = {"exact": iss}, {"exact": sub}
    return {
        "and_ids": {
            "ids": [
                {"metadata": payload_matcher(["iss"], {"string_match": m_iss})},
                {"metadata": payload_matcher(["sub"], {"string_match": m_sub})},
            ]
        }
    }


def _source(src: Source, namespace: str, tcp: bool) -> list[Attribute]:
    return [
        (src.principals, src.not_principals, _peer),
        (
            src.request_principals,
            src.not_request_principals,
            _http_only(_request_principal, tcp),
        ),
        (src.namespaces, src.not_namespaces, _namespace),
        (src.service_accounts, src.not_service_accounts, _service_account(namespace)),
        (src.remote_ip_blocks, src.not_remote_ip_blocks, lambda v: {"remote_ip": _cidr(v)}),
        (src.ip_blocks, src.not_ip_blocks, lambda v: {"direct_remote_ip": _cidr(v)}),
    ]


def _principal_condition(key: str, namespace: str, tcp: bool) -> Make | None:
    """How a ``when`` key about the caller is matched; None for a key about the destination."""
    simple: dict[str, Make] = {
        "source.ip": lambda v: {"direct_remote_ip": _cidr(v)},
        "remote.ip": lambda v: {"remote_ip": _cidr(v)},
        "source.namespace": _namespace,
        "source.principal": _peer,
        "source.serviceAccount": _service_account(namespace),
        "request.auth.principal": _http_only(_request_principal, tcp),
        "request.auth.audiences": _http_only(lambda v: _claim(["aud"], v), tcp),
        "request.auth.presenter": _http_only(lambda v: _claim(["azp"], v), tcp),
    }
    if key in simple:
        return simple[key]
    if key.startswith("request.headers["):
        name = _bracketed(key)
        return _http_only(lambda v: {"header": _header(name, v)}, tcp)
    path = authz_claim_path(key)
    if path is not None:
        return _http_only(lambda v: _claim(path, v), tcp)
    return None


# ---- permissions: what is asked ----


def _port(target: Target) -> Make:
    return lambda v: ANY if int(v) == target.port else NEVER_PERMISSION


def _path(value: str) -> Matcher:
    if MATCH_ONE in value or MATCH_ANY in value:
        template = value.replace(MATCH_ANY, "**").replace(MATCH_ONE, "*")
        config = {"@type": URI_TEMPLATE_TYPE, "path_template": template}
        return {"uri_template": {"name": "uri-template", "typed_config": config}}
    return {"url_path": {"path": string_matcher(value)}}


def _operation(op: Operation, target: Target) -> list[Attribute]:
    tcp = target.tcp
    return [
        (
            op.hosts,
            op.not_hosts,
            _http_only(lambda v: {"header": _header(":authority", v, ignore_case=True)}, tcp),
        ),
        (op.methods, op.not_methods, _http_only(lambda v: {"header": _header(":method", v)}, tcp)),
        (op.paths, op.not_paths, _http_only(_path, tcp)),
        (op.ports, op.not_ports, _port(target)),
    ]


def _envoy_metadata(key: str) -> Make:
    """``experimental.envoy.filters.a.b[c]``: metadata ``c`` of filter ``a.b``; a value
    ``[v]`` matches a list holding ``v``."""
    rest = key.removeprefix("experimental.")
    filter_name, name = rest[: rest.index("[")], _bracketed(rest)

    def make(value: str) -> Matcher:
        if value.startswith("[") and value.endswith("]"):
            one = {"string_match": string_matcher(value[1:-1])}
            return {"metadata": _metadata(filter_name, [name], {"list_match": {"one_of": one}})}
        return {"metadata": _metadata(filter_name, [name], {"string_match": string_matcher(value)})}

    return make


def _permission_condition(key: str, target: Target) -> Make:
    if key == "destination.ip":
        return lambda v: {"destination_ip": _cidr(v)}
    if key == "destination.port":
        return _port(target)
    if key == "connection.sni":
        return lambda v: {"requested_server_name": string_matcher(v)}
    return _envoy_metadata(key)  # experimental.envoy.filters.*: validation allows no other


# ---- assembling a rule ----


def _terms(attributes: Sequence[Attribute], kind: _Kind, target: Target) -> list[Matcher]:
    """The ANDed terms of one source or operation: each attribute set is one of its
    values, and none of its ``not`` values."""
    out: list[Matcher] = []
    for values, not_values, make in attributes:
        for items, negate in ((values, False), (not_values, True)):
            alternatives = []
            for v in items:
                try:
                    alternatives.append(make(v))
                except HttpOnly:
                    if target.action == "ALLOW":
                        raise  # the whole rule is left out: it allows less
                    # DENY/AUDIT: this value is dropped, so the rule denies (logs) more
            if alternatives:
                term = {kind.or_: {kind.items: alternatives}}
                out.append({kind.not_: term} if negate else term)
    return out


def _combined(terms: list[Matcher], kind: _Kind) -> Matcher:
    return {kind.and_: {kind.items: terms or [ANY]}}


def _when(
    conditions: Sequence[Condition], namespace: str, target: Target
) -> tuple[list[Attribute], list[Attribute]]:
    """``when`` conditions split into (about the caller, about the destination)."""
    who: list[Attribute] = []
    what: list[Attribute] = []
    for c in conditions:
        make = _principal_condition(c.key, namespace, target.tcp)
        if make is not None:
            who.append((c.values, c.not_values, make))
        else:
            what.append((c.values, c.not_values, _permission_condition(c.key, target)))
    return who, what


def rbac_policy(rule: Rule, namespace: str, target: Target) -> dict[str, Any] | None:
    """The Envoy RBAC policy of ``rule`` (of a policy in ``namespace``) at ``target``;
    None when the rule is left out (an ALLOW rule that needs HTTP, on a TCP port)."""
    try:
        who, what = _when(rule.when, namespace, target)
        # No from (to): any caller (anything asked), as one entry with no fields.
        sources: list[Source | None] = [rf.source for rf in rule.from_ if rf.source] or [None]
        operations: list[Operation | None] = [rt.operation for rt in rule.to if rt.operation] or [
            None
        ]
        principals = [
            _combined(
                _terms(
                    [*(_source(s, namespace, target.tcp) if s else []), *who], _PRINCIPAL, target
                ),
                _PRINCIPAL,
            )
            for s in sources
        ]
        permissions = [
            _combined(
                _terms([*(_operation(o, target) if o else []), *what], _PERMISSION, target),
                _PERMISSION,
            )
            for o in operations
        ]
    except HttpOnly:
        return None
    return {"permissions": permissions, "principals": principals}


def rule_policies(policies: Iterable[Resource], target: Target, prefix: str = "") -> dict[str, Any]:
    """The RBAC policies of every rule of ``policies`` at ``target``, named as istiod names
    them (``{prefix}ns[NS]-policy[NAME]-rule[I]``); a policy without rules becomes one that
    matches nothing, a rule :func:`rbac_policy` leaves out becomes none."""
    out: dict[str, Any] = {}
    for p in policies:
        spec = p.spec
        assert isinstance(spec, AuthorizationPolicySpec)
        name = f"{prefix}ns[{p.namespace}]-policy[{p.name}]-rule"
        if not spec.rules:
            out[f"{name}[0]"] = MATCH_NEVER
        for i, rule in enumerate(spec.rules):
            generated = rbac_policy(rule, p.namespace, target)
            if generated is not None:
                out[f"{name}[{i}]"] = generated
    return out


def rbac_filter(config: dict[str, Any], tcp: bool) -> dict[str, Any]:
    """An Envoy RBAC filter with ``config`` (its rules and shadow rules): the network one,
    with Istio's ``tcp.`` stat prefix, when ``tcp``; else the HTTP one."""
    if tcp:
        typed = {"@type": NETWORK_RBAC_TYPE, "stat_prefix": TCP_STAT_PREFIX, **config}
        return {"name": NETWORK_RBAC, "typed_config": typed}
    return {"name": HTTP_RBAC, "typed_config": {"@type": HTTP_RBAC_TYPE, **config}}
