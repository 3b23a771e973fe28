"""AuthorizationPolicy ``action: CUSTOM`` → Envoy's ext_authz filters, the way istiod builds
them, in front of the DENY and ALLOW RBAC filters (:mod:`.authz`): CUSTOM runs first.

Only requests a CUSTOM rule matches go to the authorizer. An RBAC filter in shadow mode
holds the rules (``istio-ext-authz-ns[NS]-policy[NAME]-rule[I]``, action DENY, never
enforced); a match leaves its name in the dynamic metadata key
``istio_ext_authz_shadow_effective_policy_id`` (the shadow stat prefix
``istio_ext_authz_`` + Envoy's key), and the ext_authz filter's ``filter_enabled_metadata``
runs the check only when that value starts with ``istio-ext-authz``.

An HTTP provider (``envoyExtAuthzHttp``) checks HTTP requests only: on a TCP port the policy
is left out, as istiod leaves it. A gRPC provider also checks TCP connections (the network
ext_authz filter). When the workload's CUSTOM policies cannot be sent anywhere (several
providers, an undefined one, an unknown service: :mod:`tsunagi.mesh.ext_authz`), their
rules deny instead (``...-deny-due-to-bad-CUSTOM-action``), as istiod fails closed.
A CUSTOM policy annotated ``istio.io/dry-run`` is left out: tsunagi does not call the
authorizer for it (istiod still would, a limitation it documents).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2 as http_ext_authz_pb2
from envoy.extensions.filters.network.ext_authz.v3 import ext_authz_pb2 as net_ext_authz_pb2

from tsunagi.api import AuthorizationPolicySpec, Resource
from tsunagi.api.durations import format_duration
from tsunagi.api.mesh_config import EnvoyExtAuthzHttp, ExtensionProvider, RequestBody
from tsunagi.mesh.authorization import dry_run
from tsunagi.mesh.ext_authz import CustomAuthz
from tsunagi.xds.translate.authz_rules import (
    HTTP_RBAC,
    HTTP_RBAC_TYPE,
    MATCH_NEVER,
    NETWORK_RBAC,
    NETWORK_RBAC_TYPE,
    TCP_STAT_PREFIX,
    Target,
    rbac_policy,
    string_matcher,
)
from tsunagi.xds.translate.names import outbound_cluster

HTTP_EXT_AUTHZ = "envoy.filters.http.ext_authz"
NETWORK_EXT_AUTHZ = "envoy.filters.network.ext_authz"
HTTP_EXT_AUTHZ_TYPE = "type.googleapis.com/" + http_ext_authz_pb2.ExtAuthz.DESCRIPTOR.full_name
NETWORK_EXT_AUTHZ_TYPE = "type.googleapis.com/" + net_ext_authz_pb2.ExtAuthz.DESCRIPTOR.full_name
MATCH_PREFIX = "istio-ext-authz"
"""What the names of CUSTOM rules start with, and what the ext_authz filter looks for."""
SHADOW_PREFIX = "istio_ext_authz_"
"""The shadow rules' stat prefix; Envoy puts it before its dynamic metadata keys too."""
EFFECTIVE_POLICY_KEY = SHADOW_PREFIX + "shadow_effective_policy_id"
BAD_SUFFIX = "-deny-due-to-bad-CUSTOM-action"
DEFAULT_TIMEOUT = 600.0
"""istiod's default ``timeout`` for both provider kinds (seconds)."""


def _rules(policies: Sequence[Resource], port: int, tcp: bool) -> dict[str, Any]:
    """The CUSTOM rules as RBAC policies; a policy without rules matches nothing."""
    target = Target("DENY", port, tcp)  # istiod judges CUSTOM rules as DENY ones
    out: dict[str, Any] = {}
    for p in policies:
        spec = p.spec
        assert isinstance(spec, AuthorizationPolicySpec)
        prefix = f"{MATCH_PREFIX}-ns[{p.namespace}]-policy[{p.name}]-rule"
        if not spec.rules:
            out[f"{prefix}[0]"] = MATCH_NEVER
        for i, rule in enumerate(spec.rules):
            generated = rbac_policy(rule, p.namespace, target)
            if generated is not None:
                out[f"{prefix}[{i}]"] = generated
    return out


def _metadata_matcher(rbac_filter: str) -> dict[str, Any]:
    return {
        "filter": rbac_filter,
        "path": [{"key": EFFECTIVE_POLICY_KEY}],
        "value": {"string_match": {"prefix": MATCH_PREFIX}},
    }


def _headers(values: Sequence[str]) -> dict[str, Any]:
    """Istio's header patterns (``*suffix``, ``prefix*`` or exact; a lone ``*`` is refused
    when the mesh config is read), case ignored as header names are."""
    return {"patterns": [{**string_matcher(v), "ignore_case": True} for v in values]}


def _body(body: RequestBody | None) -> dict[str, Any]:
    if body is None:
        return {}
    return {
        "with_request_body": {
            "max_request_bytes": body.max_request_bytes,
            "allow_partial_message": body.allow_partial_message,
            "pack_as_bytes": body.pack_as_bytes,
        }
    }


def _timeout(value: float | None) -> str:
    return format_duration(DEFAULT_TIMEOUT if value is None else value)


