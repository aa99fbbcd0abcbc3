"""One memory budget for the whole mount: bytes of data buffers held in RAM.

Responsibility: bound the bytes that transfers keep in memory at once, over
every open file together: read-ahead parts of sequential readers, parts of
ordinary and streaming multipart uploads, single-PUT bodies, block fetches
into staging files, small-object reads.  The size is `max_memory=` (MiB).
The idea follows Mountpoint for S3's memory limiter: read-ahead adapts to
what is left, writers wait, nobody fails for lack of memory.

Three ways to take bytes:
  * `try_acquire(n)` (read-ahead): only when `n` fits now and nobody waits;
    else False and the reader simply reads ahead less for now.  This is how
    read-ahead windows shrink under pressure and grow again when it passes.
  * `reserve(n)` (the part a reader needs for the read it is answering):
    always granted at once, even beyond the limit.  A reader therefore always
    progresses, and a reader never waits for memory while it holds some (the
    cycle "A waits for B's parts, B waits for A's" cannot form).  The overshoot
    is at most a part or two per concurrent FUSE read, and while it lasts no
    read-ahead and no waiter is admitted.
  * `await acquire(n)` (uploads, fetches, whole small reads): waits until `n`
    fits, first come first served (a large waiter at the head is not
    overtaken by small ones).  A request larger than the whole budget is
    admitted when nothing else is held, alone: it neither waits forever nor
    fails.  Callers hold such bytes only around one request and never wait
    for more memory (or a request slot) while holding them, so waiters are
    always woken by holders that finish on their own.
Invariants:
  * Owned by the trio thread: no locks, state changes between checkpoints.
  * `used` is the sum of granted, not yet released bytes; `release` is
    called exactly once per grant (`held()` does it for `acquire`).
  * Waiters are admitted strictly in arrival order; a cancelled waiter
    leaves the queue and wakes the next one if it could now fit.
  * `peak` records the highest `used` (tests, statistics).
"""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

MiB = 1024 * 1024
DEFAULT_MAX_MEMORY_MIB = 256
# A GET body exists twice while it is received (aiohttp's list of chunks, then the joined
# bytes): a download is charged this many times its size until it has arrived.
IN_FLIGHT = 2


class MemoryBudget:
    def __init__(self, limit: int):
        self.limit = max(1, int(limit))
        self.used = 0
        self.peak = 0
        self._waiters: collections.deque[tuple[int, trio.Event]] = collections.deque()

    # ---- queries -------------------------------------------------------------
    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def pressed(self, n: int) -> bool:
        """True when `n` more bytes would not be granted by `try_acquire` now."""
        return bool(self._waiters) or self.used + n > self.limit

    def _fits(self, n: int) -> bool:
        return self.used + n <= self.limit or self.used == 0

    # ---- taking bytes ----------------------------------------------------------
    def try_acquire(self, n: int) -> bool:
        """Take `n` bytes if they fit now and no one is waiting (read-ahead)."""
        if self._waiters or self.used + n > self.limit:
            return False
        self._take(n)
        return True

    def reserve(self, n: int) -> None:
        """Take `n` bytes now, beyond the limit if need be (a reader's current part)."""
        self._take(n)

    async def acquire(self, n: int) -> None:
        """Wait until `n` bytes fit (in arrival order), then take them."""
        if not self._waiters and self._fits(n):
            self._take(n)
            await trio.lowlevel.cancel_shielded_checkpoint()   # a schedule point that cannot lose the grant
            return
        event = trio.Event()
        entry = (n, event)
        self._waiters.append(entry)
        try:
            await event.wait()
        except BaseException:
            if event.is_set():          # granted just as we were cancelled: hand it back
                self.release(n)
            else:
                self._waiters.remove(entry)
                self._wake()
            raise

    @asynccontextmanager
    async def held(self, n: int) -> AsyncIterator[None]:
        """`acquire(n)` for the duration of the block."""
        await self.acquire(n)
        try:
            yield
        finally:
            self.release(n)

    def release(self, n: int) -> None:
        self.used -= n
        if self.used < 0:               # a bug: never let it hide as extra room
            raise AssertionError(f"memory budget released more than held ({self.used})")
        self._wake()

    # ---- internals -------------------------------------------------------------
    def _take(self, n: int) -> None:
        self.used += n
        if self.used > self.peak:
            self.peak = self.used

    def _wake(self) -> None:
        while self._waiters:
            n, event = self._waiters[0]
            if not self._fits(n):
                return
            self._waiters.popleft()
            self._take(n)
            event.set()
