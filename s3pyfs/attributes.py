"""Attribute operations: setattr (chmod, chown, utimens, truncate), open(O_TRUNC), user xattrs.

Responsibility: change a node's attributes and store them in S3: with the
data at the next upload when the file has unsaved data, else by copying the
object onto itself with new headers (files: MetadataDirective REPLACE, with
the object's own system headers, `Attrs.headers`, re-sent so that its
Content-Type, Cache-Control, storage class, SSE-KMS key ... stay), or by
re-writing the `dir/` marker (directories: some stores cannot copy markers
and some drop their metadata, in which case directory attributes are kept
in memory).
Invariant: an attribute change that S3 refused is rolled back in memory for
xattrs; the S3 user-metadata limit (2 KiB) is checked before sending.
"""

from __future__ import annotations

import logging
import os
import stat

from .core import Core, now_ns
from .errors import FSError, InvalidArgument, IsADirectory, NoAttribute, NoSpace, NotSupported
from .files import FileData
from .inodes import ROOT_INODE, Node
from .metadata import DIR_CONTENT_TYPE, S3_USER_METADATA_LIMIT, metadata_size, user_metadata

log = logging.getLogger(__name__)

class Attributes:
    """Attribute changes of files and directories, stored in S3 as their object's owner.
    Owns nothing but `dir_metadata_kept`'s first answer (in core); uses `files` for files
    with unsaved data."""

    def __init__(self, core: Core, files: FileData):
        self.core = core
        self.files = files

    # ------------------------------------------------------------------ open(O_TRUNC)
    async def open_truncating(self, ino: int, flags: int):
        """Open, truncating first when asked: libfuse passes O_TRUNC to open
        (atomic_o_trunc), so the kernel sends no separate truncating setattr."""
        handle = await self.files.open(ino, flags)
        if flags & os.O_TRUNC and (flags & os.O_ACCMODE) != os.O_RDONLY:
            handle.wrote = True                 # its close commits the (maybe empty) new content
            if handle.node.attrs.size > 0:
                try:
                    await self.setattr(ino, size=0, fh=handle.fh)
                except BaseException:
                    await self.files.release(handle.fh)
                    raise
        return handle

    # ------------------------------------------------------------------ attributes
    async def setattr(self, ino: int, *, size: int | None = None, mode: int | None = None,
                      uid: int | None = None, gid: int | None = None, atime_ns: int | None = None,
                      mtime_ns: int | None = None, fh: int | None = None) -> Node:
        node = await self.core.getattr(ino)
        self.core.require_writable()
        now = now_ns()
        attrs = node.attrs
        if mode is not None:
            attrs.mode = stat.S_IFMT(attrs.mode) | stat.S_IMODE(mode)
        if uid is not None:
            attrs.uid = uid
        if gid is not None:
            attrs.gid = gid
        if atime_ns is not None:
            attrs.atime_ns = atime_ns
        if mtime_ns is not None:
            attrs.mtime_ns = mtime_ns
        if (atime_ns is not None or mtime_ns is not None) and node.staging is not None \
                and node.staging.stream is not None:
            node.staging.stream.explicit_times = True
        # every change asked for is a status change, even to the values already stored (chown
        # to the same owner): ctime moves, as on Linux, and is stored like the rest
        changed_meta = any(value is not None for value in (mode, uid, gid, atime_ns, mtime_ns))
        if changed_meta:
            attrs.ctime_ns = now
        if size is not None:
            if node.is_dir:
                raise IsADirectory(node.name)
            if not stat.S_ISREG(attrs.mode):
                raise InvalidArgument("only regular files can be truncated")
            if fh is not None:
                self.core.handles.file(fh).wrote = True
            staging = self.files.staging_for(node)
            await staging.truncate(size, self.core.fetcher(node))
            attrs.size = size
            if mtime_ns is None:
                attrs.mtime_ns = attrs.ctime_ns = now
            if fh is None and node.open_handles == 0:
                await self.files.upload(node)      # truncate(2) of a closed file persists now
                self.files.drop_staging_if_idle(node)
            return node
        if changed_meta:
            await self.persist_metadata(node)
        return node

    async def persist_metadata(self, node: Node) -> None:
        """Store a node's attributes (mode, owner, times, xattrs) in S3, as the owner of
        its object (no upload, rename or unlink of it runs meanwhile)."""
        async with self.core.owners.hold(node, lock=() if node.is_dir else (node,)):
            await self._persist_metadata_held(node)

    async def _persist_metadata_held(self, node: Node) -> None:
        if not node.attached() and node.ino != ROOT_INODE:
            return                              # unlinked meanwhile: nothing left to describe
        meta = user_metadata(node.attrs)
        if metadata_size(meta) > S3_USER_METADATA_LIMIT:
            raise NoSpace("attributes exceed the 2 KiB S3 metadata limit")
        if node.staging is not None and (node.staging.dirty or not node.in_s3):
            node.staging.journal_changed()      # a crash recovers the new attributes too
            await node.staging.journal_settled()
            return                              # uploaded with the data at the next flush
        if node.ino == ROOT_INODE:
            return                              # the mount root has no object of its own
        if node.is_dir:
            await self._persist_dir_metadata(node, meta)
            return
        key = self.core.inodes.file_key(node)
        node.attrs.etag = await self.core.client.copy(key, key, node.attrs.size, metadata=meta,
                                                 parallel=self.core.cfg.parallel,
                                                 headers=node.attrs.headers) or node.attrs.etag

    async def _persist_dir_metadata(self, node: Node, meta: dict[str, str]) -> None:
        marker = self.core.inodes.dir_prefix(node)
        if self.core.dir_metadata_kept is False and node.has_marker:
            # the store drops a marker's metadata: rewriting it would store nothing
            self.core.dir_attr_overrides[marker] = node.attrs.copy()
            return
        await self.core.client.put(marker, b"", meta, DIR_CONTENT_TYPE)
        node.has_marker = True
        if self.core.dir_metadata_kept is None:
            head = await self.core.client.head(marker)
            self.core.dir_metadata_kept = head is not None and head.metadata.get("mode") == meta["mode"]
            if not self.core.dir_metadata_kept:
                log.warning("this S3 backend drops metadata of directory markers; directory modes, owners "
                            "and times are kept in memory for this mount only")
        if not self.core.dir_metadata_kept:
            self.core.dir_attr_overrides[marker] = node.attrs.copy()

    # ------------------------------------------------------------------ xattrs
    async def getxattr(self, ino: int, name: str) -> bytes:
        if not name.startswith("user."):
            # only user.* can be stored (setxattr): the kernel's security.capability probe
            # before every write and ls's ACL probes cost no S3 request
            self.core.node(ino)
            raise NoAttribute(name)
        node = await self.core.getattr(ino)
        try:
            return node.attrs.xattrs[name]
        except KeyError:
            raise NoAttribute(name) from None

    async def listxattr(self, ino: int) -> list[str]:
        node = await self.core.getattr(ino)
        return sorted(node.attrs.xattrs)

    async def setxattr(self, ino: int, name: str, value: bytes) -> None:
        # XATTR_CREATE / XATTR_REPLACE are checked by pyfuse3 (with getxattr) before this runs
        self.core.require_writable()
        if not name.startswith("user."):
            raise NotSupported(f"only user.* attributes can be stored, not {name}")
        node = await self.core.getattr(ino)
        xattrs = node.attrs.xattrs
        old = xattrs.get(name)
        xattrs[name] = bytes(value)
        try:
            node.attrs.ctime_ns = now_ns()
            await self.persist_metadata(node)
        except FSError:
            if old is None:
                xattrs.pop(name, None)
            else:
                xattrs[name] = old
            raise

    async def removexattr(self, ino: int, name: str) -> None:
        self.core.require_writable()
        node = await self.core.getattr(ino)
        if name not in node.attrs.xattrs:
            raise NoAttribute(name)
        old = node.attrs.xattrs.pop(name)
        try:
            await self.persist_metadata(node)
        except FSError:
            node.attrs.xattrs[name] = old
            raise
