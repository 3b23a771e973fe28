"""Memo key parts that stand for parsed resources by identity, not by content."""

from __future__ import annotations

from collections.abc import Iterable


class Same:
    """One object in a memo key, equal only to itself: the control plane re-parses a stored
    document only when its revision changes (``controlplane/world_builder.py``), so the
    same object means the same revision, and comparing it costs nothing, unlike a
    serialization of its spec. It holds the object, so its id is not reused while a memo
    entry keyed by it lives."""

    __slots__ = ("obj",)

    def __init__(self, obj: object) -> None:
        self.obj = obj

    def __hash__(self) -> int:
        return id(self.obj)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Same) and other.obj is self.obj

    def __repr__(self) -> str:
        return f"Same({self.obj!r})"


def same_all(objects: Iterable[object]) -> tuple[Same, ...]:
    """:class:`Same` of each of ``objects``, in order."""
    return tuple(Same(o) for o in objects)
