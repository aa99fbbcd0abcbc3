"""Write path: a local staging file per written inode, uploaded on flush/fsync/close.

Responsibility: hold the bytes of a file being modified, fetch from S3 only the
blocks a partial write or a read needs, and upload the whole content as one
PUT (small) or a parallel multipart upload (large).
Invariants:
  * Block b of the staging file is valid when it is in `present`, or lies at or
    beyond `source_limit` (bytes there are zeros or were written locally).
  * Staging file I/O runs in disk threads (diskio.py), never on the trio
    thread, so a stalled disk holds up only the requests on this file.  Every
    change of the file's bytes or length and its bookkeeping (`present`,
    `written`, `size`, `source_limit`, `generation`) happens under the file's
    `_io` lock (a FIFO trio.Lock): the pwrite/ftruncate in a thread first,
    then the bookkeeping without further awaits, then (when the change asked
    for one) the wait for its journal record, still under the lock.  So
    changes never interleave, and of two overlapping writes the bytes of the
    one answered last are the ones that stay; a block is marked present and
    a change counted in `generation` only once its bytes are in the file (an
    upload that read older bytes sees the file dirty again).
  * A fetch decides which blocks to store under that lock, after its GET: it
    writes only into blocks still not present, clipped to the current
    `source_limit` and size, so it never overwrites newer local writes and
    never extends the file past a truncation.  Reads take no lock: a read
    racing a write of the same bytes may see either version.
  * A write that covers a block partly first makes that block present, so a
    block is never half local, half missing.
  * `generation` counts changes; `upload()` records the generation it started
    from and the file is clean only if nothing changed meanwhile.  A failed
    upload leaves the file dirty (and aborts its multipart upload).
  * At most `parallel` parts are in memory at once during an upload, and
    every part buffer (a PUT body, a multipart part, a run of fetched
    blocks) is taken from the mount's memory budget (`client.memory` for
    uploads, the fetch function's `memory` attribute for fetches, set by
    core.Core.fetcher) around its one request, waiting for room
    while holding nothing else.
  * An upload sends the object's own system headers it is given (`headers`,
    s3client.KEPT_HEADERS) with the PUT or CreateMultipartUpload.
  * Small wholly local files keep a copy of their bytes in memory (`_mirror`,
    at most `MIRROR_MAX` bytes): started for a file that is empty and has no
    base bytes to fetch (a new file, or one truncated to 0), updated in the
    same await-free bookkeeping step as every pwrite/ftruncate of the staging
    file, and dropped for good once the file grows past `MIRROR_MAX`.  So the
    mirror always equals the staging file's bytes; reads and the PUT at close
    take them from memory instead of a disk-thread read each (small files:
    one thread hop less per file and per read).  The bytes are still written
    to the staging file before a write is answered (the journal's promise).
  * The staging file is a named `journal.Record`; `on_change` (set by the
    owner, synchronous) asks for its journal record to be re-written whenever
    recovery would need different facts: the file became dirty, a block below
    `source_limit` was written for the first time (`written`, kept as ranges),
    it was truncated, a multipart upload started, or an upload left it still
    dirty.  The record is written in a disk thread; `write` and `truncate`
    return only after it is on disk (`journal_settled`), so no write that made
    the file dirty or wrote a new block is answered before its record.
    A clean file has no record (see journal.py).
  * Versions, not hopes: every byte fetched from S3 comes from `base_etag`, the
    version the local data is based on (the fetch is pinned: If-Match), so a
    replaced object is a `Conflict` (EIO), never a mix of two versions.
  * The commit (PUT or CompleteMultipartUpload) to `base_key` is conditional:
    If-None-Match: * while the file was created here and never uploaded
    (`absent`); If-Match: `base_etag` while the content still depends on the
    base (`depends_on_base`: some bytes came or may come from it, i.e. not
    every byte of it was written or truncated away locally since it became
    the base); unconditional (last writer wins) when every byte is local.
    After an upload the new ETag is the base and the file depends on it
    again.  A failed condition raises `Conflict`: nothing was overwritten,
    and the owner keeps the data elsewhere (files.py: lost+found).
"""

from __future__ import annotations

import bisect
import functools
import io
import logging
import math
import os
from collections.abc import Awaitable, Callable

import trio

from . import diskio
from .budget import IN_FLIGHT
from .concurrency import run_all
from .errors import Conflict, FSError, NoSpace, NotFound, RemoteIOError
from .journal import Record
from .streaming import Stream, read_part_off_thread

log = logging.getLogger(__name__)

