"""Per-type stream state: what the client subscribed to, holds, was sent and ACKed.

Mutable bookkeeping (:class:`_TypeState`) that never leaves the package, its public read-only
summary (:class:`TypeStatus`), and the two operations on what a client holds that both
variants need: dropping names (:func:`_without`) and diffing against a target (:func:`_diff`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from tsunagi.xds.by_identity import IdentityCache, shared
from tsunagi.xds.protocol._events import WILDCARD
from tsunagi.xds.resources import Resource, mapping_version

_NO_NAMES: frozenset[str] = frozenset()
_EMPTY: Mapping[str, Resource] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class TypeStatus:
    """What one type looks like on this stream, for proxy status pages."""

    type_url: str
    subscribed: bool
    wildcard: bool
    names: frozenset[str]
    sent_version: str | None
    sent_nonce: str | None
    awaiting_ack: bool
    acked_version: str | None
    rejected: bool
    """The last answered response was NACKed (and nothing newer was ACKed since)."""
    last_nack_version: str | None
    last_nack_message: str | None


class _TypeState:
    """Mutable per-type bookkeeping; never leaves this package.

    ``known`` and ``acked`` are never changed in place, only replaced: they are often the
    very mapping of a snapshot (shared by many streams), and the caches below recognise
    them by identity.
    """

    __slots__ = (
        "_acked_v",
        "_covers",
        "_known_v",
        "_plan",
        "_required",
        "acked",
        "acked_version",
        "force",
        "full",
        "known",
        "last_nack_message",
        "last_nack_version",
        "names",
        "nonce",
        "outstanding",
        "rejected",
        "sent_version",
        "subscribed",
        "unresolved",
        "wildcard",
    )

    def __init__(self) -> None:
        self.subscribed = False
        self.wildcard = False
        # Replaced (never mutated) when the subscription changes, so it doubles as its key.
        self.names: frozenset[str] = _NO_NAMES
        # What the client holds as far as we know: the content we last sent for each name.
        self.known: Mapping[str, Resource] = _EMPTY
        # ``known`` as of the last ACK: what the dependency checks trust.
        self.acked: Mapping[str, Resource] = _EMPTY
        self.nonce: str | None = None
        self.outstanding = False
        self.sent_version: str | None = None
        self.acked_version: str | None = None
        self.rejected = False
        self.last_nack_version: str | None = None
        self.last_nack_message: str | None = None
        # A request that must be answered even if nothing changed (fresh subscription).
        self.force = False
        # The client's state is unknown (fresh subscription or a NACKed response): the next
        # SotW response holds the whole subscribed set, even for EDS/RDS; the next delta one
        # all that differs from what was last ACKed.
        self.full = False
        # Delta: names Envoy subscribed to that still need an answer (resource or removal).
        self.unresolved: set[str] = set()
        # Caches, each (inputs by identity..., result):
        self._known_v: tuple[Mapping[str, Resource], str] | None = None
        self._acked_v: tuple[Mapping[str, Resource], str] | None = None
        # (acked, names this type's ACKed resources make Envoy request)
        self._required: tuple[Mapping[str, Resource], frozenset[str]] | None = None
        # (required names, self.names, whether the subscription covers them)
        self._covers: tuple[frozenset[str], frozenset[str], bool] | None = None
        # (view, known, names, wildcard, target, target version): see ``_Stream._plan``
        self._plan: (
            tuple[
                Mapping[str, Resource],
                Mapping[str, Resource],
                frozenset[str],
                bool,
                Mapping[str, Resource],
                str,
            ]
            | None
        ) = None

    def subscription(self) -> frozenset[str]:
        return self.names | {WILDCARD} if self.wildcard else self.names

    def wants(self, name: str) -> bool:
        return self.wildcard or name in self.names

    def set_known(self, known: Mapping[str, Resource], version: str | None = None) -> None:
        self.known = known
        if version is not None:
            self._known_v = (known, version)

    def known_version(self) -> str:
        """The version of ``known``, computed once per ``known``."""
        cached = self._known_v
        if cached is None or cached[0] is not self.known:
            cached = self._known_v = (self.known, mapping_version(self.known))
        return cached[1]

    def acked_content_version(self) -> str:
        """The version of ``acked``, computed once per ``acked``."""
        cached = self._acked_v
        if cached is None or cached[0] is not self.acked:
            known = self._known_v
            if known is not None and known[0] is self.acked:
                cached = known
            else:
                cached = (self.acked, mapping_version(self.acked))
            self._acked_v = cached
        return cached[1]

    def forget(self, names: Iterable[str] | None = None) -> None:
        """Drop ``names`` from ``known`` and from ``acked``; by default every name not
        subscribed by name. ``acked`` stays the very mapping ``known`` is when it was."""
        same = self.acked is self.known
        if names is None:
            self.set_known(_without(self.known, self.known.keys() - self.names))
            if not same:
                self.acked = _without(self.acked, self.acked.keys() - self.names)
        else:
            self.set_known(_without(self.known, names))
            if not same:
                self.acked = _without(self.acked, names)
        if same:
            self.acked = self.known

    def adopt(self, view: Mapping[str, Resource], version: str) -> None:
        """``known`` holds exactly ``view``'s content: keep the (shared) view instead, and
        what was derived from the old mapping (same names, same versions)."""
        if self.acked is self.known:
            required = self._required
            if required is not None and required[0] is self.acked:
                self._required = (view, required[1])
            self.acked = view
            self._acked_v = (view, version)
        self.set_known(view, version)


def _without(held: Mapping[str, Resource], names: Iterable[str]) -> Mapping[str, Resource]:
    """``held`` minus ``names``: ``held`` itself when none of them is in it, else a copy."""
    drop = {n for n in names if n in held}
    if not drop:
        return held
    return {n: r for n, r in held.items() if n not in drop}


# Diffs between two large frozen mappings (e.g. every sidecar's endpoints before and after a
# push), so that a thousand streams moving from one to the other diff it once.
_diffs: IdentityCache[tuple[tuple[str, ...], tuple[str, ...]]] = IdentityCache(max_entries=16)


def _diff(
    old: Mapping[str, Resource], new: Mapping[str, Resource]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(names in ``new`` that ``old`` lacks or holds at another version, names only in
    ``old``), each sorted."""
    if old is new:
        return (), ()
    remember = shared(old) and shared(new)
    if remember and (hit := _diffs.get(old, new)) is not None:
        return hit
    changed = []
    for name, res in new.items():
        had = old.get(name)
        if had is None or (had is not res and had.version != res.version):
            changed.append(name)
    changed.sort()
    removed = tuple(sorted(n for n in old if n not in new))
    out = (tuple(changed), removed)
    return _diffs.put(out, old, new) if remember else out
