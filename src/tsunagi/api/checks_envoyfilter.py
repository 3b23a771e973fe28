"""Istio's rules for EnvoyFilter, plus the combinations Istio would silently ignore.

Istio accepts a few patches that then do nothing (REPLACE on a cluster, ADD on a route
configuration); those are refused here, with what to use instead, because a rule that never
applies is worse than an error. INSERT_* on object kinds that are not ordered lists Istio
turns into ADD; so do we (accepted).
"""

from __future__ import annotations

from collections.abc import Iterator

from envoy.config.core.v3 import extension_pb2

from .checks_common import Issue, Path, check_labels
from .envoy_values import PatchValueError, build_value
from .envoyfilter import (
    HCM_NAMES,
    LISTENER_CLASS,
    OPERATIONS,
    ROUTE_CLASS,
    EnvoyConfigObjectPatch,
    EnvoyFilterSpec,
)

_MATCH_FOR = {
    **dict.fromkeys(LISTENER_CLASS, "listener"),
    **dict.fromkeys(ROUTE_CLASS, "routeConfiguration"),
    "CLUSTER": "cluster",
}
"""``applyTo`` → the only object match Istio allows with it (EXTENSION_CONFIG: any)."""


def check_envoy_filter(spec: EnvoyFilterSpec) -> Iterator[Issue]:
    """Istio's EnvoyFilter validation, with field paths."""
    if spec.workload_selector is not None:
        if spec.target_refs:
            yield Issue(("targetRefs",), "only one of targetRefs or workloadSelector can be set")
        yield from check_labels(spec.workload_selector.labels, ("workloadSelector", "labels"))
    for i, cp in enumerate(spec.config_patches):
        yield from _check_patch(cp, ("configPatches", i))


def _check_patch(cp: EnvoyConfigObjectPatch, at: Path) -> Iterator[Issue]:
    if cp.apply_to is None:
        yield Issue((*at, "applyTo"), "missing applyTo (e.g. HTTP_FILTER, CLUSTER)")
        return
    if cp.patch is None:
        yield Issue((*at, "patch"), "missing patch")
        return
    op = cp.patch.operation
    if op is None:
        yield Issue((*at, "patch", "operation"), "missing patch operation")
        return
    if op != "REMOVE" and cp.patch.value is None:
        yield Issue((*at, "patch", "value"), f"missing patch value for operation {op}")
        return
    yield from _check_match(cp, at)
    if cp.patch.value is not None:
        try:
            # Lenient, as Istio: unknown fields are dropped here and warned about at apply
            value = build_value(cp.apply_to, cp.patch.value, strict=False)
        except PatchValueError as e:
            yield Issue((*at, "patch", "value"), str(e))
            return
        if isinstance(value, extension_pb2.TypedExtensionConfig) and op == "ADD":
            yield from _check_extension_config(value, (*at, "patch", "value"))


def _check_extension_config(value: extension_pb2.TypedExtensionConfig, at: Path) -> Iterator[Issue]:
    """An ECDS resource Envoy can load: filters find it by name, and it needs a config."""
    if not value.name:
        yield Issue(
            (*at, "name"),
            "an extension config needs a name (the filter's config_discovery loads it by name)",
        )
    if not value.typed_config.type_url:
        yield Issue(
            (*at, "typed_config"),
            "an extension config needs a typed_config with an @type (the filter's config)",
        )


def _check_match(cp: EnvoyConfigObjectPatch, at: Path) -> Iterator[Issue]:
    m = cp.match
    if m is None:
        return
    at = (*at, "match")
    objects = [
        n
        for n, v in (
            ("listener", m.listener),
            ("routeConfiguration", m.route_configuration),
            ("cluster", m.cluster),
        )
        if v is not None
    ]
    if len(objects) > 1:
        yield Issue(
            at, f"only one of listener, routeConfiguration, cluster may be set, got {objects}"
        )
        return
    apply_to = cp.apply_to or ""
    if objects:
        want = _MATCH_FOR.get(apply_to)
        if want is not None and objects[0] != want:
            yield Issue(
                (*at, objects[0]),
                f"applyTo {apply_to} needs a {want} match, not {objects[0]}",
            )
    lm = m.listener
    fc = lm.filter_chain if lm is not None else None
    f = fc.filter if fc is not None else None
    if f is None:
        return
    fat: Path = (*at, "listener", "filterChain", "filter")
    if not f.name:
        yield Issue((*fat, "name"), "filter match has no name to match on")
    if f.sub_filter is not None:
        if apply_to != "HTTP_FILTER":
            yield Issue(
                (*fat, "subFilter"), "subFilter match can be used with applyTo HTTP_FILTER only"
            )
        elif f.name not in HCM_NAMES:
            yield Issue(
                (*fat, "subFilter"),
                f"subFilter match requires filter name {HCM_NAMES[0]}, got {f.name!r}",
            )
        elif not f.sub_filter.name:
            yield Issue((*fat, "subFilter", "name"), "subFilter match has no name to match on")


def envoy_filter_warnings(where: str, spec: EnvoyFilterSpec) -> list[str]:
    """What ``tsunagi apply`` should say about a valid EnvoyFilter: the parts that do not
    apply to Tsunagi's proxies, and fields Envoy's API does not have (dropped, as Istio
    drops them)."""
    out = []
    if spec.target_refs:
        out.append(
            f"{where}: spec.targetRefs is not applied yet (Tsunagi has no Gateway API "
            "gateways or waypoints); this EnvoyFilter applies to no proxy"
        )
    for i, cp in enumerate(spec.config_patches):
        at = f"spec.configPatches[{i}]"
        m = cp.match
        op = cp.patch.operation if cp.patch is not None else None
        if cp.apply_to is not None and op is not None and op not in OPERATIONS[cp.apply_to]:
            # Istio accepts such a patch and never applies it; existing YAML must still load.
            out.append(
                f"{where}: {at}.patch.operation {op} does nothing with applyTo {cp.apply_to}, "
                f"as in Istio; this patch is ignored (use one of "
                f"{', '.join(OPERATIONS[cp.apply_to])})"
            )
        rc = m.route_configuration if m is not None else None
        for name, value in (("gateway", rc and rc.gateway), ("portName", rc and rc.port_name)):
            if value:
                out.append(
                    f"{where}: {at}.match.routeConfiguration.{name} is not applied yet; this "
                    "patch matches no route configuration (match by portNumber instead)"
                )
        if m is not None and m.proxy is not None and (m.proxy.proxy_version or m.proxy.metadata):
            out.append(
                f"{where}: {at}.match.proxy: Tsunagi proxies report no Istio version or "
                "metadata, so, as in Istio for such proxies, this patch matches no proxy"
            )
        if cp.apply_to is not None and cp.patch is not None and cp.patch.value is not None:
            try:
                build_value(cp.apply_to, cp.patch.value, strict=True)
            except PatchValueError as e:
                out.append(
                    f"{where}: {at}.patch.value: {e}; ignored, as Istio ignores it (the rest "
                    "of the patch applies): check the spelling against Envoy's API"
                )
    return out
