"""File data operations: open, read, write, flush, fsync, release, drain.

Responsibility: connect handles to the read path (`reader.ObjectReader` for
clean objects) and the write path (`writeback.Staging` per written inode),
and decide when staged data goes to S3.
Invariants (data safety, see ARCHITECTURE.md):
  * `flush`/`fsync` return only after the upload succeeded, or raise.
  * A failed upload at `release` keeps the staging file and the node (dirty)
    for the next flush or the unmount drain; nothing is dropped silently.
  * A key the store refuses for good (too long for it, although within
    name_max/key_max) fails the flush with ENAMETOOLONG; the data goes to
    lost+found with a record of why (never away), and the name is gone from
    the kernel's cache before close()/fsync() answer.
  * Every staging file has a journal record while dirty (journal.py): the
    record names the key the data belongs to and is removed when the file
    is uploaded, unlinked or renamed away, so recovery never resurrects it.
  * A file whose upload failed is retried by `retry_failed_uploads` in the
    background (backoff up to `RETRY_MAX_INTERVAL`), besides at its next
    flush and at unmount.
  * Every upload runs as the file's owner (`core.owners`, ownership.py) and
    reads the key inside that hold; only handles that wrote commit.
  * A conflict (the object changed in S3 since the data's base version) moves
    the data to lost+found, once, and is never retried over the other version.
"""

from __future__ import annotations

import errno as E
import functools
import logging
import os
import stat

import trio

from . import journal, metrics, namespace
from .core import Core, now_ns
from .errors import Conflict, FSError, IsADirectory, NameTooLong, NotFound, Stale, StateDirError
from .handles import FileHandle
from .inodes import ROOT_INODE, Node
from .metadata import user_metadata
from .reader import Data, ObjectReader
from .streaming import Stream
from .writeback import Staging

log = logging.getLogger(__name__)

READ_PART = 8 * 1024 * 1024       # ranged GET size of sequential reads
READ_AHEAD_PARTS = 6             # read-ahead window: up to 48 MiB per handle
RETRY_INTERVAL = 2.0             # first background retry of a failed upload (seconds)
RETRY_MAX_INTERVAL = 30.0
DRAIN_PARALLEL = 4               # files uploaded at once by the unmount drain


