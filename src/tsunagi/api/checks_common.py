"""Building blocks for semantic (cross-field) checks.

A check yields :class:`Issue` values: a path relative to ``spec`` (YAML names
and list indexes) plus a reason. The loader turns them into ``FieldError``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from .common import LabelSelector, PolicyTargetReference, StringMatch
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


def check_policy_target(
    selector: LabelSelector | None,
    target_ref: PolicyTargetReference | None,
    target_refs: tuple[PolicyTargetReference, ...],
) -> Iterator[Issue]:
    """Istio's policy attachment: a well-formed ``selector``, or ``targetRef`` or
    ``targetRefs``, never two of them."""
    if selector is not None:
        yield from check_labels(selector.match_labels, ("selector", "matchLabels"))
        if target_ref is not None or target_refs:
            yield Issue((), "selector cannot be combined with targetRef/targetRefs")
    if target_ref is not None and target_refs:
        yield Issue((), "only one of targetRef and targetRefs may be set")


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
            out += f"[{quote(str(part))}]"
    return out


def _plain(key: str) -> bool:
    return (
        0 < len(key) <= _MAX_SHOWN
        and all(c.isalnum() or c in "_-" for c in key)
        and not key[0].isdigit()
    )


# Longer user text is cut in messages: an error line should stay a line, not a megabyte.
_MAX_SHOWN = 80
_MAX_REASON = 1000


def shorten(reason: str) -> str:
    """``reason`` cut to a readable length (checks may quote a huge value with ``!r``)."""
    if len(reason) <= _MAX_REASON:
        return reason
    return f"{reason[:_MAX_REASON]}... ({len(reason)} characters)"


def quote(text: str) -> str:
    """``text`` in double quotes for a message: invisible characters escaped, long text cut.

    Escaping keeps one error per line (no raw newlines) and shows characters that would
    otherwise be invisible or reorder the line (NUL, U+202E RIGHT-TO-LEFT OVERRIDE).
    """
    shown = text[:_MAX_SHOWN]
    body = "".join(c if c.isprintable() and c not in '"\\' else _escape(c) for c in shown)
    if len(text) > _MAX_SHOWN:
        return f'"{body}..." ({len(text)} characters)'
    return f'"{body}"'


def _escape(c: str) -> str:
    named = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
    if c in named:
        return named[c]
    code = ord(c)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"
