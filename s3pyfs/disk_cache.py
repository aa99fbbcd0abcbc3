"""Local disk cache of object data (`-o use_cache=DIR`), shared by all handles.

Responsibility: keep blocks of objects read from S3 in files under DIR so that
re-reads, also after a remount, cost no request.  A block is identified by
(bucket, key, ETag, block size, block index); the file name is a SHA-256 of
that identity, so no key can name a path outside DIR, and a changed object
(new ETag) never serves old bytes: stale blocks are simply never asked for
again and age out.
Invariants:
  * Bytes on disk never exceed `max_bytes` (`cache_size=` MiB; default: no
    limit but the free-space floor) and the cache's filesystem keeps at least
    `min_free` bytes free (`ensure_diskfree=` MiB, default 1 GiB or 5%): a
    store that would cross either bound evicts least recently used blocks
    first, or is skipped.
  * A block file is written under a temporary name and renamed into place, so
    a crash leaves whole blocks or none; files that do not parse are removed
    at start.
  * The in-memory LRU index is rebuilt from the directory at start (by access
    time), so the cache survives a remount.
  * Only the trio thread calls in; block I/O is synchronous and small (<= 8 MiB).
"""

from __future__ import annotations

import collections
import hashlib
import logging
import os
import shutil

log = logging.getLogger(__name__)

SUFFIX = ".blk"
DEFAULT_FREE_FLOOR = 1024 * 1024 * 1024


class DiskCache:
    def __init__(self, directory: str, bucket: str, max_bytes: int | None = None, min_free: int | None = None,
                 wipe: bool = False):
        self.dir = os.path.join(os.path.abspath(directory), "blocks")
        self.bucket = bucket
        if wipe:
            shutil.rmtree(self.dir, ignore_errors=True)
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        fs = os.statvfs(self.dir)
        self.max_bytes = max_bytes
        self.min_free = min_free if min_free is not None else min(DEFAULT_FREE_FLOOR,
                                                                  fs.f_blocks * fs.f_frsize // 20)
        self._lru: collections.OrderedDict[str, int] = collections.OrderedDict()
        self.bytes = 0
        self.hits = self.misses = self.evictions = 0
        self._load()

    def _load(self) -> None:
        found = []
        for name in os.listdir(self.dir):
            path = os.path.join(self.dir, name)
            if not name.endswith(SUFFIX) or len(name) != 64 + len(SUFFIX):
                _remove(path)                # temporary or foreign file
                continue
            try:
                st = os.stat(path)
            except OSError:
                continue
            found.append((st.st_atime, name, st.st_size))
        for _atime, name, size in sorted(found):
            self._lru[name] = size
            self.bytes += size

    def _name(self, key: str, etag: str, block: int, index: int) -> str:
        ident = f"{self.bucket}\0{key}\0{etag}\0{block}\0{index}".encode("utf-8", "surrogateescape")
        return hashlib.sha256(ident).hexdigest() + SUFFIX

    def get(self, key: str, etag: str | None, block: int, index: int, length: int) -> bytes | None:
        """The cached block, if present and exactly `length` bytes long."""
        if not etag:
            return None
        name = self._name(key, etag, block, index)
        if name not in self._lru:
            self.misses += 1
            return None
        try:
            with open(os.path.join(self.dir, name), "rb") as fh:
                data = fh.read(length + 1)
        except OSError:
            data = b""
        if len(data) != length:
            self._evict(name)
            self.misses += 1
            return None
        self._lru.move_to_end(name)
        self.hits += 1
        return data

    def put(self, key: str, etag: str | None, block: int, index: int, data: bytes) -> None:
        if not etag or not data:
            return
        name = self._name(key, etag, block, index)
        if name in self._lru:
            self._lru.move_to_end(name)
            return
        if not self._make_room(len(data)):
            return
        path = os.path.join(self.dir, name)
        temp = path + ".tmp"
        try:
            with open(temp, "wb") as fh:
                fh.write(data)
            os.replace(temp, path)
        except OSError as exc:
            log.warning("disk cache: cannot store a block (%s); reading from S3 instead", exc.strerror)
            _remove(temp)
            return
        self._lru[name] = len(data)
        self.bytes += len(data)

    def _make_room(self, size: int) -> bool:
        while self._lru and (self._over_size(size) or self._free() - size < self.min_free):
            self._evict(next(iter(self._lru)))
        return not self._over_size(size) and self._free() - size >= self.min_free

    def _over_size(self, size: int) -> bool:
        return self.max_bytes is not None and self.bytes + size > self.max_bytes

    def _free(self) -> int:
        fs = os.statvfs(self.dir)
        return fs.f_bavail * fs.f_frsize

    def _evict(self, name: str) -> None:
        size = self._lru.pop(name, 0)
        self.bytes -= size
        self.evictions += 1
        _remove(os.path.join(self.dir, name))

    def bind(self, key: str, etag: str | None) -> "ObjectBlocks | None":
        return ObjectBlocks(self, key, etag) if etag else None

    def clear(self) -> None:
        for name in list(self._lru):
            self._evict(name)


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


class ObjectBlocks:
    """The cache seen by the reader of one object version."""

    def __init__(self, cache: DiskCache, key: str, etag: str):
        self.cache, self.key, self.etag = cache, key, etag

    def get(self, block: int, index: int, length: int) -> bytes | None:
        return self.cache.get(self.key, self.etag, block, index, length)

    def put(self, block: int, index: int, data: bytes) -> None:
        self.cache.put(self.key, self.etag, block, index, data)
