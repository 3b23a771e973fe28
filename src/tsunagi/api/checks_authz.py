"""AuthorizationPolicy rules beyond the field shapes (``checks_security.py``): values
Envoy would refuse (so the whole push would fail). ``action: CUSTOM`` is accepted: its
provider is judged against ``tsunagi up --mesh-config`` when applied (an ``apply``
warning, :mod:`tsunagi.mesh.ext_authz`), since istiod too accepts an unknown provider
name and fails closed for the requests its rules match."""

from __future__ import annotations

import re
from collections.abc import Iterator

from .checks_common import Issue, Path
from .jwt_claims import authz_claim_path
from .security import Operation

MATCH_ONE, MATCH_ANY = "{*}", "{**}"
"""Istio's path template operators: one path segment; any number of segments."""

# Template forms Istio refuses: named variables ({name}, {name=*}), empty braces, and bare
# * or ** segments mixed into a template.
_UNSUPPORTED_TEMPLATE = re.compile(r"/\{\w+=\*\*?\}|\{\w*\}|/\*\*?|\*\*?/")
_ENVOY_KEY = re.compile(r"^experimental\.envoy\.filters\.[^\[\]]+\[[^\[\]]+\]$")


def is_template(path: str) -> bool:
    """Whether ``path`` uses Istio's ``{*}``/``{**}`` template operators."""
    return MATCH_ONE in path or MATCH_ANY in path


def path_issues(op: Operation, path: Path) -> Iterator[Issue]:
    """``paths``/``notPaths`` templates Envoy's URI template matcher accepts."""
    for alias, paths in (("paths", op.paths), ("notPaths", op.not_paths)):
        for j, value in enumerate(paths):
            if not is_template(value):
                continue
            if _UNSUPPORTED_TEMPLATE.search(value):
                yield Issue(
                    (*path, alias, j),
                    f"invalid or unsupported path template {value!r}: only {MATCH_ONE} (one "
                    f"segment) and {MATCH_ANY} (any segments) are supported, not named "
                    "variables, {} or bare * segments",
                )
            elif not value.startswith("/"):
                yield Issue((*path, alias, j), f"path template {value!r} must start with '/'")
            elif MATCH_ANY in value and not value.endswith(MATCH_ANY):
                yield Issue(
                    (*path, alias, j),
                    f"path template {value!r}: {MATCH_ANY} must be the last segment "
                    f"(Envoy matches nothing after it); use {MATCH_ONE} for one segment",
                )


def key_issue(key: str) -> str | None:
    """Why a bracketed ``when`` key is malformed: ``experimental.envoy.filters.NAME[KEY]``,
    ``request.auth.claims[A][B]...`` (no empty claim name); None when it is not."""
    if key.startswith("experimental.envoy.filters.") and not _ENVOY_KEY.match(key):
        return f"bad key {key!r}: should have the form experimental.envoy.filters.NAME[KEY]"
    names = authz_claim_path(key)
    if names is not None and (not all(names) or any("[" in n or "]" in n for n in names)):
        return (
            f"bad key {key!r}: should have the form request.auth.claims[NAME], or "
            "request.auth.claims[NAME][NESTED]... for a nested claim"
        )
    return None
