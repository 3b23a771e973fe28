"""Istio's semantic validation rules for security.istio.io kinds."""

from __future__ import annotations

from collections.abc import Iterator

from .checks_authz import key_issue, path_issues
from .checks_common import Issue, Path, check_labels, check_policy_target
from .names import check_ip_or_cidr
from .security import (
    AuthorizationPolicySpec,
    Condition,
    Operation,
    PeerAuthenticationSpec,
    Rule,
    Source,
)

# Attributes usable as ``when[].key`` (bracketed ones take a name inside [...]).
_WHEN_KEYS = frozenset(
    {
        "source.ip",
        "remote.ip",
        "source.namespace",
        "source.principal",
        "source.serviceAccount",
        "request.auth.principal",
        "request.auth.audiences",
        "request.auth.presenter",
        "destination.ip",
        "destination.port",
        "connection.sni",
    }
)
_WHEN_BRACKETED = ("request.headers[", "request.auth.claims[")
_IP_KEYS = frozenset({"source.ip", "remote.ip", "destination.ip"})


def check_peer_authentication(spec: PeerAuthenticationSpec) -> Iterator[Issue]:
    """Istio's PeerAuthentication rules."""
    if spec.selector is not None:
        yield from check_labels(spec.selector.match_labels, ("selector", "matchLabels"))
    if spec.port_level_mtls and (spec.selector is None or not spec.selector.match_labels):
        yield Issue(
            ("portLevelMtls",),
            "portLevelMtls requires a workload selector (selector.matchLabels)",
        )
    if "port_level_mtls" in spec.model_fields_set and not spec.port_level_mtls:
        yield Issue(
            ("portLevelMtls",), "portLevelMtls, if set, must have at least one port; omit it"
        )
    for port in spec.port_level_mtls:
        if not 1 <= port <= 65535:
            yield Issue(
                ("portLevelMtls", port), f"port number must be between 1 and 65535, got {port}"
            )


def check_authorization_policy(spec: AuthorizationPolicySpec) -> Iterator[Issue]:
    """Istio's AuthorizationPolicy rules."""
    yield from check_policy_target(spec.selector, spec.target_ref, spec.target_refs)
    if spec.action == "CUSTOM":
        if spec.provider is None:
            yield Issue(("provider",), "provider is required when action is CUSTOM")
        elif not spec.provider.name:
            yield Issue(("provider", "name"), "provider name is required")
    elif spec.provider is not None:
        yield Issue(
            ("provider",), f"provider is only allowed with action CUSTOM, not {spec.action}"
        )
    for i, rule in enumerate(spec.rules):
        yield from _check_rule(rule, ("rules", i))


def _check_rule(rule: Rule, path: Path) -> Iterator[Issue]:
    fields = rule.model_fields_set
    for alias, attr, items in (
        ("from", "from_", rule.from_),
        ("to", "to", rule.to),
        ("when", "when", rule.when),
    ):
        if attr in fields and not items:
            yield Issue((*path, alias), f"`{alias}` must not be empty; omit it instead")
    for i, rf in enumerate(rule.from_):
        fp: Path = (*path, "from", i, "source")
        if rf.source is None:
            yield Issue(fp, "source is required")
        else:
            yield from _check_source(rf.source, fp)
    for i, rt in enumerate(rule.to):
        tp: Path = (*path, "to", i, "operation")
        if rt.operation is None:
            yield Issue(tp, "operation is required")
        else:
            yield from _check_operation(rt.operation, tp)
    for i, cond in enumerate(rule.when):
        yield from _check_condition(cond, (*path, "when", i))


def _check_values(model: Source | Operation, path: Path) -> Iterator[Issue]:
    """Every list in a source/operation must not contain empty strings."""
    any_set = False
    for attr, info in type(model).model_fields.items():
        values: tuple[str, ...] = getattr(model, attr)
        alias = info.alias or attr
        if values:
            any_set = True
        for j, v in enumerate(values):
            if v == "":
                yield Issue((*path, alias, j), "empty value is not allowed")
    if not any_set:
        yield Issue(path, "must set at least one field")


def _check_source(src: Source, path: Path) -> Iterator[Issue]:
    yield from _check_values(src, path)
    for alias, blocks in (
        ("ipBlocks", src.ip_blocks),
        ("notIpBlocks", src.not_ip_blocks),
        ("remoteIpBlocks", src.remote_ip_blocks),
        ("notRemoteIpBlocks", src.not_remote_ip_blocks),
    ):
        for j, block in enumerate(blocks):
            err = check_ip_or_cidr(block) if block else None
            if err:
                yield Issue((*path, alias, j), err)


def _check_operation(op: Operation, path: Path) -> Iterator[Issue]:
    yield from _check_values(op, path)
    yield from path_issues(op, path)
    for alias, ports in (("ports", op.ports), ("notPorts", op.not_ports)):
        for j, port in enumerate(ports):
            yield from _check_port_string(port, (*path, alias, j))


def _check_port_string(port: str, path: Path) -> Iterator[Issue]:
    if not _is_number(port, 5) or not 1 <= int(port) <= 65535:
        yield Issue(path, f"must be a port number between 1 and 65535, got {port!r}")


def _is_number(text: str, max_digits: int) -> bool:
    # isascii: str.isdigit() also accepts "²" and "٣", which int() rejects or misreads;
    # the length bound keeps int() away from its 4,300-digit ValueError.
    return 0 < len(text) <= max_digits and text.isascii() and text.isdigit()


def _check_condition(cond: Condition, path: Path) -> Iterator[Issue]:
    key = cond.key
    if not key:
        yield Issue((*path, "key"), "key is required")
    elif not (
        key in _WHEN_KEYS
        or key.startswith("experimental.envoy.filters.")
        or any(
            key.startswith(p) and key.endswith("]") and len(key) > len(p) + 1
            for p in _WHEN_BRACKETED
        )
    ):
        yield Issue(
            (*path, "key"),
            f"unknown attribute {key!r}; valid keys: "
            + ", ".join(sorted(_WHEN_KEYS))
            + ", request.headers[<name>], request.auth.claims[<name>]",
        )
    elif problem := key_issue(key):
        yield Issue((*path, "key"), problem)
    if not cond.values and not cond.not_values:
        yield Issue(path, "at least one of values or notValues is required")
    for alias, values in (("values", cond.values), ("notValues", cond.not_values)):
        for j, v in enumerate(values):
            if key == "destination.port":
                yield from _check_port_string(v, (*path, alias, j))
            elif key in _IP_KEYS:
                err = check_ip_or_cidr(v)
                if err:
                    yield Issue((*path, alias, j), err)
