"""Building blocks for semantic (cross-field) checks.

A check yields :class:`Issue` values: a path relative to ``spec`` (YAML names
and list indexes) plus a reason. The loader turns them into ``FieldError``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from .common import StringMatch
from .names import check_dns_label, check_header_name, check_label_key, check_label_value

PathPart = str | int
Path = tuple[PathPart, ...]


@dataclass(frozen=True)
class Issue:
    """A semantic problem at ``path`` (relative to the checked object)."""

    path: Path
    reason: str


def check_string_match(sm: StringMatch | None, path: Path, *, allow_empty: bool) -> Iterator[Issue]:
    """Exactly one of exact/prefix/regex (none allowed only if ``allow_empty``)."""
    if sm is None:
        return
    kinds = sm.set_fields
    if len(kinds) > 1:
        yield Issue(path, f"only one of exact, prefix, regex may be set, got {', '.join(kinds)}")
    elif not kinds and not allow_empty:
        yield Issue(path, "must set one of exact, prefix, regex")
    if sm.prefix == "":
        yield Issue((*path, "prefix"), "prefix match must not be empty")


def check_labels(labels: Mapping[str, str], path: Path) -> Iterator[Issue]:
    """Kubernetes label syntax for selector keys and values."""
    for key, value in labels.items():
        err = check_label_key(key)
        if err:
            yield Issue((*path, key), err)
        err = check_label_value(value)
        if err:
            yield Issue((*path, key), err)
        elif value == "*" or "*" in key:
            yield Issue((*path, key), "wildcards are not supported in label selectors")


def check_export_to(values: tuple[str, ...], path: Path) -> Iterator[Issue]:
    """``exportTo``: '.', '*', '~' or namespace names; '*'/'~' must stand alone."""
    seen: set[str] = set()
    for i, ns in enumerate(values):
        if ns in seen:
            yield Issue((*path, i), f"duplicate entry {ns!r}")
        seen.add(ns)
        if ns in (".", "*", "~"):
            continue
        err = check_dns_label(ns, "namespace")
        if err:
            yield Issue((*path, i), err)
    if len(values) > 1 and ("*" in seen or "~" in seen):
        yield Issue(path, "'*' and '~' must be the only entry when used")


def check_header_names(
    names: Mapping[str, object] | tuple[str, ...], path: Path
) -> Iterator[Issue]:
    """Header names in header operations (no pseudo headers such as ':path')."""
    items = names.keys() if isinstance(names, Mapping) else names
    for i, name in enumerate(items):
        where: Path = (*path, name) if isinstance(names, Mapping) else (*path, i)
        if name.startswith(":") or name.lower() == "host":
            yield Issue(where, f"header {name!r} cannot be modified (pseudo or host header)")
            continue
        err = check_header_name(name)
        if err:
            yield Issue(where, err)


def check_unique(values: list[tuple[Path, object]], what: str) -> Iterator[Issue]:
    """Flag repeated values (each given with the path it came from)."""
    seen: dict[object, Path] = {}
    for path, value in values:
        if value in seen:
            yield Issue(path, f"duplicate {what} {value!r}")
        else:
            seen[value] = path


def render_path(parts: Path) -> str:
    """``("spec", "http", 0, "route")`` -> ``spec.http[0].route``; odd keys quoted."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _plain(part):
            out += f".{part}" if out else part
        else:
            out += f'["{part}"]'
    return out


def _plain(key: str) -> bool:
    return bool(key) and all(c.isalnum() or c in "_-" for c in key) and not key[0].isdigit()
