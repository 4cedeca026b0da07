"""The hot-query cache: LRU with a time-to-live, invalidated when the index changes.

Radiologists repeat queries ("RLL nodule", "无胸腔积液"); a repeated query is
answered from memory.  Keys include everything that changes the answer: the
query text, k, the filters, the user's allowed sites and the restricted-patient
policy.  Every entry is stamped with the index *generation* (the index bumps it
on each add or remove) and dropped when the generation moves on, so an
erasure or a newly ingested study is never hidden behind a stale answer.

The cache holds results as pseudonyms only, in process memory; it is never
written to disk.  A cache hit is still audited by the pipeline.
"""

from __future__ import annotations

import copy
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable


def cache_key(*parts) -> str:
    """A stable key from JSON-serialisable parts (dict order does not matter)."""
    return json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str, separators=(",", ":"))


class TTLCache:
    """Thread-safe LRU cache with a per-entry TTL and a generation stamp.

    Args:
        size: maximum number of entries (0 disables the cache).
        ttl_seconds: lifetime of an entry.
        clock: monotonic clock (a parameter so tests can move time).
    """

    def __init__(self, size: int, ttl_seconds: float, clock: Callable[[], float] = time.monotonic):
        self.size = max(0, int(size))
        self.ttl = float(ttl_seconds)
        self.clock = clock
        self._data: OrderedDict[Hashable, tuple[float, object, object]] = OrderedDict()
        self._lock = threading.Lock()
        self._generation: object = None
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._data)

    def _sync(self, generation) -> None:
        if generation != self._generation:
            self._data.clear()
            self._generation = generation

    def get(self, key: Hashable, generation=None):
        """The cached value (a deep copy), or None when absent, expired or of an older generation."""
        with self._lock:
            self._sync(generation)
            item = self._data.get(key)
            if item is None or self.clock() - item[0] > self.ttl:
                if item is not None:
                    del self._data[key]
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
            # a copy: callers annotate results (took_ms, reveal) and must not alter the cached answer
            return copy.deepcopy(item[1])

    def put(self, key: Hashable, value, generation=None) -> None:
        if self.size == 0:
            return
        with self._lock:
            self._sync(generation)
            self._data[key] = (self.clock(), copy.deepcopy(value), generation)
            self._data.move_to_end(key)
            while len(self._data) > self.size:
                self._data.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()


_caches: dict[str, TTLCache] = {}
_caches_lock = threading.Lock()


def cache_for(inst) -> TTLCache:
    """The process-wide cache of one instance (by home), sized from its settings."""
    key = str(inst.home)
    with _caches_lock:
        cache = _caches.get(key)
        s = inst.settings
        if cache is None or cache.size != s.search_cache_size or cache.ttl != s.search_cache_ttl_seconds:
            cache = _caches[key] = TTLCache(s.search_cache_size, s.search_cache_ttl_seconds)
        return cache


def invalidate(inst) -> None:
    """Drop every cached answer and row of ``inst`` (after a change the index generation does not show)."""
    with _caches_lock:
        cache = _caches.get(str(inst.home))
        rows = _row_caches.get(str(inst.home))
    if cache is not None:
        cache.clear()
    if rows is not None:
        rows.lookup([], object())  # a new generation empties it


class RowCache:
    """Candidate rows (metadata and predicted findings) by vector id, stamped with the index generation.

    A row changes only when its series is re-encoded, erased or re-ingested, and each of those changes the
    index, so the generation stamp keeps the cache exact; it is cleared as soon as the index moves on.
    Rows hold pseudonyms and predicted attributes only, in process memory.

    Args:
        size: most rows kept (oldest dropped first).
    """

    def __init__(self, size: int = 200_000):
        self.size = size
        self._rows: OrderedDict[int, dict] = OrderedDict()
        self._generation: object = None
        self._lock = threading.Lock()

    def lookup(self, ids, generation) -> tuple[dict[int, dict], list[int]]:
        """(cached rows, ids still to fetch) — the rows are shared: callers must not modify them."""
        with self._lock:
            if generation != self._generation:
                self._rows.clear()
                self._generation = generation
            found, missing = {}, []
            for i in ids:
                row = self._rows.get(i)
                if row is None:
                    missing.append(i)
                else:
                    found[i] = row
            return found, missing

    def store(self, rows: dict[int, dict], generation) -> None:
        with self._lock:
            if generation != self._generation:
                return
            self._rows.update(rows)
            while len(self._rows) > self.size:
                self._rows.popitem(last=False)


_row_caches: dict[str, RowCache] = {}


def rows_for(inst) -> RowCache:
    with _caches_lock:
        return _row_caches.setdefault(str(inst.home), RowCache())
