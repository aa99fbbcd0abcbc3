"""Hydration: a whole object downloaded into the disk cache, in the background,
once it is read at random.

Responsibility: random small reads of an object cost one GET each (~0.1-1 ms
of CPU and a round trip); s3fs-fuse answers them from a local copy.  When a
reader (reader.py) sees random access to an object no larger than the disk
cache's `hydrate_max` (`-o hydrate_max=`), it starts one `Hydration` of that
object version: its parts (the reader's 8 MiB parts) are fetched in order,
pinned to the ETag, `parallel` at a time, and stored as disk-cache blocks;
reads are answered from the cache for every part already there (`covers`,
`read`), from S3 as before for the others.
Invariants:
  * Reads of hydrated parts go to fds opened once per part: on the trio
    thread only with RWF_NOWAIT (page cache, never a disk wait), else in a
    disk thread; the fds are closed when the last reader leaves.
  * One hydration per (key, ETag) per mount at a time (`DiskCache.hydrations`,
    trio thread only, entries removed when the last reader leaves); a part counts as there (`done`) only after the cache stored
    it, and a cache read that misses anyway (evicted) answers None, so the
    caller goes to S3: hydration never serves bytes it does not hold.
  * Part memory comes from the mount's budget (`acquire`: the background
    waits for room, readers never wait for it) and is given back once stored.
  * Runs in the mount's background nursery under its own cancel scope; the
    last reader of the object that leaves cancels it (`release`).  A failed
    GET ends the hydration quietly (logged at debug); reads go on from S3.
  * Objects above the limit are never hydrated, so their random reads fetch
    exactly the bytes asked for (reader.py).
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Awaitable, Callable

import trio

from . import diskio
from .budget import IN_FLIGHT, MemoryBudget
from .concurrency import run_all
from .errors import FSError

_NOWAIT = getattr(os, "RWF_NOWAIT", 0)

log = logging.getLogger(__name__)

Get = Callable[[int, int], Awaitable[bytes | bytearray]]


class Hydration:
    def __init__(self, store, size: int, part: int) -> None:
        self.store = store              # disk_cache.ObjectBlocks of the object version
        self.size = size
        self.part = part
        self.done: set[int] = set()     # parts stored in the cache
        self.scope = trio.CancelScope()
        self.users = 0
        self.finished = False
        self.fetched = 0                # bytes fetched from S3 by this hydration
        self._registry: dict = {}
        self._ident: tuple = ()
        self._fds: dict[int, int] = {}   # part -> open fd of its cache file (read with pread)
        self.closed = False
        self._nowait = bool(_NOWAIT)

    @classmethod
    def join(cls, store, size: int, part: int, spawn, get: Get, budget: MemoryBudget,
             parallel: int) -> Hydration:
        """The object's hydration, started now if none runs; the caller is a user of it
        until it calls `release`."""
        registry = store.cache.hydrations
        ident = (store.key, store.etag)
        hydration = registry.get(ident)
        if hydration is None:
            hydration = registry[ident] = cls(store, size, part)
            hydration._registry, hydration._ident = registry, ident
            spawn(hydration._run, get, budget, parallel)
        hydration.users += 1
        return hydration

    def release(self) -> None:
        """A reader leaves; the last one stops the download and forgets the state (a
        later hydration of the same version finds the stored parts in the cache)."""
        self.users -= 1
        if self.users <= 0:
            self.scope.cancel()
            self._forget()
            self.closed = True
            fds, self._fds = self._fds, {}
            self.done.clear()
            for fd in fds.values():
                os.close(fd)            # no disk wait: closing a read-only fd does not write

    def _forget(self) -> None:
        if self._registry.get(self._ident) is self:
            del self._registry[self._ident]

    def _length(self, index: int) -> int:
        return min(self.part, self.size - index * self.part)

    async def _run(self, get: Get, budget: MemoryBudget, parallel: int) -> None:
        count = (self.size + self.part - 1) // self.part

        async def one(index: int) -> None:
            length = self._length(index)
            if not await self.store.has(self.part, index, length):
                lo = index * self.part
                async with budget.held(IN_FLIGHT * length):
                    data = await get(lo, lo + length)
                    self.fetched += len(data)
                    if not await self.store.put(self.part, index, data):
                        return
            fd = await self.store.open_block(self.part, index, length)
            if fd is None:
                return
            if self.closed:
                os.close(fd)
                return
            self._fds[index] = fd
            self.done.add(index)
        try:
            with self.scope:
                await run_all((functools.partial(one, i) for i in range(count)), parallel)
                self.finished = True
        except FSError as exc:
            log.debug("hydration of %s stopped: %s", self.store.key, exc)
            self._forget()              # a later random reader may start again

    def covers(self, offset: int, end: int) -> bool:
        return all(i in self.done for i in range(offset // self.part, (end - 1) // self.part + 1))

    async def read(self, offset: int, end: int) -> bytearray | None:
        """Bytes [offset, end) from the cached parts, or None when one is missing now.

        Read from the part files' open fds: first on this thread with RWF_NOWAIT,
        which answers only from the page cache and never waits for the disk (a 4 KiB
        read costs ~1 us there, a trip to a disk thread ~100 us), else in a disk
        thread.  A file evicted meanwhile still holds the same bytes (same version)."""
        out = bytearray(end - offset)
        view = memoryview(out)
        for index in range(offset // self.part, (end - 1) // self.part + 1):
            fd = self._fds.get(index)
            if fd is None:
                return None
            lo = index * self.part
            a, b = max(offset, lo), min(end, lo + self.part)
            piece = view[a - offset:b - offset]
            n = -1
            if self._nowait:
                try:
                    n = os.preadv(fd, [piece], a - lo, _NOWAIT)
                except BlockingIOError:
                    n = -1
                except OSError:        # RWF_NOWAIT not supported here: threads from now on
                    self._nowait = False
            if n != b - a:
                n = await diskio.run(os.preadv, fd, [piece], a - lo)
                if self.closed:
                    return None
            if n != b - a:
                return None
        return out
