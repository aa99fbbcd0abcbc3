"""Read path for objects with no local data: ranged GETs with sequential prefetch.

Responsibility: answer `read(offset, size)` of one open handle from S3 with
few, large, overlapping requests.
  * A first or random read fetches exactly what it asks for (random 4 KiB
    reads cost 4 KiB, not a block); small objects (<= 1 MiB) are read whole.
  * A read continuing the previous one gets the 1 MiB-aligned block(s) holding
    it, kept as a buffer.
  * With a disk cache (`use_cache=`), blocks (1 MiB and 8 MiB) are looked up
    there first and stored after a fetch, keyed by key and ETag; up to
    `STORES_BEHIND` stores per reader run in the background (their buffers
    outside the budget, at most 2 parts per reader), more are awaited.
  * Once a reader has gone sequentially through `SEQUENTIAL_AFTER` bytes, the
    object is read in aligned parts of `part` bytes (8 MiB) fetched in the
    background ahead of the reader: two parts ahead at first, doubling per part
    consumed, up to `max_ahead` (the read-ahead window), with at most
    `parallel` GETs in flight.  One part behind the reader is kept.
  * Part memory comes from the mount's `budget.MemoryBudget`.  A GET body
    exists twice while it is received (aiohttp's chunks, then the joined
    bytes), so a fetch is charged `IN_FLIGHT` times its size until it
    arrives, then once while kept.  Read-ahead parts are taken only when
    they fit (`try_acquire`), so the window shrinks under pressure and grows
    back when memory frees.  Under pressure (the budget has no room for one
    more part) a reader keeps no part behind it and, when the part it needs
    is not there, reads 1 MiB blocks instead (reserved: always granted, so a
    reader always progresses, and never waits for memory while it holds
    parts).  The parts a read needs when there is room are reserved too.
    A first/random/small read waits for its bytes (`acquire`) while holding
    no parts.
  * A read away from the parts (a seek) drops them and starts over.  A read
    up to `LATE_SPAN` behind the streaming front is not a seek: the kernel
    sends the requests of one read-ahead window together and they can arrive
    out of order (seen with read_ahead_kb of 4-8 MiB); such a read is answered
    from the parts still kept, else fetched exactly, and changes nothing of
    the stream (front, window, parts).
  * With a disk cache, `HYDRATE_AFTER` random reads of an object no larger
    than `hydrate_max` start its hydration (hydrate.py): the whole object is
    fetched into the cache in the background, and reads of parts already
    there are answered from the cache.  Larger objects: reads fetch exactly
    what they ask for, as without a cache.
  * Given the object's `etag` (the version the handle saw at open), every
    fetch is pinned to it: `fetch(start, end, etag)`, which fails (EIO) when
    the object was replaced meanwhile instead of mixing two versions.
  * Answers are memoryview slices of the part or block buffer (bytearrays
    received straight from the socket by s3get.py), joined only when a read
    spans two parts: one user-space copy per byte on a cold sequential read.
Invariants:
  * Bytes handed to the caller are exactly what was asked for: a fetch that
    comes back short is an error, never a short or padded read.
  * Memory per handle is bounded by (max_ahead + 2) * part, and all handles
    together by the budget (plus at most the parts of reads in progress).
    Every part in `_parts` holds `held` bytes of the budget, given back
    exactly once when it leaves `_parts` (`_discard`).
  * Prefetch tasks run in the filesystem's background nursery under this
    reader's cancel scopes; `close()` cancels them.  Without a nursery (core
    tests) parts are fetched in the foreground, same results.
  * Bookkeeping (`_parts`) changes only between awaits; a part is either
    pending (event not set), filled (data) or failed (error re-raised to the
    reader that needs it).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

from . import buffers
from .budget import IN_FLIGHT, MemoryBudget
from .errors import FSError, RemoteIOError
from .hydrate import Hydration

Data = bytes | bytearray | memoryview
Fetch = Callable[..., Awaitable[bytes | bytearray]]      # fetch(start, end) or, with an etag, fetch(start, end, etag)
Spawn = Callable[..., None]

MIN_WINDOW = 1024 * 1024
SEQUENTIAL_AFTER = 1024 * 1024
HYDRATE_AFTER = 3              # random reads (after the first read) that start a hydration
HYDRATE_PARALLEL = 2           # GETs in flight of one hydration
STORES_BEHIND = 2              # disk-cache stores a reader leaves running behind it
LATE_SPAN = 16 * 1024 * 1024   # reads this far behind the streaming front are late read-ahead, not seeks


class _Part:
    __slots__ = ("done", "data", "error", "scope", "cancelled", "held")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.data: Data | None = None
        self.error: FSError | None = None
        self.scope = trio.CancelScope()
        self.cancelled = False
        self.held = 0                  # bytes of the memory budget this part holds


class ObjectReader:
    def __init__(self, fetch: Fetch, size: int, *, spawn: Spawn | None = None,
                 part: int = 8 * 1024 * 1024, max_ahead: int = 4, parallel: int = 4, store=None,
                 etag: str | None = None, budget: MemoryBudget | None = None):
        self._fetch = fetch
        self._budget = budget if budget is not None else MemoryBudget(1 << 62)
        self.etag = etag
        self._store = store            # disk_cache.ObjectBlocks or None
        self.size = size
        self.part = part
        self.max_ahead = max(1, max_ahead)
        self._spawn = spawn
        self._slots = trio.CapacityLimiter(max(1, parallel))
        self._buf_start = 0
        self._buf: Data = b""
        self._next = 0
        self._run = 0                  # bytes read sequentially so far
        self._ahead = 2
        self._parts: dict[int, _Part] = {}
        self._randoms = 0              # reads that continued nothing, after the first
        self._first = True
        self.hydration: Hydration | None = None
        self._storing = 0              # disk-cache stores running in the background

    # ---------------------------------------------------------------- public
    async def read(self, offset: int, size: int) -> Data:
        """Bytes [offset, offset + size) clipped at the end: often a memoryview slice of a
        kept buffer (pyfuse3 replies from any contiguous buffer; no copy here)."""
        end = min(offset + size, self.size)
        if end <= offset:
            return b""
        if self._parts and self._next - LATE_SPAN <= offset < self._next:
            return await self._late(offset, end)   # the kernel's read-ahead, answered out of order
        sequential = offset == self._next
        continuing = sequential and self._run > 0
        self._run = self._run + (end - offset) if sequential else 0
        self._next = end
        if self._buf_start <= offset and end <= self._buf_start + len(self._buf):
            return memoryview(self._buf)[offset - self._buf_start:end - self._buf_start]
        if not sequential and not self._first:
            self._randoms += 1
            if self._randoms >= HYDRATE_AFTER and self.hydration is None:
                self._hydrate()
        self._first = False
        if self.hydration is not None and not self._parts and self.hydration.covers(offset, end):
            data = await self.hydration.read(offset, end)
            if data is not None:
                return data
        first = offset // self.part
        if self._parts and first not in self._parts and first - 1 not in self._parts:
            self._drop_parts()         # a seek away from the streamed region
        if self._parts or self._run >= SEQUENTIAL_AFTER:
            return await self._from_parts(offset, end)
        if continuing or self.size <= MIN_WINDOW:
            return await self._buffered(offset, end)
        return await self._exact(offset, end)   # a first or random read: no read-ahead

    async def _exact(self, offset: int, end: int) -> Data:
        async with self._budget.held(IN_FLIGHT * (end - offset)):
            return await self._get(offset, end)

    async def _get(self, lo: int, hi: int) -> Data:
        """Bytes [lo, hi) from S3 (pinned to the ETag when known), all of them or an error."""
        async with self._slots:
            data = await (self._fetch(lo, hi) if self.etag is None else self._fetch(lo, hi, self.etag))
        if len(data) != hi - lo:
            raise RemoteIOError(f"short read at {lo}: {len(data)} of {hi - lo} bytes")
        return data

    def close(self) -> None:
        self._drop_parts()
        self._buf = b""
        if self.hydration is not None:
            self.hydration.release()
            self.hydration = None

    # ---------------------------------------------------------------- hydration (hydrate.py)
    def _hydrate(self) -> None:
        """Random access seen: download the whole object into the disk cache in the
        background, if it is small enough and there is a cache (and a nursery)."""
        store = self._store
        if (store is None or self._spawn is None or self.etag is None or self.size <= MIN_WINDOW
                or self.size > store.cache.hydrate_max):
            return
        etag = self.etag

        async def get(lo: int, hi: int) -> bytes | bytearray:
            data = await self._fetch(lo, hi, etag)
            if len(data) != hi - lo:
                raise RemoteIOError(f"short read at {lo}: {len(data)} of {hi - lo} bytes")
            return data
        self.hydration = Hydration.join(store, self.size, self.part, self._spawn, get, self._budget,
                                        HYDRATE_PARALLEL)

    # ---------------------------------------------------------------- buffered (random/small)
    async def _buffered(self, offset: int, end: int) -> Data:
        """The 1 MiB-aligned block(s) around [offset, end), kept as this handle's buffer."""
        first, last = offset // MIN_WINDOW, (end - 1) // MIN_WINDOW
        async with self._budget.held(IN_FLIGHT * (min(self.size, (last + 1) * MIN_WINDOW) - first * MIN_WINDOW)):
            return await self._blocks_into_buffer(offset, end)

    async def _blocks_into_buffer(self, offset: int, end: int) -> Data:
        first, last = offset // MIN_WINDOW, (end - 1) // MIN_WINDOW
        blocks = [await self._block(MIN_WINDOW, index) for index in range(first, last + 1)]
        data = blocks[0] if len(blocks) == 1 else b"".join(blocks)
        self._buf_start, self._buf = first * MIN_WINDOW, data
        return memoryview(data)[offset - self._buf_start:end - self._buf_start]

    async def _small_under_pressure(self, offset: int, end: int) -> Data:
        """The 1 MiB blocks of [offset, end), with memory reserved (never waited for)."""
        first, last = offset // MIN_WINDOW, (end - 1) // MIN_WINDOW
        charge = IN_FLIGHT * (min(self.size, (last + 1) * MIN_WINDOW) - first * MIN_WINDOW)
        self._budget.reserve(charge)
        try:
            return await self._blocks_into_buffer(offset, end)
        finally:
            self._budget.release(charge)

    async def _block(self, block: int, index: int) -> Data:
        """Block `index` of size `block` (shorter at the end): disk cache, else S3."""
        lo = index * block
        hi = min(lo + block, self.size)
        if self._store is not None:
            data = await self._store.get(block, index, hi - lo)
            if data is not None:
                return data
        data = await self._get(lo, hi)
        if self._store is not None:
            if self._spawn is not None and self._storing < STORES_BEHIND:
                self._storing += 1     # the reader need not wait for the disk write
                self._spawn(self._store_behind, block, index, data)
            else:
                await self._store.put(block, index, data)
        return data

    async def _store_behind(self, block: int, index: int, data) -> None:
        try:
            await self._store.put(block, index, data)
        finally:
            self._storing -= 1

    # ---------------------------------------------------------------- streamed parts
    async def _late(self, offset: int, end: int) -> Data:
        """A read a little behind the streaming front: the kernel sends its read-ahead
        requests of one window together and they may reach us out of order.  Answered
        from the parts still kept, else fetched exactly; the stream's state (front,
        window, parts) is left as it is, so neither a seek nor a refetch of parts follows."""
        first, last = offset // self.part, (end - 1) // self.part
        chunks = []
        for index in range(first, last + 1):
            slot = self._parts.get(index)
            if slot is not None and not slot.done.is_set():
                await slot.done.wait()
            if slot is None or slot.data is None:    # discarded, dropped or failed
                return await self._exact(offset, end)
            lo = index * self.part
            chunks.append(memoryview(slot.data)[max(offset, lo) - lo:min(end, lo + self.part) - lo])
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def _from_parts(self, offset: int, end: int) -> Data:
        first, last = offset // self.part, (end - 1) // self.part
        pressed = self._budget.pressed(IN_FLIGHT * self.part)
        keep_from = first if pressed else first - 1      # the part behind is kept only with room
        for index in [i for i in self._parts if i < keep_from]:
            self._discard(index)
        if pressed and any(i not in self._parts for i in range(first, last + 1)):
            return await self._small_under_pressure(offset, end)
        if first in self._parts and first - 1 in self._parts:
            self._ahead = min(self._ahead * 2, self.max_ahead)    # the reader moved on a part
        top = min(last + self._ahead, (self.size - 1) // self.part)
        for index in range(first, top + 1):
            if index not in self._parts:
                if self._start_part(index, foreground=index <= last) is None:
                    break              # no room for more read-ahead now: the window shrinks
        chunks = []
        for index in range(first, last + 1):
            slot = self._parts.get(index)
            if slot is None:           # dropped by a concurrent seek: fetch it for this read
                slot = self._start_part(index, foreground=True)
                assert slot is not None    # a foreground part is always started
            if slot.data is None and slot.error is None:
                await self._wait_or_fetch(index, slot)
            if slot.cancelled or (slot.data is None and slot.error is None):   # dropped while we waited
                slot = _Part()
                slot.held = IN_FLIGHT * self._part_len(index)
                self._budget.reserve(slot.held)
                try:
                    await self._fill(index, slot)
                finally:
                    self._budget.release(slot.held)
            if slot.error is not None:
                self._discard(index)
                raise slot.error
            assert slot.data is not None   # neither failed nor dropped: it arrived
            lo = index * self.part
            chunks.append(memoryview(slot.data)[max(offset, lo) - lo:min(end, lo + self.part) - lo])
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)   # a read across parts: one copy

    def _part_len(self, index: int) -> int:
        return min(self.part, self.size - index * self.part)

    def _start_part(self, index: int, foreground: bool) -> _Part | None:
        """Start part `index`; a read-ahead part only if the budget has room (else None)."""
        length = IN_FLIGHT * self._part_len(index)      # until it arrived (see `_fill`)
        if foreground:
            self._budget.reserve(length)
        elif not self._budget.try_acquire(length):
            return None
        slot = _Part()
        slot.held = length
        self._parts[index] = slot
        if self._spawn is not None:
            self._spawn(self._fill, index, slot)
        return slot

    async def _wait_or_fetch(self, index: int, slot: _Part) -> None:
        if self._spawn is None:
            await self._fill(index, slot)
        else:
            await slot.done.wait()

    async def _fill(self, index: int, slot: _Part) -> None:
        try:
            with slot.scope:
                try:
                    slot.data = await self._block(self.part, index)
                    if slot.held > len(slot.data):     # arrived: charged once from now on
                        self._budget.release(slot.held - len(slot.data))
                        slot.held = len(slot.data)
                except FSError as exc:
                    slot.data, slot.error = None, exc
            if slot.scope.cancelled_caught and slot.data is None and slot.error is None:
                slot.cancelled = True
        except Exception as exc:            # a bug must fail the read, not leave it waiting
            slot.data, slot.error = None, FSError(f"read-ahead failed: {type(exc).__name__}: {exc}")
            raise
        finally:
            slot.done.set()

    def _discard(self, index: int) -> None:
        slot = self._parts.pop(index, None)
        if slot is None:
            return
        if not slot.done.is_set():
            slot.scope.cancel()
        held, slot.held = slot.held, 0
        self._budget.release(held)
        data, slot.data = slot.data, None    # a reader still waiting on the slot fetches again
        buffers.give(data)             # reused only if no reply or reader refers to it

    def _drop_parts(self) -> None:
        for index in list(self._parts):
            self._discard(index)
        self._ahead = 2
