"""File data operations: open, read, write, flush, fsync, release, drain.

Responsibility: connect handles to the read path (`reader.ObjectReader` for
clean objects) and the write path (`writeback.Staging` per written inode),
and decide when staged data goes to S3.
Invariants (data safety, see ARCHITECTURE.md):
  * `flush`/`fsync` return only after the upload succeeded, or raise.
  * A failed upload at `release` keeps the staging file and the node (dirty)
    for the next flush or the unmount drain; nothing is dropped silently.
  * A key the store refuses for good (too long) fails the flush with
    ENAMETOOLONG and is then dropped, since no retry can succeed.
  * Every staging file has a journal record while dirty (journal.py): the
    record names the key the data belongs to and is removed when the file
    is uploaded, unlinked or renamed away, so recovery never resurrects it.
  * A file whose upload failed is retried by `retry_failed_uploads` in the
    background (backoff up to `RETRY_MAX_INTERVAL`), besides at its next
    flush and at unmount.
"""

from __future__ import annotations

import errno as E
import functools
import logging
import os
import stat

import trio

from .core import CoreBase, now_ns
from .errors import FSError, IsADirectory, NameTooLong
from .handles import FileHandle
from .inodes import Node
from .metadata import user_metadata
from .reader import ObjectReader
from .streaming import Stream
from .writeback import Staging

log = logging.getLogger(__name__)

READ_PART = 8 * 1024 * 1024       # ranged GET size of sequential reads
READ_AHEAD_PARTS = 6             # read-ahead window: up to 48 MiB per handle
RETRY_INTERVAL = 2.0             # first background retry of a failed upload (seconds)
RETRY_MAX_INTERVAL = 30.0


