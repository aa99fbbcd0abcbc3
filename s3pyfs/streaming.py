"""Streaming multipart upload: parts go up while a large file is still being written.

Responsibility: for a staging file whose every byte is local (new, or fully
rewritten), upload each full part in the background as soon as the writer has
moved past it, so that `close()` only has to send the tail and complete the
upload.  `Staging.upload` finishes (or abandons) the stream.
Invariants:
  * A part is uploaded from the staging file; `part_gen[i]` is the staging
    generation of the last write into part i, `done[i]` records the generation
    the uploaded copy was read at.  At completion every part whose copy is
    older than its last write is uploaded again, so a random write behind the
    writer is never lost.
  * At most `parallel` parts are in flight per stream, and each part's
    buffer is taken from the mount's memory budget (`client.memory`) before
    it is read from the staging file (in a disk thread, diskio.py) and given
    back after its upload; the wait for memory happens while holding nothing
    else.
  * `kick` costs O(1) amortised per write: `_cursor` is the first part not
    yet considered for a background upload; parts below it were sent (or are
    in flight) once, and a part rewritten after that is re-sent by `finish`,
    not by `kick`, so no write rescans the parts behind the writer.
  * `finish` first stops background parts from starting, then waits for those
    in flight: a part is sent twice only when it was written again after its
    upload started.
  * Any failure, a truncation or a rename marks the stream `abandoned`; the
    final upload then aborts it and uploads the whole file the ordinary way.
  * The object's own system headers (`headers`, s3client.KEPT_HEADERS) go with
    CreateMultipartUpload and with the metadata copy after completion.
  * Times are left out of the upload's metadata: S3 sets LastModified at
    completion, which is what s3pyfs reports as mtime for an object without
    an mtime header.  A mode/owner/xattr/explicit-time change made meanwhile
    is applied after completion by a metadata copy.
"""

from __future__ import annotations

import errno as E
import functools
import io
import logging
import os
from collections.abc import Callable

import trio

from . import diskio
from .concurrency import run_all
from .errors import FSError, RemoteIOError

log = logging.getLogger(__name__)

TIME_HEADERS = ("mtime", "ctime", "atime")


async def read_part_off_thread(fd: int, offset: int, length: int) -> io.BytesIO:
    """`length` bytes of a staging file at `offset`, read in a disk thread (diskio.py)
    straight into a buffer that the S3 client sends without another copy
    (S3Client._verified_upload).  The buffer is made on
    the calling thread: part buffers allocated in worker threads land in per-thread
    malloc arenas, which raised the peak RSS of 32 concurrent writers to 620 MiB
    (tests/test_memory.py: under 512 MiB with the buffer made here)."""
    buf = _part_buffer(length)
    await diskio.run(_fill_part, fd, buf, offset, length)
    return buf


def _part_buffer(length: int) -> io.BytesIO:
    buf = io.BytesIO()
    if length:
        buf.seek(length - 1)
        buf.write(b"\0")
    return buf


def _fill_part(fd: int, buf: io.BytesIO, offset: int, length: int) -> None:
    if length:
        with buf.getbuffer() as view:
            try:
                got = os.preadv(fd, [view], offset)
            except OSError as exc:          # a staging I/O error is an errno, never a crash
                raise FSError(f"staging file read failed: {exc.strerror}", errno=exc.errno or E.EIO) from None
        if got != length:
            raise RemoteIOError("staging file shorter than the file size")
    buf.seek(0)


def without_times(metadata: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in metadata.items() if k not in TIME_HEADERS}


