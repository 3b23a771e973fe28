"""VirtualService delegation: a root rule's ``http[].delegate`` pulls in the routes of another
VirtualService (one without hosts), as Istio merges them.

Istio's rules (``pilot/pkg/model/virtualservice.go``):

- the delegate is ``delegate.namespace/delegate.name`` (namespace defaults to the root's), a
  VirtualService with no hosts, exported to the root's namespace; otherwise that root route
  is left out (and ``tsunagi apply`` warns). Only one level: a delegate cannot delegate;
- each delegate route becomes one route in place of the root route, in delegate order. Its
  matches are each delegate match merged with each root match it does not conflict with
  (the delegate's fields win, maps are combined); a delegate match that conflicts with every
  root match — say, a path outside the root's prefix — drops the whole delegate route;
- what a delegate route leaves unset (rewrite, timeout, retries, fault, mirrors, CORS,
  headers) it takes from the root route; names join as ``root-delegate``.

Short host names in merged routes are resolved in the namespace of the rule that wrote them
(as Istio resolved each VirtualService's names before merging).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from tsunagi.api import (
    Destination,
    HTTPMatchRequest,
    HTTPRoute,
    ResourceOf,
    StringMatch,
    VirtualServiceSpec,
    fqdn,
)
from tsunagi.mesh.visibility import exported_to

VirtualService = ResourceOf[VirtualServiceSpec]


@dataclass(frozen=True)
class Expanded:
    """One HTTP route of a VirtualService after delegation, with the name it gets when it
    has none of its own."""

    http: HTTPRoute
    default_name: str


def find_delegate(
    delegates: Mapping[tuple[str, str], VirtualService], root: VirtualService, http: HTTPRoute
) -> VirtualService | None:
    """The VirtualService ``http.delegate`` names, if it exists, has no hosts and is exported
    to the root's namespace."""
    d = http.delegate
    if d is None:
        return None
    found = delegates.get((d.namespace or root.namespace, d.name))
    if found is None or not exported_to(found.spec.export_to, found.namespace, root.namespace):
        return None
    return found


def _dest(d: Destination, namespace: str) -> Destination:
    return d.model_copy(update={"host": fqdn(d.host, namespace)})


def resolved(http: HTTPRoute, namespace: str) -> HTTPRoute:
    """``http`` with its destination and mirror hosts resolved in ``namespace``."""
    return http.model_copy(
        update={
            "route": tuple(
                rd.model_copy(update={"destination": _dest(rd.destination, namespace)})
                for rd in http.route
            ),
            "mirror": _dest(http.mirror, namespace) if http.mirror is not None else None,
            "mirrors": tuple(
                m.model_copy(update={"destination": _dest(m.destination, namespace)})
                for m in http.mirrors
            ),
        }
    )


def string_match_conflict(root: StringMatch | None, leaf: StringMatch | None) -> bool:
    """Whether ``leaf`` can match what ``root`` does not (Istio's stringMatchConflict)."""
    if root is None or leaf is None:
        return False
    if root.regex and (leaf.regex or leaf.prefix or leaf.exact):
        return True
    if leaf.regex and (root.regex or root.prefix or root.exact):
        return True
    if root.exact:
        return bool(leaf.prefix) or leaf.exact != root.exact
    if root.prefix:
        if leaf.prefix:
            return not leaf.prefix.startswith(root.prefix)
        if leaf.exact:
            return not leaf.exact.startswith(root.prefix)
    return True


def match_conflict(root: HTTPMatchRequest, leaf: HTTPMatchRequest) -> bool:
    """Whether a delegate match cannot be narrowed into a root match (Istio's hasConflict)."""
    for name in ("uri", "scheme", "method", "authority"):
        if string_match_conflict(getattr(root, name), getattr(leaf, name)):
            return True
    for field in ("headers", "without_headers", "query_params"):
        mine, theirs = getattr(root, field), getattr(leaf, field)
        if any(string_match_conflict(mine.get(k), v) for k, v in theirs.items()):
            return True
    if root.ignore_uri_case != leaf.ignore_uri_case:
        return True
    if root.port and leaf.port and root.port != leaf.port:
        return True
    if root.source_namespace and leaf.source_namespace != root.source_namespace:
        return True
    if any(
        k in root.source_labels and root.source_labels[k] != v
        for k, v in leaf.source_labels.items()
    ):
        return True
    # gateways: the root's must include the delegate's
    return bool(root.gateways and leaf.gateways and not set(leaf.gateways) <= set(root.gateways))


def _joined(root: str | None, leaf: str | None) -> str | None:
    if not leaf:
        return root
    return f"{root}-{leaf}" if root else leaf


