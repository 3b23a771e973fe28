"""Istio's workload selection, once for every kind that selects workloads: label selectors
(``selector.matchLabels``, ``workloadSelector.labels``) and the root-plus-own-namespace
scope of security policies."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypeVar

from tsunagi.api import LabelSelector

T = TypeVar("T")


def labels_match(wanted: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """Whether ``labels`` include every ``wanted`` label (none wanted: any labels do)."""
    return all(labels.get(k) == v for k, v in wanted.items())


def selects(selector: LabelSelector | None, labels: Mapping[str, str]) -> bool:
    """Whether a ``selector.matchLabels`` picks a workload with ``labels``; no selector, or
    an empty one, picks every workload."""
    return selector is None or labels_match(selector.match_labels, labels)


def narrows(selector: LabelSelector | None) -> bool:
    """Whether ``selector`` names some label, so it picks some workloads, not all."""
    return selector is not None and bool(selector.match_labels)


def own_then_root(by_namespace: Mapping[str, Sequence[T]], namespace: str, root: str) -> list[T]:
    """The policies of a workload's ``namespace``, then of the ``root`` namespace (once when
    they are the same): the policies that may apply to it, in Istio's scope."""
    return [p for ns in dict.fromkeys((namespace, root)) for p in by_namespace.get(ns, ())]