BLOCK = 1024 * 1024
MIRROR_MAX = 64 * 1024           # small files keep their bytes in memory too (module doc)
MAX_PARTS = 10_000
MIN_PART = 5 * 1024 * 1024

# (start, end) of the source object -> bytes; called (start, end, etag) to pin the version
Fetch = Callable[..., Awaitable[bytes | bytearray]]


def part_size_for(size: int, configured: int) -> int:
    """Smallest multiple of 1 MiB >= configured that fits `size` into 10,000 parts."""
    part = max(configured, MIN_PART)
    while part * MAX_PARTS < size:
        part *= 2
    return part


class BlockRanges:
    """A set of block numbers kept as sorted, disjoint, half-open [first, end) ranges:
    membership O(log n); a sequential writer's new block extends the last range
    (O(log n)); `ranges()` costs O(number of ranges), not O(blocks)."""

    def __init__(self, blocks=()):
        self._r: list[list[int]] = []
        for b in sorted(set(blocks)):
            self.add(b, b + 1)

    def _index(self, b: int) -> int:
        """Index of the last range starting at or before b, or -1."""
        return bisect.bisect_right(self._r, [b, math.inf]) - 1

    def __contains__(self, b: int) -> bool:
        i = self._index(b)
        return i >= 0 and b < self._r[i][1]

    def covers(self, first: int, end: int) -> bool:
        """Every block of [first, end) is in the set."""
        if end <= first:
            return True
        i = self._index(first)
        return i >= 0 and self._r[i][1] >= end

    def add(self, first: int, end: int) -> None:
        if end <= first:
            return
        r = self._r
        i = self._index(first)
        if i < 0 or r[i][1] < first:
            i += 1
        j = i
        while j < len(r) and r[j][0] <= end:
            first, end = min(first, r[j][0]), max(end, r[j][1])
            j += 1
        r[i:j] = [[first, end]]

    def update(self, blocks) -> None:
        for b in blocks:
            self.add(b, b + 1)

    def keep_below(self, end: int) -> None:
        """Drop every block >= end."""
        self._r = [[lo, min(hi, end)] for lo, hi in self._r if lo < end]

    def clear(self) -> None:
        self._r = []

    def ranges(self) -> list[list[int]]:
        return [list(pair) for pair in self._r]

    def __iter__(self):
        for lo, hi in self._r:
            yield from range(lo, hi)

    def __len__(self) -> int:
        return sum(hi - lo for lo, hi in self._r)

    def __bool__(self) -> bool:
        return bool(self._r)