def _grpc_service(provider: ExtensionProvider, host: str) -> dict[str, Any]:
    config = provider.config
    # The authority is the host (istiod's): the cluster name's '|' is not valid in one.
    return {
        "envoy_grpc": {"cluster_name": outbound_cluster(host, config.port), "authority": host},
        "timeout": _timeout(config.timeout),
    }


def _http_service(config: EnvoyExtAuthzHttp, host: str) -> dict[str, Any]:
    service: dict[str, Any] = {
        "server_uri": {
            "uri": f"http://{host}",  # required by Envoy, unused: the cluster is what counts
            "cluster": outbound_cluster(host, config.port),
            "timeout": _timeout(config.timeout),
        }
    }
    if config.path_prefix:
        service["path_prefix"] = config.path_prefix
    if config.include_additional_headers_in_check:
        service["authorization_request"] = {
            "headers_to_add": [
                {"key": k, "value": v} for k, v in config.include_additional_headers_in_check
            ]
        }
    response: dict[str, Any] = {}
    for key, values in (
        ("allowed_upstream_headers", config.headers_to_upstream_on_allow),
        ("allowed_client_headers", config.headers_to_downstream_on_deny),
        ("allowed_client_headers_on_success", config.headers_to_downstream_on_allow),
    ):
        if values:
            response[key] = _headers(values)
    if response:
        service["authorization_response"] = response
    return service


def _http_ext_authz(provider: ExtensionProvider, host: str) -> dict[str, Any]:
    config = provider.config
    typed: dict[str, Any] = {"@type": HTTP_EXT_AUTHZ_TYPE, "transport_api_version": "V3"}
    if isinstance(config, EnvoyExtAuthzHttp):
        typed["http_service"] = _http_service(config, host)
        # The filter's own field, as istiod sets it (authorization_request's is deprecated).
        allowed = config.include_request_headers_in_check or config.include_headers_in_check
        if allowed:
            typed["allowed_headers"] = _headers(allowed)
    else:
        typed["grpc_service"] = _grpc_service(provider, host)
    if config.fail_open:
        typed["failure_mode_allow"] = True
    if config.status_on_error:
        typed["status_on_error"] = {"code": int(config.status_on_error)}
    typed["filter_enabled_metadata"] = _metadata_matcher(HTTP_RBAC)
    typed.update(_body(config.include_request_body_in_check))
    return {"name": HTTP_EXT_AUTHZ, "typed_config": typed}


def _rbac(name: str, base: dict[str, Any], rules: dict[str, Any], bad: bool) -> dict[str, Any]:
    """The RBAC filter in front of ext_authz: its rules in shadow mode, marking the requests
    to check; or, when the policies cannot be sent anywhere (``bad``), enforced as DENY."""
    if bad:
        denied = {n + BAD_SUFFIX: rule for n, rule in rules.items()}
        config = {**base, "rules": {"action": "DENY", "policies": denied}}
    else:
        config = {
            **base,
            "shadow_rules": {"action": "DENY", "policies": rules},
            "shadow_rules_stat_prefix": SHADOW_PREFIX,
        }
    return {"name": name, "typed_config": config}


def _enforced(custom: CustomAuthz | None) -> list[Resource]:
    return [p for p in custom.policies if not dry_run(p)] if custom is not None else []


def http_filters(custom: CustomAuthz | None, port: int) -> tuple[dict[str, Any], ...]:
    """The shadow RBAC + ext_authz HTTP filters for inbound ``port`` (or a gateway's HTTP
    server port); a denying RBAC filter when the policies cannot be sent anywhere."""
    policies = _enforced(custom)
    if custom is None or not policies:
        return ()
    rules = _rules(policies, port, tcp=False)
    rbac = _rbac(HTTP_RBAC, {"@type": HTTP_RBAC_TYPE}, rules, bad=custom.provider is None)
    if custom.provider is None:
        return (rbac,)
    return (rbac, _http_ext_authz(custom.provider, custom.host))


def network_filters(custom: CustomAuthz | None, port: int) -> tuple[dict[str, Any], ...]:
    """The shadow RBAC + ext_authz network filters for TCP ``port``: gRPC providers only (an
    HTTP provider's policies do not apply to TCP, as in Istio)."""
    policies = _enforced(custom)
    if custom is None or not policies:
        return ()
    provider = custom.provider
    if provider is not None and isinstance(provider.config, EnvoyExtAuthzHttp):
        return ()
    rules = _rules(policies, port, tcp=True)
    base = {"@type": NETWORK_RBAC_TYPE, "stat_prefix": TCP_STAT_PREFIX}
    rbac = _rbac(NETWORK_RBAC, base, rules, bad=provider is None)
    if provider is None:
        return (rbac,)
    ext: dict[str, Any] = {
        "@type": NETWORK_EXT_AUTHZ_TYPE,
        "stat_prefix": TCP_STAT_PREFIX,
        "grpc_service": _grpc_service(provider, custom.host),
        "transport_api_version": "V3",
        "filter_enabled_metadata": _metadata_matcher(NETWORK_RBAC),
    }
    if provider.config.fail_open:
        ext["failure_mode_allow"] = True
    return (rbac, {"name": NETWORK_EXT_AUTHZ, "typed_config": ext})