class Stream:
    def __init__(self, client, key: str, metadata: dict[str, str], part: int, parallel: int,
                 spawn: Callable[..., None],
                 track: Callable[[str, bool], None] = lambda upload_id, active: None,
                 headers: dict[str, str] | None = None):
        self.client = client
        self.key = key
        self.metadata = without_times(metadata)
        self.headers = dict(headers or {})
        self.part = part
        self.parallel = parallel
        self.spawn = spawn
        self.track = track              # told when the multipart upload starts and ends (journal)
        self.upload_id: str | None = None
        self._create_lock = trio.Lock()
        self.part_gen: dict[int, int] = {}
        self.done: dict[int, tuple[int, str]] = {}
        self.inflight: dict[int, trio.Event] = {}
        self.abandoned: str | None = None
        self.explicit_times = False     # utimens while streaming: times go in after completion
        self.writer_end = 0
        self.finishing = False          # finish() took over: no more background parts
        self._cursor = 0                # parts below this one were sent or are in flight

    def note_write(self, offset: int, end: int, generation: int) -> None:
        for index in range(offset // self.part, (end - 1) // self.part + 1):
            self.part_gen[index] = generation
        self.writer_end = end

    def kick(self, fd: int) -> None:
        """Start uploads of full parts the writer has moved past (non-blocking)."""
        if self.abandoned or self.finishing:
            return
        ready = self.writer_end // self.part
        while self._cursor < ready and len(self.inflight) < self.parallel:
            index = self._cursor
            self._cursor += 1
            if index in self.inflight or self._current(index):
                continue
            self.inflight[index] = trio.Event()
            self.spawn(self._send, fd, index)

    def _current(self, index: int) -> bool:
        done = self.done.get(index)
        return done is not None and done[0] == self.part_gen.get(index, 0)

    async def _ensure_upload(self) -> str:
        async with self._create_lock:
            if self.upload_id is None:
                self.upload_id = await self.client.create_multipart(self.key, self.metadata, self.headers)
                self.track(self.upload_id, True)
            return self.upload_id

    async def _send(self, fd: int, index: int) -> None:
        try:
            await self._upload_part(fd, index)
        except (FSError, OSError) as exc:      # OSError: the staging file went away (unlink)
            self.abandoned = f"part {index + 1} failed: {exc}"
            log.warning("streaming upload of %s: %s; the whole file goes up at close", self.key, exc)
        finally:
            event = self.inflight.pop(index, None)
            if event is not None:
                event.set()
        self.kick(fd)

    async def _upload_part(self, fd: int, index: int) -> None:
        upload_id = await self._ensure_upload()
        async with self.client.memory.held(self.part):
            generation = self.part_gen.get(index, 0)
            data = await read_part_off_thread(fd, index * self.part, self.part)
            etag = await self.client.upload_part(self.key, upload_id, index + 1, data)
        self.done[index] = (generation, etag)

    async def finish(self, fd: int, size: int, metadata: dict[str, str], condition: dict | None = None) -> str | None:
        """Complete the upload with every part current; raises FSError (caller aborts).
        `condition`: if_match / if_none_match of a conditional commit (writeback.py)."""
        # a part finishing meanwhile would start the next one (kick): stop that first, or
        # finish() would send parts that are already on their way a second time
        self.finishing = True
        try:
            await self._wait_inflight()
            if self.abandoned:
                raise RemoteIOError(f"streaming upload abandoned: {self.abandoned}")
            etags = await self._final_parts(fd, size)
        finally:
            self.finishing = False
        upload_id = self.upload_id
        assert upload_id is not None  # size > part: _final_parts started the upload if no part did
        etag = await self.client.complete_multipart(self.key, upload_id, etags, **(condition or {}))
        self.track(upload_id, False)
        self.upload_id = None
        if without_times(metadata) != self.metadata or self.explicit_times:
            etag = await self.client.copy(self.key, self.key, size, metadata=metadata,
                                          parallel=self.parallel,
                                          headers=self.headers) or etag
        return etag

    async def _final_parts(self, fd: int, size: int) -> list[str]:
        """ETags of every part: streamed copies still current, the others sent now."""
        count = (size + self.part - 1) // self.part
        etags = [""] * count

        async def one(index: int) -> None:
            full = (index + 1) * self.part <= size          # streamed parts are always full ones
            if full and self._current(index):
                etags[index] = self.done[index][1]
                return
            upload_id = await self._ensure_upload()
            length = min(self.part, size - index * self.part)
            async with self.client.memory.held(length):
                data = await read_part_off_thread(fd, index * self.part, length)
                etags[index] = await self.client.upload_part(self.key, upload_id, index + 1, data)
        await run_all((functools.partial(one, index) for index in range(count)), self.parallel)
        return etags

    async def _wait_inflight(self) -> None:
        while self.inflight:
            await next(iter(self.inflight.values())).wait()

    async def abort(self) -> None:
        self.abandoned = self.abandoned or "aborted"
        await self._wait_inflight()
        if self.upload_id is not None:
            await self.client.abort_multipart(self.key, self.upload_id)
            self.track(self.upload_id, False)
            self.upload_id = None
