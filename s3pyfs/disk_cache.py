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
  * The blocks live in `<base>/blocks`, where <base> is the mounting user's
    private directory (`use_cache=DIR/s3pyfs-<uid>`, statedir.py): 0700
    directories checked to be ours, 0600 files, every file opened relative to
    the directory's fd with O_NOFOLLOW (new ones with O_EXCL).  Only names the
    cache makes (<sha256>.blk, <sha256>.blk.tmp) are ever deleted; anything
    else found there is left alone and not used.
  * Block reads and stores run in disk threads (diskio.py; `ObjectBlocks.get`
    and `put` are async), never on the trio thread.  The index (`_lru`,
    `bytes`, counters) is guarded by `_mutex` (a threading.Lock) and changed
    only under it; a store reserves its bytes in the index before writing,
    so concurrent stores never overshoot the bounds, and one block is stored
    by one thread at a time (`_storing`).  File data is read and written
    outside the mutex.
  * `hydrations` (hydrate.py) is state of the trio thread, kept here because
    the cache is the one object every reader of the mount shares.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import os
import re
import stat
import threading

from . import diskio, statedir
from .statedir import Dir

log = logging.getLogger(__name__)

SUFFIX = ".blk"
BLOCKS = "blocks"
DEFAULT_FREE_FLOOR = 1024 * 1024 * 1024
DEFAULT_HYDRATE_MAX = 512 * 1024 * 1024
_BLOCK = re.compile(r"^[0-9a-f]{64}\.blk$")
_TEMP = re.compile(r"^[0-9a-f]{64}\.blk\.tmp$")
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class DiskCache:
    def __init__(self, directory: str | Dir, bucket: str, max_bytes: int | None = None,
                 min_free: int | None = None, wipe: bool = False, hydrate_max: int | None = None):
        """`directory` is a checked private Dir (the mount: statedir) or a path that is
        created (tests); the blocks go to its `blocks` subdirectory.  `hydrate_max`:
        objects up to this many bytes are downloaded whole once read at random
        (hydrate.py); default a quarter of `max_bytes`, or 512 MiB without one; 0: never."""
        if isinstance(directory, str):
            path = os.path.abspath(directory)
            os.makedirs(path, mode=0o700, exist_ok=True)
            parent = Dir(os.open(path, statedir.DIR_FLAGS), path)
            try:
                blocks = parent.sub(BLOCKS)
            finally:
                parent.close()
        else:
            blocks = directory.sub(BLOCKS)
        self.dir = blocks.path
        self.fd = blocks.fd
        self.bucket = bucket
        if wipe:
            for name in os.listdir(self.fd):
                if _BLOCK.match(name) or _TEMP.match(name):
                    _remove(name, self.fd)
        fs = os.statvfs(self.fd)
        self.max_bytes = max_bytes
        self.min_free = min_free if min_free is not None else min(DEFAULT_FREE_FLOOR,
                                                                  fs.f_blocks * fs.f_frsize // 20)
        self._lru: collections.OrderedDict[str, int] = collections.OrderedDict()
        self.bytes = 0
        self.hits = self.misses = self.evictions = 0
        self._mutex = threading.Lock()
        self._storing: set[str] = set()     # blocks being written by a thread now
        if hydrate_max is None:
            hydrate_max = max_bytes // 4 if max_bytes else DEFAULT_HYDRATE_MAX
        self.hydrate_max = hydrate_max
        self.hydrations: dict = {}          # (key, etag) -> hydrate.Hydration; trio thread only
        self._load()

    def _load(self) -> None:
        found = []
        for name in os.listdir(self.fd):
            if _TEMP.match(name):
                _remove(name, self.fd)        # a store cut short by a crash
                continue
            if not _BLOCK.match(name):
                continue                      # not ours: left alone, never served
            try:
                st = os.stat(name, dir_fd=self.fd, follow_symlinks=False)
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode):
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
        with self._mutex:
            if name not in self._lru or name in self._storing:
                self.misses += 1
                return None
        try:
            fd = os.open(name, _READ, dir_fd=self.fd)
            with os.fdopen(fd, "rb") as fh:
                data = fh.read(length + 1)
        except OSError:
            data = b""
        with self._mutex:
            if len(data) != length:
                if name not in self._storing:
                    self._evict(name)
                self.misses += 1
                return None
            if name in self._lru:
                self._lru.move_to_end(name)
            self.hits += 1
        return data

    def has(self, key: str, etag: str | None, block: int, index: int, length: int) -> bool:
        """Is the block stored, `length` bytes long?  (No file is opened.)"""
        if not etag:
            return False
        name = self._name(key, etag, block, index)
        with self._mutex:
            return self._lru.get(name) == length and name not in self._storing

    def open_block(self, key: str, etag: str | None, block: int, index: int, length: int) -> int | None:
        """A read-only fd of the stored block (`length` bytes long), or None.  The caller
        closes it; the block's bytes never change under it (an eviction only unlinks)."""
        if not etag:
            return None
        name = self._name(key, etag, block, index)
        with self._mutex:
            if self._lru.get(name) != length or name in self._storing:
                return None
            self._lru.move_to_end(name)
        try:
            fd = os.open(name, _READ, dir_fd=self.fd)
        except OSError:
            return None
        if os.fstat(fd).st_size != length:
            os.close(fd)
            return None
        try:        # a block stored before (another session) is read at random: into memory now
            os.posix_fadvise(fd, 0, length, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass
        return fd

    def put(self, key: str, etag: str | None, block: int, index: int, data: bytes) -> bool:
        """Store the block; True when it is in the cache afterwards (stored now or before)."""
        if not etag or not data:
            return False
        name = self._name(key, etag, block, index)
        size = len(data)
        with self._mutex:
            if name in self._storing:
                return False
            if name in self._lru:
                self._lru.move_to_end(name)
                return True
            if not self._make_room(size):
                return False
            self._storing.add(name)
            self.bytes += size                # reserved: concurrent stores see it
        temp = name + ".tmp"
        stored = False
        try:
            _remove(temp, self.fd)
            fd = os.open(temp, _NEW, 0o600, dir_fd=self.fd)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(temp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)
            stored = True
        except OSError as exc:
            log.warning("disk cache: cannot store a block (%s); reading from S3 instead", exc.strerror)
            _remove(temp, self.fd)
        finally:
            with self._mutex:
                self._storing.discard(name)
                if stored:
                    self._lru[name] = size
                else:
                    self.bytes -= size
        return stored

    def _make_room(self, size: int) -> bool:
        while self._lru and (self._over_size(size) or self._free() - size < self.min_free):
            self._evict(next(iter(self._lru)))
        return not self._over_size(size) and self._free() - size >= self.min_free

    def _over_size(self, size: int) -> bool:
        return self.max_bytes is not None and self.bytes + size > self.max_bytes

    def _free(self) -> int:
        fs = os.statvfs(self.fd)
        return fs.f_bavail * fs.f_frsize

    def _evict(self, name: str) -> None:
        size = self._lru.pop(name, 0)
        self.bytes -= size
        self.evictions += 1
        _remove(name, self.fd)

    def bind(self, key: str, etag: str | None) -> ObjectBlocks | None:
        return ObjectBlocks(self, key, etag) if etag else None

    def clear(self) -> None:
        with self._mutex:
            for name in list(self._lru):
                self._evict(name)


def _remove(name: str, dir_fd: int) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except OSError:
        pass


class ObjectBlocks:
    """The cache seen by the reader of one object version."""

    def __init__(self, cache: DiskCache, key: str, etag: str):
        self.cache, self.key, self.etag = cache, key, etag

    async def get(self, block: int, index: int, length: int) -> bytes | None:
        return await diskio.run(self.cache.get, self.key, self.etag, block, index, length)

    async def put(self, block: int, index: int, data: bytes) -> bool:
        return await diskio.run(self.cache.put, self.key, self.etag, block, index, data)

    async def has(self, block: int, index: int, length: int) -> bool:
        return await diskio.run(self.cache.has, self.key, self.etag, block, index, length)

    async def open_block(self, block: int, index: int, length: int) -> int | None:
        return await diskio.run(self.cache.open_block, self.key, self.etag, block, index, length)
