"""Envoy SAN matchers for Istio's ``subjectAltNames`` (gateways' client checks and TLS
origination's server checks alike)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

SAN_TYPES = ("DNS", "URI", "EMAIL", "IP_ADDRESS")
"""The SAN types Istio's ``subjectAltNames`` match: Istio sets Envoy's untyped (deprecated)
``match_subject_alt_names``, which checks each name against a SAN of any of these types."""


def san_matchers(names: Sequence[str]) -> list[dict[str, Any]]:
    """``match_typed_subject_alt_names`` for ``names``: each name exactly, as a SAN of any
    type (a certificate passes when one of them matches)."""
    return [{"san_type": t, "matcher": {"exact": n}} for n in names for t in SAN_TYPES]
