"""Failures stay contained: a piece of config that cannot be translated is reported and keeps
what it translated to last time (or is left out), while everything else is translated as usual.

Translation is split into pieces by what they depend on (a service's clusters, one
VirtualService's routes for one host); each piece runs under :func:`isolated`. A bug that one
unexpected resource trips therefore costs that resource, not every proxy's config.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Hashable
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

ResourceKey = tuple[str, str, str]
"""``(kind, namespace, name)`` of an applied resource."""


@dataclass(frozen=True)
class TranslationError:
    """One piece of config that could not be translated."""

    resources: tuple[ResourceKey, ...]
    """The applied resources the piece came from (empty for a service with no rule)."""
    part: str
    """What was being built, e.g. ``routes of VirtualService default/reviews for reviews:9080``."""
    message: str
    kept_last_good: bool
    """True when proxies keep the output of the last successful translation of this piece;
    False when the piece is left out (it never translated)."""

    def describe(self) -> str:
        """One line for people: what failed, why, and what proxies run instead."""
        outcome = "proxies keep its last good config" if self.kept_last_good else "left out"
        return f"{self.part}: {self.message} ({outcome})"


class LastGood:
    """The last successful output of each piece, by a key that stays the same when the piece's
    inputs change. Entries live as long as the resource or service they belong to.

    The control plane shares one between its push worker thread and the event loop (which
    translates for proxies that connect between pushes), so every access takes a lock.
    """

    def __init__(self) -> None:
        self._values: dict[Hashable, tuple[Hashable, Any]] = {}
        self._lock = threading.Lock()
        self._retained_for: Hashable = None

    def get(self, key: Hashable) -> Any | None:
        with self._lock:
            entry = self._values.get(key)
        return None if entry is None else entry[1]

    def put(self, key: Hashable, owner: Hashable, value: Any) -> None:
        with self._lock:
            self._values[key] = (owner, value)

    def retain(self, alive: Callable[[], Collection[Hashable]], generation: Hashable) -> None:
        """Forget the output of pieces whose owner (resource key or host) no longer exists.

        Owners change only when ``generation`` (a digest of the services and resources)
        does, so an endpoint-only push skips the walk over every entry.
        """
        if generation == self._retained_for:
            return
        owners = alive()
        with self._lock:
            for key in [k for k, (owner, _) in self._values.items() if owner not in owners]:
                del self._values[key]
            self._retained_for = generation

    def __len__(self) -> int:
        with self._lock:
            return len(self._values)


def isolated(
    errors: list[TranslationError],
    last_good: LastGood | None,
    key: Hashable,
    owner: Hashable,
    blame: Callable[[], tuple[ResourceKey, ...]],
    part: Callable[[], str],
    make: Callable[[], T],
    default: T,
) -> T:
    """``make()``; if it raises, record a :class:`TranslationError` and fall back to the last
    good output of ``key`` (or ``default``). ``blame`` and ``part`` are called only on failure,
    so the common path costs one ``try`` and one dictionary write."""
    try:
        value = make()
    except Exception as e:  # any bug in one piece must stay in that piece
        previous = last_good.get(key) if last_good is not None else None
        errors.append(
            TranslationError(
                resources=blame(),
                part=part(),
                message=f"{type(e).__name__}: {e}",
                kept_last_good=previous is not None,
            )
        )
        result: T = previous if previous is not None else default
        return result
    if last_good is not None:
        last_good.put(key, owner, value)
    return value
