"""Short-lived knowledge about keys: negative lookups and directory listings.

Responsibility: spare S3 round trips for names looked up again and again
(shells and build tools probe many names that do not exist) and let a lookup
after `readdir` skip the probing HEAD/LIST sequence.
Invariants:
  * Entries expire after `ttl` seconds (the `stat_cache_expire=` option) and the
    caches hold at most `maxsize` entries each (cachetools' TTLCache, LRU past that).
  * Every local change of a name calls `invalidate(key)` before it returns, so
    this mount never answers from a stale entry about its own changes.
"""

from __future__ import annotations

import dataclasses

from cachetools import TTLCache


@dataclasses.dataclass(frozen=True)
class ListedEntry:
    is_dir: bool
    size: int = 0
    etag: str | None = None
    last_modified_ns: int = 0


class StatCache:
    def __init__(self, ttl: float, maxsize: int):
        self.enabled = ttl > 0 and maxsize > 0
        size = max(1, maxsize)
        self._missing: TTLCache = TTLCache(size, max(ttl, 1e-9))
        self._listed: TTLCache = TTLCache(max(1, size // 100), max(ttl, 1e-9))
        self.hits = 0
        self.misses = 0

    def is_missing(self, key: str) -> bool:
        found = self.enabled and key in self._missing
        if found:
            self.hits += 1
        return found

    def add_missing(self, key: str) -> None:
        if self.enabled:
            self._missing[key] = True

    def remember_listing(self, dir_prefix: str, entries: dict[str, ListedEntry]) -> None:
        if self.enabled:
            self._listed[dir_prefix] = entries

    def listing(self, dir_prefix: str) -> dict[str, ListedEntry] | None:
        """The cached listing of a directory (name -> entry), or None."""
        entries = self._listed.get(dir_prefix) if self.enabled else None
        if entries is None:
            self.misses += 1
        else:
            self.hits += 1
        return entries

    def invalidate(self, key: str) -> None:
        """Forget what is known of `key`, of `key/` and of the listing holding it."""
        self._missing.pop(key, None)
        self._missing.pop(key.rstrip("/"), None)
        parent = key.rstrip("/").rpartition("/")[0]
        self._listed.pop(parent + "/" if parent else "", None)
        self._listed.pop(key.rstrip("/") + "/", None)

    def invalidate_tree(self, prefix: str) -> None:
        self.invalidate(prefix)
        for cache in (self._missing, self._listed):
            for key in [k for k in list(cache.keys()) if k.startswith(prefix)]:
                cache.pop(key, None)

    def clear(self) -> None:
        self._missing.clear()
        self._listed.clear()