class FileData:
    """Open files and their data: handles to the read path, staging files, uploads (as each
    file's owner, ownership.py), conflicts, the background retry and the unmount drain.
    Owns: every node's `staging` lifecycle and the drain's state; reads the namespace
    state through `core`."""

    def __init__(self, core: Core):
        self.core = core
        self._drain_deadline: float | None = None    # SIGTERM then unmount: one budget for both
        self._drain_conflicts: list[str] = []          # files the unmount drain sent to lost+found

    # ------------------------------------------------------------------ files
    async def open(self, ino: int, flags: int) -> FileHandle:
        node = self.core.node(ino)
        if node.is_dir:
            raise IsADirectory(node.name)
        writable = (flags & os.O_ACCMODE) != os.O_RDONLY
        if writable:
            self.core.require_writable()
        if not node.attrs.is_symlink() and not stat.S_ISREG(node.attrs.mode):
            raise FSError("special files cannot be opened on this filesystem", errno=E.ENXIO)
        newer = None
        if node.staging is None:
            newer = await self._revalidate_for_open(node)   # close-to-open: see the newest object
        handle = self.core.handles.add_file(node, writable)
        node.open_handles += 1
        if node.staging is None:
            handle.reader = self._new_reader(node, newer)
            handle.direct_io = newer is not None
        return handle

    async def _revalidate_for_open(self, node: Node) -> tuple[str | None, int] | None:
        """Close-to-open across mounts: one HEAD, whatever the stat cache says, so a file
        closed on another node reads as its new version, whole, from the first byte.

        With no handle open, a new version becomes the node's (and the kernel's cached
        size is dropped; operations.open drops its page cache).  While other handles still
        read the old version, the node and the kernel's page cache stay theirs: the new
        version, (etag, size), is returned for this handle alone, which then reads it past
        the page cache (direct I/O), so no reader ever sees pages of two versions."""
        if not node.in_s3 or not node.attached() or node.ino == ROOT_INODE:
            return None
        parent = self.core.inodes.get(node.parent)
        if parent is None:
            return None
        info = await self.core.client.head(self.core.inodes.file_key(node))
        if node.staging is not None or not node.attached():
            return None                             # written or renamed meanwhile: local wins
        if info is None:
            if node.open_handles == 0:
                self.core.inodes.detach(parent.ino, node.name)
                self.core.name_removed(parent, node.name)
                self.core.forget_kernel_entry(parent.ino, node.name)
            raise NotFound(f"{node.name} was removed")
        found = namespace.classify_file(info)
        if found.is_dir or (info.etag, info.size) == (node.attrs.etag, node.attrs.size):
            if found.is_dir:
                raise Stale(f"{node.name} was replaced by a directory")
            return None
        if node.open_handles > 0:
            return info.etag, info.size             # private to this handle (see above)
        refreshed = self.core.apply_found(parent, node.name, found)
        if refreshed is not node:                   # replaced by another type of object
            raise Stale(f"{node.name} was replaced")
        self.core.invalidate_attrs(node.ino)        # the kernel must not clip reads at the old size
        return None

    def _new_reader(self, node: Node, version: tuple[str | None, int] | None = None) -> ObjectReader:
        """A reader pinned to the node's version, or to `version` (etag, size) when given:
        a replaced object gives EIO, never a mix."""
        try:
            key = self.core.inodes.file_key(node)
        except KeyError:
            raise Stale(f"{node.name} was removed or replaced while open") from None
        etag, size = version if version is not None else (node.attrs.etag, node.attrs.size)
        store = self.core.disk_cache.bind(key, etag) if self.core.disk_cache else None
        return ObjectReader(self.core.fetcher(node), size, spawn=self.core.spawn, store=store,
                            part=READ_PART, max_ahead=READ_AHEAD_PARTS,
                            parallel=min(READ_AHEAD_PARTS, self.core.cfg.parallel), etag=etag,
                            budget=self.core.client.memory)

    def staging_for(self, node: Node) -> Staging:
        if node.staging is None:
            size = node.attrs.size if node.in_s3 else 0
            staging = Staging(self.core.journal.new_record(), size, size, node.attrs.etag if node.in_s3 else None,
                              base_key=self._key_or_none(node), absent=not node.in_s3)
            staging.on_change = functools.partial(self._journal_record, node, staging)
            node.staging = staging
            for handle in self.core.handles.files_of(node):
                if handle.reader is not None:
                    handle.reader.close()
                    handle.reader = None
        return node.staging

    def _journal_record(self, node: Node, staging: Staging) -> None:
        """(Re)write the journal record of a dirty staging file: what recovery needs."""
        if node.staging is not staging or not node.attached():
            staging.record.clear(now=True)  # unlinked or replaced: nothing to recover
            return
        staging.record.save({
            "key": self.core.inodes.file_key(node),
            "base_etag": staging.base_etag,
            "source_limit": staging.source_limit,
            "written_ranges": staging.written.ranges(),
            "metadata": user_metadata(node.attrs),
            "headers": node.attrs.headers,
            "uploads": sorted(staging.uploads),
        })

    async def read(self, fh: int, offset: int, size: int) -> Data:
        handle = self.core.handles.file(fh)
        node = handle.node
        if node.staging is not None:
            return await node.staging.read(offset, size, self.core.fetcher(node))
        if handle.reader is None:
            handle.reader = self._new_reader(node)
        # a version replaced after open gives EIO (Conflict), never a silent switch: the
        # kernel's page cache and size may already hold the version this handle opened
        return await handle.reader.read(offset, size)

    async def write(self, fh: int, offset: int, data: bytes) -> int:
        handle = self.core.handles.file(fh)
        if not handle.writable:
            raise FSError("file not open for writing", errno=E.EBADF)
        node = handle.node
        handle.wrote = True
        staging = self.staging_for(node)
        written = await staging.write(offset, data, self.core.fetcher(node))
        node.attrs.size = staging.size
        node.attrs.mtime_ns = node.attrs.ctime_ns = now_ns()
        self._stream_if_useful(node, staging)
        return written

    def _stream_if_useful(self, node: Node, staging: Staging) -> None:
        """Send full parts of a large, wholly local file while it is still being written."""
        part = self.core.cfg.multipart_size
        if self.core.spawn is None or staging.source_limit != 0 or staging.size < 2 * part or not node.attached():
            return
        if staging.stream is None:
            staging.stream = Stream(self.core.client, self.core.inodes.file_key(node), user_metadata(node.attrs), part,
                                    self.core.cfg.parallel, self.core.spawn, track=staging.track_upload,
                                    headers=node.attrs.headers)
            staging.stream.writer_end = staging.size
        staging.stream.kick(staging.fd)

    async def flush(self, fh: int) -> None:
        """close(): commits only what a handle that wrote left; a reader's close never
        completes a writer's streaming upload or publishes a partial object."""
        handle = self.core.handles.file(fh)
        if handle.wrote:
            await self._commit(handle.node)

    async def fsync(self, fh: int) -> None:
        """fsync(2) makes the file's data durable whichever descriptor asks (POSIX)."""
        await self._commit(self.core.handles.file(fh).node)

    async def _commit(self, node: Node) -> None:
        try:
            await self.upload(node)
        except (NameTooLong, Conflict) as exc:
            # the data is in lost+found and the name detached (_refused): once close() or
            # fsync() answers, no stat of the name may find the kernel's old entry
            detached = getattr(exc, "detached", None)
            if detached is not None and self.core.inodes.child(*detached) is None:
                await self.core.forget_kernel_entry_now(*detached)
            raise

    async def release(self, fh: int) -> None:
        handle = self.core.handles.pop(fh)
        if not isinstance(handle, FileHandle):
            return
        node = handle.node
        node.open_handles -= 1
        if handle.reader is not None:
            handle.reader.close()
        if handle.wrote:
            try:
                await self.upload(node)
            except (Conflict, NameTooLong):
                pass                    # in lost+found now, logged once by _refused
            except FSError as exc:
                log.error("could not upload %s at close (%s); the data stays staged and is retried in the "
                          "background, at the next flush and at unmount", self.core.describe(node), exc)
                return
        self.drop_staging_if_idle(node)
        self.core.inodes.forget_if_unused(node)

    @staticmethod
    def needs_upload(node: Node) -> bool:
        staging = node.staging
        return staging is not None and (staging.dirty or not node.in_s3)

    async def upload(self, node: Node) -> None:
        """Upload a file's staged data to its current key, as the file's owner: no rename,
        unlink or other upload of it (or rename of a directory above it) runs meanwhile."""
        if not self.needs_upload(node):
            return
        async with self.core.owners.hold(node, lock=(node,)):
            await self.upload_held(node)

    async def upload_held(self, node: Node) -> None:
        """`_upload` for a caller that owns the file (ownership.Owners)."""
        staging = node.staging
        if staging is None or not (staging.dirty or not node.in_s3):
            return
        if not node.attached():
            staging.mark_clean()                # unlinked: nothing to keep
            return
        key = self.core.inodes.file_key(node)        # read under ownership: stays true until we finish
        try:
            etag = await staging.upload(self.core.client, key, user_metadata(node.attrs), self.core.fetcher(node),
                                        self.core.cfg.multipart_size, self.core.cfg.parallel, headers=node.attrs.headers)
        except Conflict as exc:
            self._refused(node, staging, exc, f"conflict: {exc}", current_etag=exc.current_etag)
            metrics.counters.conflicts += 1
            raise
        except NameTooLong as exc:
            # the store will never take this key (no retry can succeed): keep the data
            self._refused(node, staging, exc, f"the store refuses the key: {exc}")
            raise
        except FSError:
            staging.failed = True
            raise
        if staging.failed:
            staging.failed = False
            log.warning("uploaded %s, whose earlier upload had failed", key)
        if node.staging is staging:
            node.attrs.etag = etag
            node.in_s3 = True
        parent = self.core.inodes.get(node.parent)
        if parent is not None:
            self.core.name_added(parent, node.name, node)

    def drop_staging(self, node: Node) -> None:
        staging = node.staging
        if staging is not None:
            node.staging = None
            stream, staging.stream = staging.stream, None
            if stream is not None and self.core.spawn is not None:
                # parts in flight still read the staging file: close it only after they ended
                async def abort_then_close() -> None:
                    try:
                        await stream.abort()
                    finally:
                        staging.close()
                self.core.spawn(abort_then_close)
            else:
                staging.close()
        self.core.inodes.forget_if_unused(node)

    def drop_staging_if_idle(self, node: Node) -> None:
        staging = node.staging
        if staging is not None and node.open_handles == 0 and not staging.dirty and \
                (node.in_s3 or not node.attached()) and not self.core.owners.is_busy(node):
            self.drop_staging(node)

    # ------------------------------------------------------------------ whole filesystem
    def dirty_nodes(self) -> list[Node]:
        return [n for n in self.core.inodes.nodes.values()
                if n.staging is not None and (n.staging.dirty or not n.in_s3) and n.attached()]

    async def drain(self) -> list[str]:
        """Upload every dirty file within `drain_timeout` seconds, a few at a time; returns
        the keys not uploaded (their data stays in the journal for the next mount)."""
        timeout = self.core.cfg.drain_timeout
        if self._drain_deadline is None:      # SIGTERM then unmount: one budget for both
            self._drain_deadline = trio.current_time() + timeout
        failed = self._drain_conflicts        # kept in lost+found by an earlier drain (SIGTERM)
        self.core.unmounting = True           # the mount is going: no more kernel invalidations
        limiter = trio.CapacityLimiter(max(1, min(self.core.cfg.parallel, DRAIN_PARALLEL)))

        async def one(node: Node) -> None:
            async with limiter:
                key = self.core.describe(node)
                try:
                    await self.upload(node)
                    self.drop_staging_if_idle(node)
                except Conflict:                # logged once, with where the data went
                    failed.append(f"{key} (changed in S3 meanwhile: kept in lost+found)")
                except NameTooLong:
                    failed.append(f"{key} (the store refuses the key: kept in lost+found)")
                except Exception as exc:        # noqa: BLE001 - one file's failure never ends the drain
                    log.error("could not upload %s: %s", key, exc, exc_info=not isinstance(exc, FSError))
                    failed.append(key)

        with trio.move_on_at(self._drain_deadline) as scope:
            async with trio.open_nursery() as nursery:
                for node in self.dirty_nodes():
                    nursery.start_soon(one, node)
        if scope.cancelled_caught:
            log.error("stopped uploading dirty data after %g s", timeout)
            return failed + [self.core.describe(n) for n in self.dirty_nodes() if self.core.describe(n) not in failed]
        return list(failed)

    async def retry_failed_uploads(self) -> None:
        """Background task: upload files whose upload failed, with backoff, until cancelled.

        Each round tries the first such file; only when it succeeds (the store is
        back) are the others tried, so an outage costs one request per round.  No
        failure of a file, expected or not, ends this loop (or the mount)."""
        delay = RETRY_INTERVAL
        while True:
            await trio.sleep(delay)
            pending = [n for n in self.dirty_nodes() if n.staging is not None and n.staging.failed]
            ok = True
            for node in pending:
                try:
                    await self.upload(node)
                except (Conflict, NameTooLong):
                    continue                    # in lost+found now (logged); the store answers
                except Exception as exc:        # noqa: BLE001
                    log.info("background retry of %s failed: %s", self.core.describe(node), exc,
                             exc_info=not isinstance(exc, FSError))
                    ok = False
                    break
                self.drop_staging_if_idle(node)
                self.core.inodes.forget_if_unused(node)
            delay = RETRY_INTERVAL if ok else min(delay * 2, RETRY_MAX_INTERVAL)

    # ------------------------------------------------------------------ conflicts (conditional commits)
    def _key_or_none(self, node: Node) -> str | None:
        try:
            return self.core.inodes.file_key(node)
        except KeyError:
            return None

    def _refused(self, node: Node, staging: Staging, exc: FSError, reason: str,
                 current_etag: str | None = None) -> None:
        """The data cannot go to its key for good: S3 holds a version this data was not
        based on (Conflict: never retried, never uploaded over the other version), or the
        store refuses the key (NameTooLong).  Keep the data in lost+found with a record
        naming `reason`, and let the name show what S3 holds again.  close()/fsync() get
        the raised error (EIO, ENAMETOOLONG)."""
        key = self.core.describe(node)
        entry = {"key": key, "base_etag": staging.base_etag, "current_etag": current_etag,
                 "source_limit": staging.source_limit, "written_ranges": staging.written.ranges(),
                 "metadata": user_metadata(node.attrs)}
        staging.record.pool = None          # the file moves away: it must not be recycled
        try:
            store = self.core.journal.store()
            try:
                where = journal.move_to_lost_and_found(store, staging.record, entry, reason)
            finally:
                store.close()
        except (OSError, FSError, StateDirError) as error:
            where = f"nowhere ({getattr(error, 'strerror', None) or error}; it stays in {staging.record.data_path})"
        staging.fd = -1                     # closed by the move
        staging.failed = False
        staging.mark_clean()
        parent = self.core.inodes.get(node.parent) if node.attached() else None
        if parent is not None:              # the next lookup finds the version that won
            name = node.name
            self.core.inodes.detach(parent.ino, name)
            self.core.cache.invalidate_tree(self.core.inodes.dir_prefix(parent))
            self.core.forget_kernel_entry(parent.ino, name)
            exc.detached = (parent.ino, name)        # for a caller that must wait for the kernel
        self.drop_staging(node)
        log.error("not uploading %s: %s; the local data is kept in %s", key, exc, where)
