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

from tsunagi.api.durations import format_duration
from tsunagi.api.mesh_config import EnvoyExtAuthzHttp, ExtensionProvider, RequestBody, service_host
from tsunagi.mesh.authorization import dry_run
from tsunagi.mesh.ext_authz import CustomAuthz
from tsunagi.xds.translate.authz_rules import (
    HTTP_RBAC,
    NETWORK_RBAC,
    TCP_STAT_PREFIX,
    Target,
    rbac_filter,
    rule_policies,
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


def _metadata_matcher(filter_name: str) -> dict[str, Any]:
    return {
        "filter": filter_name,
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


def _grpc_service(provider: ExtensionProvider) -> dict[str, Any]:
    config = provider.config
    host = service_host(config.service)[1]
    # The authority is the host (istiod's): the cluster name's '|' is not valid in one.
    return {
        "envoy_grpc": {"cluster_name": outbound_cluster(host, config.port), "authority": host},
        "timeout": _timeout(config.timeout),
    }


def _http_service(config: EnvoyExtAuthzHttp) -> dict[str, Any]:
    host = service_host(config.service)[1]
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


def _http_ext_authz(provider: ExtensionProvider) -> dict[str, Any]:
    config = provider.config
    typed: dict[str, Any] = {"@type": HTTP_EXT_AUTHZ_TYPE, "transport_api_version": "V3"}
    if isinstance(config, EnvoyExtAuthzHttp):
        typed["http_service"] = _http_service(config)
        # The filter's own field, as istiod sets it (authorization_request's is deprecated).
        allowed = config.include_request_headers_in_check or config.include_headers_in_check
        if allowed:
            typed["allowed_headers"] = _headers(allowed)
    else:
        typed["grpc_service"] = _grpc_service(provider)
    if config.fail_open:
        typed["failure_mode_allow"] = True
    if config.status_on_error:
        typed["status_on_error"] = {"code": int(config.status_on_error)}
    typed["filter_enabled_metadata"] = _metadata_matcher(HTTP_RBAC)
    typed.update(_body(config.include_request_body_in_check))
    return {"name": HTTP_EXT_AUTHZ, "typed_config": typed}


def _marking(custom: CustomAuthz | None, port: int, tcp: bool) -> dict[str, Any] | None:
    """The RBAC filter in front of ext_authz: the enforced CUSTOM rules in shadow mode,
    marking the requests to check; or, when the policies cannot be sent anywhere, enforced
    as DENY. None without enforced CUSTOM policies (dry-run ones are left out)."""
    policies = [p for p in custom.policies if not dry_run(p)] if custom is not None else []
    if custom is None or not policies:
        return None
    # istiod judges CUSTOM rules as DENY ones
    rules = rule_policies(policies, Target("DENY", port, tcp), prefix=MATCH_PREFIX + "-")
    if custom.provider is None:
        denied = {n + BAD_SUFFIX: rule for n, rule in rules.items()}
        return rbac_filter({"rules": {"action": "DENY", "policies": denied}}, tcp)
    shadow = {"action": "DENY", "policies": rules}
    return rbac_filter({"shadow_rules": shadow, "shadow_rules_stat_prefix": SHADOW_PREFIX}, tcp)


def http_filters(custom: CustomAuthz | None, port: int) -> tuple[dict[str, Any], ...]:
    """The shadow RBAC + ext_authz HTTP filters for inbound ``port`` (or a gateway's HTTP
    server port); a denying RBAC filter when the policies cannot be sent anywhere."""
    rbac = _marking(custom, port, tcp=False)
    provider = custom.provider if custom is not None else None
    if rbac is None:
        return ()
    return (rbac,) if provider is None else (rbac, _http_ext_authz(provider))


def network_filters(custom: CustomAuthz | None, port: int) -> tuple[dict[str, Any], ...]:
    """The shadow RBAC + ext_authz network filters for TCP ``port``: gRPC providers only (an
    HTTP provider's policies do not apply to TCP, as in Istio)."""
    provider = custom.provider if custom is not None else None
    if provider is not None and isinstance(provider.config, EnvoyExtAuthzHttp):
        return ()
    rbac = _marking(custom, port, tcp=True)
    if rbac is None:
        return ()
    if provider is None:
        return (rbac,)
    ext: dict[str, Any] = {
        "@type": NETWORK_EXT_AUTHZ_TYPE,
        "stat_prefix": TCP_STAT_PREFIX,
        "grpc_service": _grpc_service(provider),
        "transport_api_version": "V3",
        "filter_enabled_metadata": _metadata_matcher(NETWORK_RBAC),
    }
    if provider.config.fail_open:
        ext["failure_mode_allow"] = True
    return (rbac, {"name": NETWORK_EXT_AUTHZ, "typed_config": ext})
