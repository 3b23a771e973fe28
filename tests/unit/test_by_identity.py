"""Results remembered by the identity of the immutable mappings they were derived from
(versions, diffs and response blocks of what a thousand sidecars share)."""

from __future__ import annotations

from types import MappingProxyType

from tsunagi.xds.by_identity import SHARED_MIN_SIZE, IdentityCache, shared


def test_only_large_frozen_mappings_are_shared() -> None:
    big = {str(i): i for i in range(SHARED_MIN_SIZE)}
    assert shared(MappingProxyType(big))
    assert not shared(big)  # a dict may change under the cache
    assert not shared(MappingProxyType(dict(list(big.items())[:-1])))  # cheap anyway


def test_a_value_is_found_by_the_very_objects_and_tag_it_was_made_from() -> None:
    cache: IdentityCache[str] = IdentityCache(max_entries=4)
    a, b, equal_to_a = [1, 2], [1, 2], [1, 2]
    cache.put("a,b", a, b)
    cache.put("a,b delta", a, b, tag=True)
    assert cache.get(a, b) == "a,b"
    assert cache.get(a, b, tag=True) == "a,b delta"
    assert cache.get(equal_to_a, b) is None  # equal is not the same
    assert cache.get(b, a) is None


def test_the_least_recently_used_go_first_past_the_entry_bound() -> None:
    cache: IdentityCache[int] = IdentityCache(max_entries=2)
    first, second, third = object(), object(), object()
    cache.put(1, first)
    cache.put(2, second)
    assert cache.get(first) == 1  # now the most recently used
    cache.put(3, third)
    assert (cache.get(first), cache.get(second), cache.get(third)) == (1, None, 3)
    assert len(cache) == 2


def test_past_the_weight_bound_the_oldest_go_and_the_newest_always_stays() -> None:
    """Each entry holds its sources (an older push's resources) alive: bounded by bytes."""
    cache: IdentityCache[bytes] = IdentityCache(max_entries=10, max_weight=10, weight=len)
    sources = [object() for _ in range(3)]
    cache.put(b"x" * 6, sources[0])
    cache.put(b"y" * 6, sources[1])
    assert cache.get(sources[0]) is None and cache.weight == 6
    cache.put(b"z" * 50, sources[2])  # heavier than the bound on its own: kept anyway
    assert cache.get(sources[2]) == b"z" * 50 and len(cache) == 1 and cache.weight == 50
    cache.put(b"w", sources[2])  # replacing an entry counts its weight once
    assert cache.weight == 1
