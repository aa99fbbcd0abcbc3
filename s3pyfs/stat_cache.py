"""Short-lived knowledge about keys: negative lookups and directory listings.

Responsibility: spare S3 round trips for names looked up again and again
(shells and build tools probe many names that do not exist) and let a lookup
after `readdir` skip the probing HEAD/LIST sequence.
Invariants:
  * Entries expire after `ttl` seconds (the `negative_cache_expire=` option, short
    because it decides how soon names created by other clients appear) and the
    caches hold at most `maxsize` entries each (cachetools' TTLCache, LRU past that).
  * Every local change of a name updates the caches before it returns
    (`note_added`, `note_removed`, `invalidate_tree`), so this mount never
    answers from a stale entry about its own changes; a cached listing stays
    complete for names created or removed here.
  * Changes made by other clients become visible when entries expire.
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING

from cachetools import TTLCache

if TYPE_CHECKING:
    import trio


@dataclasses.dataclass(frozen=True)
class ListedEntry:
    is_dir: bool
    size: int = 0
    etag: str | None = None
    last_modified_ns: int = 0


class StatCache:
    """`ttl`: how long a listing may serve readdir; `negative_ttl`: how long an
    absent name (or a listing used to answer "absent") is believed."""

    def __init__(self, ttl: float, maxsize: int, negative_ttl: float | None = None):
        self.ttl = ttl
        self.negative_ttl = ttl if negative_ttl is None else min(negative_ttl, ttl)
        self.enabled = self.negative_ttl > 0 and maxsize > 0
        size = max(1, maxsize)
        self._missing: TTLCache[str, bool] = TTLCache(size, max(self.negative_ttl, 1e-9))
        self._listed: TTLCache[str, tuple[float, dict[str, ListedEntry], bool]] = TTLCache(max(1, size // 100), max(ttl, 1e-9))
        self._large: TTLCache[str, bool] = TTLCache(max(1, size // 100), max(self.negative_ttl, 1e-9))
        self._walked: TTLCache[str, bool] = TTLCache(max(1, size // 100), max(ttl, 1e-9))  # prefetched dirs
        self.changes = 0          # local namespace changes, to spot a listing that raced one
        self.listing_in_flight: dict[str, trio.Event] = {}   # dir prefix -> trio.Event of a LIST under way
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

    def remember_listing(self, dir_prefix: str, entries: dict[str, ListedEntry], primed: bool = False) -> None:
        """`primed`: the listing came from a recursive listing of an ancestor (namespace.list_tree),
        not from reading this directory; a readdir served from it is part of a tree walk."""
        if self.enabled:
            self._listed[dir_prefix] = (time.monotonic(), entries, primed)

    def was_primed(self, dir_prefix: str) -> bool:
        """The cached listing of `dir_prefix` came from an ancestor's recursive listing."""
        found = self._listed.get(dir_prefix) if self.enabled else None
        return found is not None and found[2]

    def listing(self, dir_prefix: str, max_age: float | None = None) -> dict[str, ListedEntry] | None:
        """The cached listing of a directory (name -> entry) not older than `max_age`
        (default: the negative TTL, since it may answer "absent"), or None."""
        found = self.timed_listing(dir_prefix, max_age)
        return None if found is None else found[1]

    def timed_listing(self, dir_prefix: str, max_age: float | None = None) -> tuple[float, dict[str, ListedEntry]] | None:
        """Like `listing`, with the monotonic time the listing was taken."""
        found = self._listed.get(dir_prefix) if self.enabled else None
        limit = self.negative_ttl if max_age is None else max_age
        if found is None or time.monotonic() - found[0] > limit:
            self.misses += 1
            return None
        self.hits += 1
        return found[0], found[1]

    def note_added(self, dir_prefix: str, name: str, entry: ListedEntry) -> None:
        """A name was created here: keep a cached listing of its directory complete."""
        self.changes += 1
        self._missing.pop(dir_prefix + name, None)
        found = self._listed.get(dir_prefix)
        if found is not None:
            found[1][name] = entry

    def note_removed(self, dir_prefix: str, name: str) -> None:
        """A name was removed here: drop it from the cached listing, remember it is gone."""
        self.changes += 1
        found = self._listed.get(dir_prefix)
        if found is not None:
            found[1].pop(name, None)
        self.add_missing(dir_prefix + name)

    def note_large(self, dir_prefix: str) -> None:
        """The directory has more names than one listing page: do not list it per lookup."""
        if self.enabled:
            self._large[dir_prefix] = True

    def is_large(self, dir_prefix: str) -> bool:
        return dir_prefix in self._large

    def claim_prefetch(self, dir_prefix: str) -> bool:
        """True once per `ttl` for a directory: its files' headers are to be fetched ahead
        of a tree walk now (filesystem.py); False if that was done already."""
        if not self.enabled or dir_prefix in self._walked:
            return False
        self._walked[dir_prefix] = True
        return True

    def invalidate_tree(self, prefix: str) -> None:
        """Forget everything below the directory `prefix` (ends with '/')."""
        self.changes += 1
        self._missing.pop(prefix.rstrip("/"), None)
        for cache in (self._missing, self._listed, self._large, self._walked):
            for key in [k for k in list(cache.keys()) if k.startswith(prefix)]:
                cache.pop(key, None)

    def clear(self) -> None:
        self._missing.clear()
        self._listed.clear()
        self._large.clear()
        self._walked.clear()
