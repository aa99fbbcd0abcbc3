"""Read path for objects with no local data: ranged GETs with sequential read-ahead.

Responsibility: answer `read(offset, size)` of one open handle from S3 with
few requests: small objects are read whole, sequential readers get a window
that doubles per sequential read (1 MiB up to `max_window`) fetched as
parallel ranged GETs of `part` bytes, random readers get exactly what they ask.
Invariants:
  * The buffer belongs to one handle; it is replaced in one step without
    awaits, so concurrent reads of the handle see either the old or the new one.
  * Memory per handle is bounded by `max_window`.
  * Nothing here writes; a handle whose inode gains local data (a write
    through another handle) stops using this reader (filesystem.py decides).
"""

from __future__ import annotations

import functools
from typing import Awaitable, Callable

from .concurrency import run_all

Fetch = Callable[[int, int], Awaitable[bytes]]

MIN_WINDOW = 1024 * 1024
SMALL_OBJECT = 1024 * 1024


async def fetch_parallel(fetch: Fetch, start: int, end: int, part: int, parallel: int) -> bytes:
    """Bytes [start, end) as parallel ranged requests of `part` bytes."""
    if end - start <= part:
        return await fetch(start, end)
    ranges = [(lo, min(lo + part, end)) for lo in range(start, end, part)]
    chunks: list[bytes] = [b""] * len(ranges)

    async def one(index: int) -> None:
        chunks[index] = await fetch(*ranges[index])
    await run_all((functools.partial(one, index) for index in range(len(ranges))), parallel)
    return b"".join(chunks)


class ObjectReader:
    def __init__(self, fetch: Fetch, size: int, *, max_window: int = 32 * 1024 * 1024,
                 part: int = 8 * 1024 * 1024, parallel: int = 4):
        self._fetch = fetch
        self.size = size
        self.max_window = max(max_window, MIN_WINDOW)
        self.part = part
        self.parallel = parallel
        self._buf_start = 0
        self._buf = b""
        self._next = 0
        self._window = MIN_WINDOW
        self.bytes_fetched = 0

    async def read(self, offset: int, size: int) -> bytes:
        end = min(offset + size, self.size)
        if end <= offset:
            return b""
        buf_end = self._buf_start + len(self._buf)
        if self._buf_start <= offset and end <= buf_end:
            self._next = end
            return self._buf[offset - self._buf_start:end - self._buf_start]
        if self.size <= SMALL_OBJECT:
            start, stop = 0, self.size
        elif offset == self._next or self._buf_start <= offset <= buf_end:
            self._window = min(self._window * 2, self.max_window)
            start, stop = offset, min(self.size, offset + max(self._window, end - offset))
        else:
            self._window = MIN_WINDOW
            start, stop = offset, end
        data = await fetch_parallel(self._fetch, start, stop, self.part, self.parallel)
        self.bytes_fetched += len(data)
        self._buf_start, self._buf = start, data
        self._next = end
        return data[offset - start:end - start]

    def drop(self) -> None:
        self._buf = b""