def merge_match(root: HTTPMatchRequest, leaf: HTTPMatchRequest) -> HTTPMatchRequest:
    """One root match AND one delegate match: the delegate's fields win where both are set."""
    return leaf.model_copy(
        update={
            "name": _joined(root.name, leaf.name),
            "uri": leaf.uri or root.uri,
            "scheme": leaf.scheme or root.scheme,
            "method": leaf.method or root.method,
            "authority": leaf.authority or root.authority,
            "headers": {**root.headers, **leaf.headers},
            "without_headers": {**root.without_headers, **leaf.without_headers},
            "query_params": {**root.query_params, **leaf.query_params},
            "port": leaf.port or root.port,
            "source_labels": {**root.source_labels, **leaf.source_labels},
            "source_namespace": leaf.source_namespace or root.source_namespace,
            "gateways": leaf.gateways or root.gateways,
            "stat_prefix": leaf.stat_prefix or root.stat_prefix,
        }
    )


def merge_matches(
    root: tuple[HTTPMatchRequest, ...], leaf: tuple[HTTPMatchRequest, ...]
) -> tuple[HTTPMatchRequest, ...] | None:
    """The merged matches of a root and a delegate route; None when they conflict."""
    if not root:
        return leaf
    if not leaf:
        return root
    out: list[HTTPMatchRequest] = []
    for sub in leaf:
        fits = [r for r in root if not match_conflict(r, sub)]
        if not fits:
            return None
        out += [merge_match(r, sub) for r in fits]
    return tuple(out)


_INHERITED = (
    "rewrite",
    "direct_response",
    "timeout",
    "retries",
    "fault",
    "mirror",
    "mirror_percentage",
    "cors_policy",
    "headers",
)


def merge_route(root: HTTPRoute, leaf: HTTPRoute) -> HTTPRoute | None:
    """A delegate route under its root route; None when their matches conflict."""
    matches = merge_matches(root.match, leaf.match)
    if matches is None:
        return None
    update: dict[str, object] = {"match": matches, "name": _joined(root.name, leaf.name)}
    for name in _INHERITED:
        if getattr(leaf, name) is None:
            update[name] = getattr(root, name)
    if not leaf.mirrors:
        update["mirrors"] = root.mirrors
    return leaf.model_copy(update=update)


def expand(
    delegates: Mapping[tuple[str, str], VirtualService], vs: VirtualService
) -> list[Expanded]:
    """The HTTP routes of ``vs`` with each delegating route replaced by the delegate's
    routes merged into it (a missing or hidden delegate contributes none)."""
    out: list[Expanded] = []
    for i, http in enumerate(vs.spec.http):
        if http.delegate is None:
            # Left as written: translation resolves its short names in vs's namespace.
            out.append(Expanded(http, f"{vs.namespace}/{vs.name}/{i}"))
            continue
        target = find_delegate(delegates, vs, http)
        if target is None:
            continue
        root = resolved(http.model_copy(update={"delegate": None}), vs.namespace)
        for j, leaf in enumerate(target.spec.http):
            if leaf.delegate is not None:
                continue  # only one level (validation rejects it; stored older data may not)
            merged = merge_route(root, resolved(leaf, target.namespace))
            if merged is not None:
                out.append(Expanded(merged, f"{target.namespace}/{target.name}/{j}"))
    return out


def delegates_of(
    delegates: Mapping[tuple[str, str], VirtualService], vs: VirtualService
) -> tuple[tuple[str, str, str], ...]:
    """Keys of the delegates whose routes ``vs`` pulls in (to blame them with it)."""
    found = (find_delegate(delegates, vs, http) for http in vs.spec.http)
    return tuple(dict.fromkeys(d.key for d in found if d is not None))


def delegation_warnings(
    delegates: Mapping[tuple[str, str], VirtualService], vs: VirtualService
) -> list[str]:
    """What ``tsunagi apply`` says about ``vs``'s delegates: missing, hidden, or routes of
    theirs that conflict with the root route and are left out."""
    where = f"VirtualService {vs.namespace}/{vs.name}"
    out = []
    for i, http in enumerate(vs.spec.http):
        d = http.delegate
        if d is None:
            continue
        name = f"{d.namespace or vs.namespace}/{d.name}"
        found = delegates.get((d.namespace or vs.namespace, d.name))
        target = find_delegate(delegates, vs, http)
        if found is None:
            out.append(
                f"{where}: spec.http[{i}].delegate: no VirtualService {name} without hosts "
                "exists; this route has no effect until it does"
            )
        elif target is None:
            out.append(
                f"{where}: spec.http[{i}].delegate: VirtualService {name} is not exported to "
                f"namespace {vs.namespace}; add it to its exportTo"
            )
        else:
            for j, leaf in enumerate(target.spec.http):
                if leaf.delegate is None and merge_matches(http.match, leaf.match) is None:
                    out.append(
                        f"{where}: spec.http[{i}].delegate: route http[{j}] of "
                        f"VirtualService {name} matches requests outside this route's match; "
                        "it is left out, as Istio does"
                    )
    return out
