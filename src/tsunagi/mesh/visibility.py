"""Which namespaces see a rule (``exportTo``), and which DestinationRule a client sees.

Istio's rules, as implemented in its push context:

- ``exportTo`` lists ``.`` (the rule's own namespace), ``*`` (every namespace), ``~`` (none)
  or namespace names. Empty means Istio's default, ``*``.
- A client looks for a DestinationRule of a host in three places, and the first that has one
  wins: its own namespace (rules there that are exported to it), then the service's
  namespace, then the root namespace (``istio-system``), each time only rules exported to
  the client. A rule in any other namespace does not apply. Within a namespace the most
  specific host wins (exact, then the longest ``*.`` wildcard).
- Several rules for that host in that namespace are consolidated oldest first (Istio's
  ``mergeDestinationRule`` with ``ENABLE_ENHANCED_DESTINATIONRULE_MERGE``, on by default):
  a rule with the same ``exportTo`` as an entry merges into it (the subsets of all, the
  first of a name winning, and the first top-level traffic policy); a rule whose
  ``exportTo`` covers a non-empty one of an entry also merges into that entry; a rule that
  did not merge into the last entry it met stays an entry of its own. A client uses the
  last entry it sees (Istio's sidecar scope keeps the last rule without a selector).
- A rule with a ``workloadSelector`` is private to its namespace (never exported), and
  applies only to proxies there whose labels it selects: for them it comes before every
  other rule of that host (Istio's sidecar scope returns the first selector rule that
  matches). It takes part in finding the most specific host of the client's namespace, so
  where it is the only rule of that host there, proxies it does not select get no rule at
  all (no fallback to the service's or the root namespace's), as in Istio. Selector rules
  with equal selectors merge as above.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence

from tsunagi.api import DestinationRuleSpec, ResourceOf, Subset, fqdn
from tsunagi.mesh.selectors import labels_match

ROOT_NAMESPACE = "istio-system"
"""Istio's default root (config) namespace: its exported rules apply mesh-wide."""

DestinationRule = ResourceOf[DestinationRuleSpec]


def exported_to(export_to: Sequence[str], owner: str, client: str) -> bool:
    """Whether a rule of namespace ``owner`` with this ``exportTo`` is visible in ``client``."""
    if not export_to:
        return True
    return any(e == "*" or e == client or (e == "." and client == owner) for e in export_to)


def _private(export_to: Sequence[str], owner: str) -> bool:
    """Exported to its own namespace only (Istio keeps such rules out of the exported index)."""
    return len(export_to) == 1 and export_to[0] in (".", owner)


def workload_scoped(rule: DestinationRule) -> bool:
    """Whether ``rule`` has a ``workloadSelector``: it applies only to the proxies of its
    namespace that it selects."""
    return rule.spec.workload_selector is not None


def _selector(rule: DestinationRule) -> dict[str, str]:
    ws = rule.spec.workload_selector
    return dict(ws.labels) if ws is not None else {}


def host_matches(pattern: str, host: str) -> bool:
    """Whether a rule host (possibly ``*.suffix`` or ``*``) covers ``host``."""
    if pattern == host or pattern == "*":
        return True
    return pattern.startswith("*.") and host.endswith(pattern[1:])


def consolidate(rules: Sequence[DestinationRule]) -> list[list[DestinationRule]]:
    """Rules for one host in one namespace (oldest first) as Istio's consolidated entries:
    each entry lists the rules merged into it, its own first (see the module docstring)."""
    entries: list[tuple[frozenset[str], list[DestinationRule]]] = []
    for r in rules:
        export = frozenset(r.spec.export_to)
        separate = True
        for seen, members in entries:
            if seen == export:
                separate = False
            elif seen and export >= seen:
                separate = True  # merged, and an entry of its own as well
            else:
                separate = True
                continue
            members.append(r)
        if separate:
            entries.append((export, [r]))
    return [members for _, members in entries]


