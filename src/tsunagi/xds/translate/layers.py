"""A namespace's view of the shared clusters or endpoints: the same mapping, with the entries
of a few hosts replaced (their DestinationRule differs there) or hidden (not exported there).

Copying the shared mapping per namespace would cost every namespace the whole mesh; this
keeps one shared mapping and a small layer per namespace that needs one.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from tsunagi.xds.resources import Resource, layered_version


def host_of(name: str) -> str:
    """The host of an outbound cluster name (``outbound|port|subset|host``); "" otherwise."""
    parts = name.split("|", 3)
    return parts[3] if len(parts) == 4 and parts[0] == "outbound" else ""


class Layered(Mapping[str, Resource]):
    """``base`` without the entries of ``hosts``, plus ``extra`` (their replacements)."""

    __slots__ = ("_base", "_extra", "_hosts", "_len")

    def __init__(
        self, base: Mapping[str, Resource], extra: Mapping[str, Resource], hosts: frozenset[str]
    ) -> None:
        self._base, self._extra, self._hosts = base, extra, hosts
        self._len = -1  # counted when first asked: counting walks the whole shared mapping

    def _hidden(self, name: str) -> bool:
        return name not in self._extra and host_of(name) in self._hosts

    def __getitem__(self, name: str) -> Resource:
        if name in self._extra:
            return self._extra[name]
        if host_of(name) in self._hosts:
            raise KeyError(name)
        return self._base[name]

    def __iter__(self) -> Iterator[str]:
        yield from (n for n in self._base if not self._hidden(n) and n not in self._extra)
        yield from self._extra

    def __len__(self) -> int:
        if self._len < 0:
            self._len = sum(1 for _ in self)
        return self._len

    def layered_version(self) -> str:
        """The version, without walking the shared mapping (see :func:`layered_version`)."""
        return layered_version(self._base, self._extra, self._hosts)