class Staging:
    def __init__(self, record: Record, size: int, source_limit: int, base_etag: str | None = None,
                 resize: bool = True, *, base_key: str | None = None, absent: bool = False):
        self.record = record
        self.fd = record.fd
        self.size = size
        self.source_limit = source_limit          # [0, source_limit) still comes from S3
        self.base_etag = base_etag                # the S3 version [0, source_limit) comes from
        self.base_key = base_key                  # the key base_etag is a version of (None: unknown)
        self.absent = absent                      # created here, never uploaded: If-None-Match: *
        self.depends_on_base = base_etag is not None and not absent
        self._base_size = source_limit            # [0, _base_size) held the base's bytes ...
        self._covered: list[tuple[int, int]] = [] # ... and these ranges of it were written since
        self.present: set[int] = set()
        self.written = BlockRanges()              # blocks below source_limit changed locally
        self._io = trio.Lock()                    # byte changes + their bookkeeping (module doc)
        self.fetching: dict[int, trio.Event] = {}
        self.generation = 0
        self.clean_generation = 0
        self.upload_lock = trio.Lock()
        self.stream: Stream | None = None     # streaming multipart upload in progress
        self.uploads: set[str] = set()        # multipart upload ids not yet completed or aborted
        self.on_change: Callable[[], None] | None = None
        self.failed = False                   # the last upload failed (background retry)
        # the file's bytes, while it is small and wholly local (module doc)
        self._mirror: bytearray | None = bytearray() if size == 0 and source_limit == 0 else None
        if resize:
            os.ftruncate(self.fd, size)

    # ---- state -----------------------------------------------------------
    @property
    def dirty(self) -> bool:
        return self.generation != self.clean_generation

    def mark_dirty(self) -> None:
        was_clean = not self.dirty
        self.generation += 1
        if was_clean:
            self._journal()

    def mark_clean(self, *, gone: bool = False) -> None:
        """Nothing of this file needs saving any more: uploaded, or (`gone`) its name was
        unlinked or replaced, when the record's removal is written at once (journal.py)."""
        self.clean_generation = self.generation
        self.record.clear(now=gone)

    def journal_changed(self) -> None:
        """Facts recovery needs changed (for the owner: metadata); a no-op when clean."""
        if self.dirty:
            self._journal()

    def _journal(self) -> None:
        if self.on_change is not None:
            self.on_change()

    async def journal_settled(self) -> None:
        """Return once the journal record asked for so far is on disk."""
        await self.record.settle()

    def track_upload(self, upload_id: str, active: bool) -> None:
        """A multipart upload of this file started (recorded for crash cleanup) or ended."""
        if active:
            self.uploads.add(upload_id)
            if self.dirty:
                self._journal()
        else:
            self.uploads.discard(upload_id)

    def close(self) -> None:
        if self.fd >= 0:
            self.record.discard()
            self.fd = -1

    def _needs_fetch(self, block: int) -> bool:
        return block * BLOCK < self.source_limit and block not in self.present

    # ---- fetching ----------------------------------------------------------
    async def ensure(self, start: int, end: int, fetch: Fetch, parallel: int = 4) -> None:
        """Make bytes [start, end) valid locally."""
        end = min(end, self.size)
        if end <= start:
            return
        blocks = range(start // BLOCK, (end - 1) // BLOCK + 1)
        while True:
            waiting = [self.fetching[b] for b in blocks if b in self.fetching]
            wanted = [b for b in blocks if b not in self.fetching and self._needs_fetch(b)]
            if not waiting and not wanted:
                return
            for event in waiting:
                await event.wait()
            if wanted:
                await self._fetch_blocks(wanted, fetch, parallel)

    async def _fetch_blocks(self, blocks: list[int], fetch: Fetch, parallel: int) -> None:
        runs: list[list[int]] = []
        for b in blocks:
            if runs and runs[-1][-1] == b - 1 and len(runs[-1]) < 8:
                runs[-1].append(b)
            else:
                runs.append([b])
        for b in blocks:
            self.fetching[b] = trio.Event()
        memory = getattr(fetch, "memory", None)      # the mount's MemoryBudget, if the fetcher has one

        async def one(run: list[int]) -> None:
            start = run[0] * BLOCK
            end = min((run[-1] + 1) * BLOCK, self.source_limit)
            if end <= start:
                await self._store_fetched(run, start, b"")
                return

            async def get() -> bytes | bytearray:
                if self.base_etag is None:
                    return await fetch(start, end)
                try:
                    return await fetch(start, end, self.base_etag)     # pinned: If-Match
                except NotFound:
                    raise Conflict(f"the object was deleted in S3; this file's data was based on version "
                                   f"{self.base_etag}") from None
            if memory is None:
                await self._store_fetched(run, start, await get())
                return
            async with memory.held(IN_FLIGHT * (end - start)):     # a GET body is briefly held twice
                await self._store_fetched(run, start, await get())
        try:
            await run_all((functools.partial(one, run) for run in runs), parallel)
        finally:
            for b in blocks:
                event = self.fetching.pop(b, None)
                if event is not None:
                    event.set()

    async def _store_fetched(self, run: list[int], start: int, data: bytes | bytearray) -> None:
        async with self._io:          # which blocks are still missing is decided under the lock
            pieces: list[tuple[int, memoryview]] = []
            view = memoryview(data)
            for b in run:
                if b in self.present or b * BLOCK >= self.source_limit:
                    continue
                lo = b * BLOCK
                hi = min(lo + BLOCK, self.source_limit, self.size)
                chunk = view[lo - start:hi - start]
                if len(chunk) < hi - lo:
                    raise RemoteIOError("object shorter than expected while fetching for a write")
                pieces.append((b, chunk))
            if not pieces:
                return
            await diskio.run(self._pwrite_pieces, [(chunk, b * BLOCK) for b, chunk in pieces])
            # no awaits from here on: bookkeeping of what the thread wrote
            self.present.update(b for b, _ in pieces)

    def _pwrite_pieces(self, pieces: list[tuple[memoryview, int]]) -> None:
        for chunk, offset in pieces:
            self._pwrite(chunk, offset)

    # ---- data operations -----------------------------------------------------
    def _pwrite(self, data: bytes | memoryview, offset: int) -> None:
        try:
            view = memoryview(data)
            while view:
                written = os.pwrite(self.fd, view, offset)
                view, offset = view[written:], offset + written
        except OSError as exc:
            raise NoSpace(f"staging file write failed: {exc.strerror}", errno=exc.errno) from None

    async def write(self, offset: int, data: bytes, fetch: Fetch) -> int:
        end = offset + len(data)
        first, last = offset // BLOCK, (end - 1) // BLOCK
        for b in sorted({first, last}):        # edge blocks the write covers only partly
            lo = b * BLOCK
            if self._needs_fetch(b) and (offset > lo or end < min(lo + BLOCK, self.source_limit)):
                await self.ensure(lo, lo + BLOCK, fetch)
        for b in range(first, last + 1):       # wait out fetches of fully covered blocks
            event = self.fetching.get(b)
            if event is not None:
                await event.wait()
        async with self._io:
            await diskio.run(self._pwrite, data, offset)
            # no awaits from here on: the bookkeeping of the bytes now in the file
            self._mirror_write(offset, data, end)
            self._cover(offset, end)
            self.size = max(self.size, end)
            self.present.update(range(first, last + 1))
            below = min(last + 1, -(-self.source_limit // BLOCK))      # blocks below source_limit
            fresh = not self.written.covers(first, below)
            self.written.add(first, below)
            was_clean = not self.dirty
            self.generation += 1
            journaled = was_clean or fresh
            if journaled:
                self._journal()
            if self.stream is not None:
                self.stream.note_write(offset, end, self.generation)
            if journaled:
                # answered only once the record says so; still under the lock, so writes
                # are answered in the order their bytes went in
                await self.journal_settled()
        return len(data)

    async def read(self, offset: int, size: int, fetch: Fetch) -> bytes:
        end = min(offset + size, self.size)
        if end <= offset:
            return b""
        if self._mirror is not None:
            return bytes(self._mirror[offset:end])
        await self.ensure(offset, end, fetch)
        try:
            return await diskio.run(os.pread, self.fd, end - offset, offset)
        except OSError as exc:
            raise FSError(f"staging file read failed: {exc.strerror}", errno=exc.errno) from None

    async def truncate(self, new_size: int, fetch: Fetch) -> None:
        if new_size < self.size and new_size % BLOCK:
            await self.ensure(new_size - new_size % BLOCK, new_size, fetch)
        for b in [b for b in self.fetching if b * BLOCK >= new_size]:
            await self.fetching[b].wait()
        async with self._io:
            try:
                await diskio.run(os.ftruncate, self.fd, new_size)
            except OSError as exc:
                raise NoSpace(f"staging file truncate failed: {exc.strerror}", errno=exc.errno) from None
            # no awaits from here on
            self.source_limit = min(self.source_limit, new_size)
            self._mirror_truncate(new_size)
            self._base_truncated(new_size)
            self.present = {b for b in self.present if b * BLOCK < new_size}
            self.written.keep_below(-(-self.source_limit // BLOCK))
            if self.stream is not None:
                self.stream.abandoned = "truncated while streaming"
            self.size = new_size
            self.generation += 1
            self._journal()
            await self.journal_settled()

    def _mirror_write(self, offset: int, data: bytes, end: int) -> None:
        mirror = self._mirror
        if mirror is None:
            return
        if end > MIRROR_MAX:
            self._mirror = None             # no longer small: the staging file alone from now on
            return
        if len(mirror) < offset:
            mirror.extend(bytes(offset - len(mirror)))
        mirror[offset:end] = data

    def _mirror_truncate(self, new_size: int) -> None:
        if new_size == 0 and self.source_limit == 0:
            self._mirror = bytearray()      # empty and nothing to fetch: small again
        elif self._mirror is not None:
            if new_size > MIRROR_MAX:
                self._mirror = None
            elif new_size < len(self._mirror):
                del self._mirror[new_size:]
            else:
                self._mirror.extend(bytes(new_size - len(self._mirror)))

    def _cover(self, start: int, end: int) -> None:
        """Bytes [start, end) were written locally: once every byte of the base is,
        the content no longer depends on it (last writer wins from then on).
        `_covered` is sorted and disjoint; a write costs O(log n) plus the merge."""
        if not self.depends_on_base:
            return
        end = min(end, self._base_size)
        ranges = self._covered
        if start < end:
            i = bisect.bisect_left(ranges, (start, -1))
            if i > 0 and ranges[i - 1][1] >= start:
                i -= 1
            j = i
            while j < len(ranges) and ranges[j][0] <= end:
                start, end = min(start, ranges[j][0]), max(end, ranges[j][1])
                j += 1
            ranges[i:j] = [(start, end)]
        if self._base_size == 0 or ranges == [(0, self._base_size)]:
            self.depends_on_base = False
            self._covered = []

    def _base_truncated(self, new_size: int) -> None:
        """The file was cut to `new_size`: base bytes past it no longer matter."""
        self._base_size = min(self._base_size, new_size)
        self._covered = [(lo, min(hi, new_size)) for lo, hi in self._covered if lo < new_size]
        self._cover(0, 0)

    def condition(self, key: str) -> dict:
        """Arguments of a conditional commit of this content to `key` (see the module doc)."""
        if self.base_key is None or key != self.base_key:
            return {}                   # another name (rename target): replaced as rename does
        if self.absent:
            return {"if_none_match": True}
        if self.depends_on_base and self.base_etag:
            return {"if_match": self.base_etag}
        return {}

    # ---- upload ------------------------------------------------------------
    async def upload(self, client, key: str, metadata: dict[str, str], fetch: Fetch,
                     multipart_threshold: int, parallel: int,
                     headers: dict[str, str] | None = None) -> str | None:
        """Upload the whole content to `key` with `metadata` and the object's own system
        `headers`; returns the new ETag.  Raises FSError."""
        async with self.upload_lock:
            generation = self.generation
            try:
                await self.ensure(0, self.size, fetch, parallel)
            except Conflict as exc:          # a pinned fetch found another version
                raise await self._named_conflict(client, key, exc) from None
            size = self.size
            condition = self.condition(key)
            stream, self.stream = self.stream, None
            etag = None
            if stream is not None:
                etag = await self._finish_stream(stream, key, size, metadata, condition)
            if etag is None:
                if size <= multipart_threshold:
                    async with client.memory.held(size):
                        mirror = self._mirror
                        if mirror is not None and len(mirror) == size:
                            body = io.BytesIO(mirror)        # a copy: later writes do not change it
                        else:
                            body = await read_part_off_thread(self.fd, 0, size)
                        etag = await client.put(key, body, metadata, None, headers, **condition)
                else:
                    etag = await self._multipart(client, key, metadata, size, multipart_threshold, parallel,
                                                 condition, headers)
            self._uploaded(generation, etag, key, size)
            return etag

    async def _named_conflict(self, client, key: str, exc: Conflict) -> Conflict:
        """`exc` with the version that won (one HEAD), for the owner's lost+found record."""
        if exc.current_etag is not None:
            return exc
        try:
            current = await client.head(key)
        except FSError:
            return exc
        won = "the object was deleted" if current is None else f"version {current.etag} won"
        return Conflict(f"{key}: {won}; this data was based on version {self.base_etag} ({exc})",
                        current_etag=current.etag if current is not None else None)

    def _uploaded(self, generation: int, etag: str | None, key: str, size: int) -> None:
        self.clean_generation = generation
        # everything below `size` is now local and equals what S3 holds
        self.source_limit = 0
        self.written.clear()
        self.base_etag = etag
        # the new version is the base: later changes are changes of it
        self.base_key, self.absent = key, False
        self.depends_on_base = etag is not None
        self._base_size, self._covered = size, []
        if self.dirty:
            self._journal()         # changed during the upload: the record now points at `etag`
        else:
            self.record.clear()

    async def _finish_stream(self, stream: Stream, key: str, size: int, metadata: dict[str, str],
                             condition: dict) -> str | None:
        """Complete a streaming upload; None when it cannot be used (then it is aborted)."""
        usable = not stream.abandoned and stream.key == key and stream.part < size <= stream.part * MAX_PARTS
        if usable:
            try:
                return await stream.finish(self.fd, size, metadata, condition)
            except BaseException:
                with trio.CancelScope(shield=True):
                    await stream.abort()
                raise
        with trio.CancelScope(shield=True):
            await stream.abort()
        return None

    async def _multipart(self, client, key, metadata, size, configured_part, parallel, condition,
                         headers=None):
        part = part_size_for(size, configured_part)
        count = (size + part - 1) // part
        etags = [""] * count
        upload_id = await client.create_multipart(key, metadata, headers)
        self.track_upload(upload_id, True)
        async def one(index: int) -> None:
            start = index * part
            length = min(part, size - start)
            async with client.memory.held(length):
                body = await read_part_off_thread(self.fd, start, length)
                etags[index] = await client.upload_part(key, upload_id, index + 1, body)
        try:
            await run_all((functools.partial(one, index) for index in range(count)), parallel)
            etag = await client.complete_multipart(key, upload_id, etags, **condition)
        except BaseException:
            with trio.CancelScope(shield=True):
                await client.abort_multipart(key, upload_id)
            self.track_upload(upload_id, False)
            raise
        self.track_upload(upload_id, False)
        return etag