class FileOps(CoreBase):
    # ------------------------------------------------------------------ files
    async def open(self, ino: int, flags: int) -> FileHandle:
        node = self.node(ino)
        if node.is_dir:
            raise IsADirectory(node.name)
        writable = (flags & os.O_ACCMODE) != os.O_RDONLY
        if writable:
            self._writable()
        if not node.attrs.is_symlink() and not stat.S_ISREG(node.attrs.mode):
            raise FSError("special files cannot be opened on this filesystem", errno=E.ENXIO)
        handle = self.handles.add_file(node, writable)
        node.open_handles += 1
        if node.staging is None:
            await self.getattr(ino)             # close-to-open: see the newest object
            handle.reader = self._new_reader(node)
        return handle

    def _new_reader(self, node: Node) -> ObjectReader:
        store = self.disk_cache.bind(self.inodes.file_key(node), node.attrs.etag) if self.disk_cache else None
        # pinned to the version seen at open: a replaced object gives EIO, never a mix
        return ObjectReader(self._fetcher(node), node.attrs.size, spawn=self.spawn, store=store,
                            part=READ_PART, max_ahead=READ_AHEAD_PARTS, parallel=min(READ_AHEAD_PARTS, self.cfg.parallel),
                            etag=node.attrs.etag, budget=self.client.memory)

    def _staging_for(self, node: Node) -> Staging:
        if node.staging is None:
            size = node.attrs.size if node.in_s3 else 0
            staging = Staging(self.journal.new_record(), size, size, node.attrs.etag if node.in_s3 else None)
            staging.on_change = functools.partial(self._journal_record, node, staging)
            node.staging = staging
            for handle in self.handles.files_of(node):
                if handle.reader is not None:
                    handle.reader.close()
                    handle.reader = None
        return node.staging

    def _journal_record(self, node: Node, staging: Staging) -> None:
        """(Re)write the journal record of a dirty staging file: what recovery needs."""
        if node.staging is not staging or not node.attached():
            staging.record.clear()          # unlinked or replaced: nothing to recover
            return
        staging.record.save({
            "key": self.inodes.file_key(node),
            "base_etag": staging.base_etag,
            "source_limit": staging.source_limit,
            "written": sorted(staging.written),
            "metadata": user_metadata(node.attrs),
            "uploads": sorted(staging.uploads),
        })

    async def read(self, fh: int, offset: int, size: int) -> bytes:
        handle = self.handles.file(fh)
        node = handle.node
        if node.staging is not None:
            return await node.staging.read(offset, size, self._fetcher(node))
        if handle.reader is None:
            handle.reader = self._new_reader(node)
        return await handle.reader.read(offset, size)

    async def write(self, fh: int, offset: int, data: bytes) -> int:
        handle = self.handles.file(fh)
        if not handle.writable:
            raise FSError("file not open for writing", errno=E.EBADF)
        node = handle.node
        staging = self._staging_for(node)
        written = await staging.write(offset, data, self._fetcher(node))
        node.attrs.size = staging.size
        node.attrs.mtime_ns = node.attrs.ctime_ns = now_ns()
        self._stream_if_useful(node, staging)
        return written

    def _stream_if_useful(self, node: Node, staging: Staging) -> None:
        """Send full parts of a large, wholly local file while it is still being written."""
        part = self.cfg.multipart_size
        if self.spawn is None or staging.source_limit != 0 or staging.size < 2 * part or not node.attached():
            return
        if staging.stream is None:
            staging.stream = Stream(self.client, self.inodes.file_key(node), user_metadata(node.attrs), part,
                                    self.cfg.parallel, self.spawn, track=staging.track_upload)
            staging.stream.writer_end = staging.size
        staging.stream.kick(staging.fd)

    async def flush(self, fh: int) -> None:
        node = self.handles.file(fh).node
        try:
            await self._upload(node)
        except NameTooLong as exc:
            # the store will never take this key: close() gets the error, retrying is pointless
            log.error("dropping data of %s: %s", self._describe(node), exc)
            if node.attached():
                parent, name = node.parent, node.name
                self.inodes.detach(parent, name)
                self.invalidate_entry(parent, name)
            if node.staging is not None:
                node.staging.mark_clean()
            raise

    async def fsync(self, fh: int) -> None:
        await self.flush(fh)

    async def release(self, fh: int) -> None:
        handle = self.handles.pop(fh)
        if not isinstance(handle, FileHandle):
            return
        node = handle.node
        node.open_handles -= 1
        if handle.reader is not None:
            handle.reader.close()
        try:
            await self._upload(node)
        except NameTooLong:
            return                  # reported to close() by flush; the node is gone
        except FSError as exc:
            log.error("could not upload %s at close (%s); the data stays staged and is retried in the "
                      "background, at the next flush and at unmount", self._describe(node), exc)
            return
        self._drop_staging_if_idle(node)
        self.inodes.forget_if_unused(node)

    async def _upload(self, node: Node) -> None:
        staging = node.staging
        if staging is None or not (staging.dirty or not node.in_s3):
            return
        if not node.attached():
            staging.mark_clean()                # unlinked: nothing to keep
            return
        key = self.inodes.file_key(node)
        try:
            etag = await staging.upload(self.client, key, user_metadata(node.attrs), self._fetcher(node),
                                        self.cfg.multipart_size, self.cfg.parallel)
        except FSError:
            staging.failed = True
            raise
        if staging.failed:
            staging.failed = False
            log.warning("uploaded %s, whose earlier upload had failed", key)
        if node.staging is staging:
            node.attrs.etag = etag
            node.in_s3 = True
        parent = self.inodes.get(node.parent)
        if parent is not None:
            self._name_added(parent, node.name, node)

    def _drop_staging(self, node: Node) -> None:
        staging = node.staging
        if staging is not None:
            if staging.stream is not None and self.spawn is not None:
                stream, staging.stream = staging.stream, None
                self.spawn(stream.abort)            # the parts it sent are not wanted now
            staging.close()
            node.staging = None
        self.inodes.forget_if_unused(node)

    def _drop_staging_if_idle(self, node: Node) -> None:
        staging = node.staging
        if staging is not None and node.open_handles == 0 and not staging.dirty and \
                (node.in_s3 or not node.attached()):
            self._drop_staging(node)

    # ------------------------------------------------------------------ whole filesystem
    def dirty_nodes(self) -> list[Node]:
        return [n for n in self.inodes.nodes.values()
                if n.staging is not None and (n.staging.dirty or not n.in_s3) and n.attached()]

    async def drain(self) -> list[str]:
        """Upload every dirty file within `drain_timeout` seconds; returns the keys not
        uploaded (their data stays in the journal for the next mount)."""
        timeout = self.cfg.drain_timeout
        if self._drain_deadline is None:      # SIGTERM then unmount: one budget for both
            self._drain_deadline = trio.current_time() + timeout
        failed: list[str] = []
        with trio.move_on_at(self._drain_deadline) as scope:
            for node in self.dirty_nodes():
                try:
                    await self._upload(node)
                    self._drop_staging_if_idle(node)
                except FSError as exc:
                    key = self._describe(node)
                    log.error("could not upload %s: %s", key, exc)
                    failed.append(key)
        if scope.cancelled_caught:
            log.error("stopped uploading dirty data after %g s", timeout)
            failed.extend(self._describe(n) for n in self.dirty_nodes() if self._describe(n) not in failed)
        return failed

    _drain_deadline: float | None = None

    async def retry_failed_uploads(self) -> None:
        """Background task: upload files whose upload failed, with backoff, until cancelled.

        Each round tries the first such file; only when it succeeds (the store is
        back) are the others tried, so an outage costs one request per round."""
        delay = RETRY_INTERVAL
        while True:
            await trio.sleep(delay)
            pending = [n for n in self.dirty_nodes() if n.staging.failed]
            ok = True
            for node in pending:
                try:
                    await self._upload(node)
                except FSError as exc:
                    log.info("background retry of %s failed: %s", self._describe(node), exc)
                    ok = False
                    break
                self._drop_staging_if_idle(node)
                self.inodes.forget_if_unused(node)
            delay = RETRY_INTERVAL if ok else min(delay * 2, RETRY_MAX_INTERVAL)