def merge(rules: Sequence[DestinationRule]) -> DestinationRule:
    """Several rules for one host in one namespace, merged as Istio does; the first one's
    name and namespace stand for the result."""
    first = rules[0]
    if len(rules) == 1:
        return first
    subsets: list[Subset] = []
    names: set[str] = set()
    policy = None
    for r in rules:
        for s in r.spec.subsets:
            if s.name not in names:
                names.add(s.name)
                subsets.append(s)
        policy = policy or r.spec.traffic_policy
    spec = first.spec.model_copy(update={"subsets": tuple(subsets), "traffic_policy": policy})
    return dataclasses.replace(first, spec=spec)  # type: ignore[type-var]


RulesByNamespace = Mapping[str, Mapping[str, Sequence[DestinationRule]]]
"""namespace → rule host (FQDN or wildcard) → its rules there, oldest first."""


class DestinationRuleLookup:
    """Istio's DestinationRule lookup over one World's rules, remembering its answers (the
    World is immutable, so an answer never changes; merged rules keep one identity)."""

    def __init__(
        self, rules: RulesByNamespace, service_namespace: Callable[[str], str | None]
    ) -> None:
        self._rules = rules
        self._service_namespace = service_namespace
        # Wildcard hosts of each namespace, most specific first; exact hosts are looked up.
        self._wildcards = {
            ns: sorted((h for h in hosts if h.startswith("*")), key=len, reverse=True)
            for ns, hosts in rules.items()
        }
        self._merged: dict[tuple[tuple[str, str, str], ...], DestinationRule] = {}
        self._answers: dict[tuple[str, str], DestinationRule | None] = {}
        self._selected: dict[tuple[str, str, tuple[tuple[str, str], ...]], DestinationRule | None]
        self._selected = {}
        self.scoped_namespaces: frozenset[str] = frozenset(
            ns
            for ns, hosts in rules.items()
            if any(workload_scoped(r) for rs in hosts.values() for r in rs)
        )
        """Namespaces that hold a rule with a ``workloadSelector``."""
        self.namespaces_named: frozenset[str] = frozenset(
            e
            for hosts in rules.values()
            for rs in hosts.values()
            for r in rs
            for e in r.spec.export_to
        )
        """Namespaces that some rule names in its ``exportTo``."""

    def _merged_rule(self, rules: Sequence[DestinationRule]) -> DestinationRule:
        key = tuple(r.key for r in rules)
        found = self._merged.get(key)
        if found is None:
            found = self._merged[key] = merge(rules)
        return found

    def _patterns(self, namespace: str, host: str) -> Iterator[Sequence[DestinationRule]]:
        """The rules of ``namespace`` by host pattern covering ``host``, most specific first."""
        by_host = self._rules.get(namespace, {})
        if host in by_host:
            yield by_host[host]
        for pattern in self._wildcards.get(namespace, ()):
            if host_matches(pattern, host):
                yield by_host[pattern]

    def _first(
        self, namespace: str, host: str, take: Callable[[DestinationRule], bool]
    ) -> list[list[DestinationRule]]:
        """The consolidated entries of the rules ``take`` keeps of the most specific
        pattern that has any."""
        for rules in self._patterns(namespace, host):
            kept = [r for r in rules if take(r)]
            if kept:
                return consolidate(kept)
        return []

    def _last(self, entries: Sequence[list[DestinationRule]]) -> DestinationRule | None:
        return self._merged_rule(entries[-1]) if entries else None

    def _local_rules(self, client: str, host: str) -> list[DestinationRule] | None:
        """The rules of the client's own namespace for the most specific host pattern that
        has any visible there (selector rules included); None when no pattern has."""
        if client == ROOT_NAMESPACE:
            # Istio: in the root namespace only its private rules come first, so that the
            # mesh-wide rules there do not shadow a service namespace's own rule.
            def take(r: DestinationRule) -> bool:
                return workload_scoped(r) or _private(r.spec.export_to, client)
        else:

            def take(r: DestinationRule) -> bool:
                return workload_scoped(r) or exported_to(r.spec.export_to, client, client)

        for rules in self._patterns(client, host):
            kept = [r for r in rules if take(r)]
            if kept:
                return kept
        return None

    def _local(self, namespace: str, host: str) -> tuple[DestinationRule | None, bool]:
        """The rule without a selector that the client's own namespace gives ``host``, and
        whether that namespace had rules for it at all (then the lookup stops there)."""
        kept = self._local_rules(namespace, host)
        if kept is None:
            return None, False
        return self._last(consolidate([r for r in kept if not workload_scoped(r)])), True

    def selector_patterns(self, namespace: str) -> tuple[str, ...]:
        """The host patterns of ``namespace``'s rules with a ``workloadSelector``: only a
        host one of them covers can have a selected rule there."""
        hosts = self._rules.get(namespace, {})
        return tuple(h for h, rs in hosts.items() if any(workload_scoped(r) for r in rs))

    def selected_rule(
        self, host: str, client: str, labels: tuple[tuple[str, str], ...]
    ) -> DestinationRule | None:
        """The rule with a ``workloadSelector`` of namespace ``client`` that a proxy there
        with ``labels`` applies to ``host`` (the first, oldest, that selects it, merged with
        those of an equal selector); None when none does."""
        key = (host, client, labels)
        if key in self._selected:
            return self._selected[key]
        found = None
        if client in self.scoped_namespaces:
            scoped = [r for r in self._local_rules(client, host) or () if workload_scoped(r)]
            have = dict(labels)
            first = next((r for r in scoped if labels_match(_selector(r), have)), None)
            if first is not None:
                wanted = _selector(first)
                found = self._merged_rule([r for r in scoped if _selector(r) == wanted])
        self._selected[key] = found
        return found

    def _exported(self, namespace: str, host: str, client: str) -> DestinationRule | None:
        # Istio picks the most specific host among the rules exported beyond their own
        # namespace first, then keeps the entries the client may see (an entry is as
        # visible as its first rule). A rule with a selector is never exported.
        found = self._first(
            namespace,
            host,
            lambda r: not workload_scoped(r) and not _private(r.spec.export_to, namespace),
        )
        return self._last([e for e in found if exported_to(e[0].spec.export_to, namespace, client)])

    def rule_for(self, host: str, client: str) -> DestinationRule | None:
        """The (merged) DestinationRule that clients in namespace ``client`` apply to
        ``host``; None if none applies. ``client`` "" is a namespace with no rules of its
        own that no rule names: the view shared by most sidecars."""
        key = (host, client)
        if key in self._answers:
            return self._answers[key]
        found, stop = self._local(client, host) if client else (None, False)
        if stop:
            self._answers[key] = found
            return found
        service_ns = self._service_namespace(host)
        if found is None and service_ns:
            found = self._exported(service_ns, host, client)
        if found is None:
            found = self._exported(ROOT_NAMESPACE, host, client)
        self._answers[key] = found
        return found

    def may_differ(self, client: str) -> bool:
        """Whether clients in ``client`` could see other rules than the shared view: only
        when the namespace has rules of its own, or some rule names it."""
        return client in self._rules or client in self.namespaces_named


def subset_definitions(
    spec: DestinationRuleSpec,
) -> tuple[tuple[str, tuple[tuple[str, str], ...]], ...]:
    """``(name, sorted labels)`` of each subset a rule defines: hashable, for memo keys."""
    return tuple((s.name, tuple(sorted(s.labels.items()))) for s in spec.subsets)


def index_rules(rules: Sequence[DestinationRule]) -> RulesByNamespace:
    """``rules`` (oldest first) by namespace and resolved host."""
    out: dict[str, dict[str, list[DestinationRule]]] = {}
    for r in rules:
        out.setdefault(r.namespace, {}).setdefault(fqdn(r.spec.host, r.namespace), []).append(r)
    return out
