"""Typed models for security.istio.io kinds (cross-field rules: checks_security)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from pydantic import Field

from .common import IstioModel, LabelSelector, PolicyTargetReference, Seconds, StrictBool

MTLSMode = Literal["UNSET", "DISABLE", "PERMISSIVE", "STRICT"]


class PeerMTLS(IstioModel):
    """Mutual TLS mode for inbound connections."""

    mode: MTLSMode = "UNSET"


class PeerAuthenticationSpec(IstioModel):
    """``PeerAuthentication.spec``; ``port_level_mtls`` is keyed by port number."""

    selector: LabelSelector | None = None
    mtls: PeerMTLS | None = None
    port_level_mtls: Mapping[int, PeerMTLS] = Field(default_factory=dict)


class Source(IstioModel):
    """Request source attributes (ANDed across fields, ORed within a list)."""

    principals: tuple[str, ...] = ()
    not_principals: tuple[str, ...] = ()
    request_principals: tuple[str, ...] = ()
    not_request_principals: tuple[str, ...] = ()
    namespaces: tuple[str, ...] = ()
    not_namespaces: tuple[str, ...] = ()
    service_accounts: tuple[str, ...] = ()
    not_service_accounts: tuple[str, ...] = ()
    ip_blocks: tuple[str, ...] = ()
    not_ip_blocks: tuple[str, ...] = ()
    remote_ip_blocks: tuple[str, ...] = ()
    not_remote_ip_blocks: tuple[str, ...] = ()


class Operation(IstioModel):
    """Request operation attributes (ANDed across fields, ORed within a list)."""

    hosts: tuple[str, ...] = ()
    not_hosts: tuple[str, ...] = ()
    ports: tuple[str, ...] = ()
    not_ports: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()
    not_methods: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    not_paths: tuple[str, ...] = ()


class RuleFrom(IstioModel):
    """One ``from`` entry."""

    source: Source | None = None


class RuleTo(IstioModel):
    """One ``to`` entry."""

    operation: Operation | None = None


class Condition(IstioModel):
    """One ``when`` condition on a request attribute."""

    key: str
    values: tuple[str, ...] = ()
    not_values: tuple[str, ...] = ()


class Rule(IstioModel):
    """A rule matches when all of from/to/when match (each list is ORed)."""

    from_: tuple[RuleFrom, ...] = Field(default=(), alias="from")
    to: tuple[RuleTo, ...] = ()
    when: tuple[Condition, ...] = ()


class ExtensionProvider(IstioModel):
    """The external authorizer used by ``action: CUSTOM``."""

    name: str


class AuthorizationPolicySpec(IstioModel):
    """``AuthorizationPolicy.spec``."""

    selector: LabelSelector | None = None
    target_ref: PolicyTargetReference | None = None
    target_refs: tuple[PolicyTargetReference, ...] = ()
    action: Literal["ALLOW", "DENY", "AUDIT", "CUSTOM"] = "ALLOW"
    provider: ExtensionProvider | None = None
    rules: tuple[Rule, ...] = ()


class JWTHeader(IstioModel):
    """Where a JWT is read from a header: ``name``, and a ``prefix`` before the token."""

    name: str = ""
    prefix: str = ""


class ClaimToHeader(IstioModel):
    """A verified claim copied into a request header (``outputClaimToHeaders``)."""

    header: str = ""
    claim: str = ""


class JWTRule(IstioModel):
    """One JWT issuer a RequestAuthentication accepts (Istio's ``JWTRule``)."""

    issuer: str = ""
    audiences: tuple[str, ...] = ()
    jwks_uri: str = ""
    jwks: str = ""
    from_headers: tuple[JWTHeader, ...] = ()
    from_params: tuple[str, ...] = ()
    from_cookies: tuple[str, ...] = ()
    output_payload_to_header: str = ""
    forward_original_token: StrictBool = False
    output_claim_to_headers: tuple[ClaimToHeader, ...] = ()
    space_delimited_claims: tuple[str, ...] = ()
    timeout: Seconds | None = None


class RequestAuthenticationSpec(IstioModel):
    """``RequestAuthentication.spec``: which JWTs the selected workloads accept."""

    selector: LabelSelector | None = None
    target_ref: PolicyTargetReference | None = None
    target_refs: tuple[PolicyTargetReference, ...] = ()
    jwt_rules: tuple[JWTRule, ...] = ()
