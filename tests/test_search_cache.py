"""The hot-query cache: LRU order, TTL expiry, generation invalidation, copies."""

from __future__ import annotations

from medsearch.search_cache import TTLCache, cache_key, cache_for


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_hit_and_miss_counts():
    c = TTLCache(4, 60)
    assert c.get("a") is None
    c.put("a", {"x": 1})
    assert c.get("a") == {"x": 1}
    assert (c.hits, c.misses) == (1, 1)


def test_lru_evicts_least_recently_used():
    c = TTLCache(2, 60)
    c.put("a", 1)
    c.put("b", 2)
    c.get("a")  # a is now the most recent
    c.put("c", 3)
    assert c.get("b") is None and c.get("a") == 1 and c.get("c") == 3


def test_ttl_expires_entries():
    clock = Clock()
    c = TTLCache(4, 10, clock=clock)
    c.put("a", 1)
    clock.now = 9.9
    assert c.get("a") == 1
    clock.now = 10.5
    assert c.get("a") is None and len(c) == 0


def test_generation_change_invalidates_everything():
    c = TTLCache(4, 60)
    c.put("a", 1, generation=1)
    c.put("b", 2, generation=1)
    assert c.get("a", generation=1) == 1
    assert c.get("b", generation=2) is None
    assert c.get("a", generation=2) is None and len(c) == 0


def test_values_are_copies():
    c = TTLCache(4, 60)
    value = {"results": [1, 2]}
    c.put("a", value)
    value["results"].append(3)
    got = c.get("a")
    got["results"].append(4)
    assert c.get("a") == {"results": [1, 2]}


def test_size_zero_disables():
    c = TTLCache(0, 60)
    c.put("a", 1)
    assert c.get("a") is None


def test_key_ignores_dict_order():
    assert cache_key("q", {"a": 1, "b": 2}) == cache_key("q", {"b": 2, "a": 1})
    assert cache_key("q", {"a": 1}) != cache_key("q", {"a": 2})


def test_cache_for_follows_settings(sqlite_instance):
    c = cache_for(sqlite_instance)
    assert c.size == sqlite_instance.settings.search_cache_size
    assert c.ttl == sqlite_instance.settings.search_cache_ttl_seconds
    assert cache_for(sqlite_instance) is c


def test_row_cache_is_exact_per_generation():
    from medsearch.search_cache import RowCache

    rc = RowCache(size=2)
    found, missing = rc.lookup([1, 2], generation=1)
    assert found == {} and missing == [1, 2]
    rc.store({1: {"series": "a"}, 2: {"series": "b"}}, generation=1)
    found, missing = rc.lookup([1, 2, 3], generation=1)
    assert set(found) == {1, 2} and missing == [3]
    rc.store({3: {"series": "c"}}, generation=1)  # size 2: the oldest row goes
    assert rc.lookup([1], generation=1)[1] == [1]
    rc.store({9: {"series": "z"}}, generation=0)  # a stale writer's rows are not kept
    assert rc.lookup([9], generation=1)[1] == [9]
    assert rc.lookup([3], generation=2) == ({}, [3])  # the index moved on: everything is fetched again
