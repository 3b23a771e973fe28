"""'Did you mean ...?' suggestions for misspelt field and kind names."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from pydantic.alias_generators import to_camel

from .checks_common import quote


def closest(word: str, candidates: Iterable[str]) -> str | None:
    """The candidate most similar to ``word`` (case-insensitive), if any is close."""
    options = list(candidates)
    if len(word) > 100:  # no misspelling is this long; spare difflib the work
        return None
    lowered = {c.lower(): c for c in options}
    if word.lower() in lowered:
        return lowered[word.lower()]
    camel = to_camel(word)
    if camel in options:
        return camel
    match = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.6)
    return lowered[match[0]] if match else None


def unknown_field_reason(field: str, valid: Iterable[str]) -> str:
    """Reason text for an unknown field, suggesting the closest valid one."""
    options = sorted(valid)
    best = closest(field, options)
    if best is not None:
        return f'unknown field {quote(field)}; did you mean "{best}"?'
    if not options:
        return f"unknown field {quote(field)}; no fields are allowed here"
    return f"unknown field {quote(field)}; valid fields: {', '.join(options)}"
