"""Thin pyfuse3.Operations adapter over `filesystem.Filesystem`.

Responsibility: pyfuse3 types in and out (bytes names, EntryAttributes,
FileInfo, ReaddirToken), errors out as FUSEError; no filesystem logic.
Invariants:
  * No handler lets anything but FUSEError escape: an `FSError` becomes its
    errno; any other exception is logged once with its traceback and answered
    with EIO, because an escaping exception ends pyfuse3.main() and with it the
    mount.  Tests may set `reraise_unexpected` to see such bugs directly.
  * Every request carries one deadline (`S3Client.deadline`: `request_timeout`
    after its start or the mount's last answer from S3) to all S3 requests and
    lock waits made for it, so a hung endpoint ends it with EIO in that time;
    the kernel's immediate second try of a request that timed out gets only
    `_REPEAT_BOUND` seconds, so the system call gets one bound, not two.
  * Kernel attribute and entry timeouts equal the stat cache TTL, so the kernel
    never trusts an attribute longer than the core would.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import time
from collections.abc import Callable

import pyfuse3
import trio

from . import metrics
from .concurrency import Deadline, carry, drop
from .errors import FSError, RemoteTimeout
from .filesystem import Filesystem
from .inodes import ROOT_INODE, Node
from .metadata import reported_mode, reported_owner

log = logging.getLogger(__name__)


def _guard(handler):
    """Turn every failure of `handler` into a FUSEError (see module invariants);
    count every request and its errno (metrics.py), log one line per failure."""
    op = handler.__name__
    counters = metrics.counters

    @functools.wraps(handler)
    async def wrapper(self, *args, **kwargs):
        started = time.perf_counter()
        if self.before_first_request is not None:
            hook, self.before_first_request = self.before_first_request, None
            hook()
        deadline = self.new_deadline()
        if self._timed_out and deadline is not None:
            self._shorten_repeat(_repeat_key(op, args), deadline)
        token = carry(deadline)
        try:
            result = await handler(self, *args, **kwargs)
        except pyfuse3.FUSEError as exc:
            counters.fuse_done(op, started, exc.errno)
            raise
        except FSError as exc:
            counters.fuse_done(op, started, exc.errno)
            if isinstance(exc, RemoteTimeout) and self._progress is not None:
                self._note_timeout(_repeat_key(op, args))
            level = logging.DEBUG if exc.errno in _QUIET else logging.WARNING
            if log.isEnabledFor(level):
                log.log(level, "%s failed: errno=%s key=%s request_id=%s error=%s", op,
                        errno.errorcode.get(exc.errno, exc.errno), self._subject(op, args) or "-",
                        getattr(exc, "request_id", "") or "-", exc)
            raise pyfuse3.FUSEError(exc.errno) from None
        except Exception:
            counters.fuse_done(op, started, errno.EIO)
            log.exception("unexpected error in %s (key=%s); answering EIO", op, self._subject(op, args) or "-")
            if self.reraise_unexpected:
                raise
            raise pyfuse3.FUSEError(errno.EIO) from None
        finally:
            drop(token)
        counters.fuse_done(op, started)
        return result
    return wrapper


# handlers whose first argument is a file or directory handle, not an inode
_BY_HANDLE = {"read", "write", "flush", "fsync", "release", "readdir", "releasedir", "fsyncdir"}
# handlers whose second argument is a name in the directory given first
_WITH_NAME = {"lookup", "mknod", "mkdir", "unlink", "rmdir", "symlink", "rename", "create"}


# The kernel asks again at once after some failures: a LOOKUP that fails while revalidating a
# cached entry is followed by a fresh LOOKUP of the name, a failed read-ahead by a read of the
# page.  The same request (op, inode or handle, name) arriving within _REPEAT seconds of its
# timeout, with no answer from S3 since, is given only _REPEAT_BOUND seconds, so that the
# system call ends within one `request_timeout` (and that much more), not two.  It is still
# sent: a program that tries again at once, as the endpoint comes back, is answered.
_REPEAT = 2.0
_REPEAT_BOUND = 2.0


def _repeat_key(op: str, args: tuple) -> tuple:
    return op, args[0] if args else None, args[1] if op in _WITH_NAME and len(args) > 1 else None

_QUIET = {errno.ENOENT, errno.EEXIST, errno.ENOTEMPTY, errno.ENODATA, errno.ENOTSUP, errno.EROFS, errno.EPERM}


def _name(raw: bytes) -> str:
    return os.fsdecode(raw)


class Operations(pyfuse3.Operations):
    supports_dot_lookup = True
    enable_writeback_cache = False

    def __init__(self, fs: Filesystem, xattrs: bool = True):
        super().__init__()
        self.fs = fs
        # without use_xattr, ENOSYS: the kernel then stops forwarding any xattr request
        # (ls -l's security.selinux probe, write()'s security.capability probe) for good
        self.xattrs = xattrs
        self.reraise_unexpected = False
        self.timeout = fs.cfg.stat_ttl
        # one deadline per request (concurrency.Deadline): its S3 requests and waits end by it
        client = getattr(getattr(fs, "core", None), "client", None)
        self.new_deadline = client.deadline if client is not None else lambda: None
        self._progress = client.progress if client is not None else None
        # (op, inode or handle, name) -> trio time its request ended by a timeout (_REPEAT)
        self._timed_out: dict[tuple, float] = {}
        # called once, before the first request is served: the kernel has applied FUSE's
        # INIT reply by then, and no file has been opened yet (mount.py: read-ahead)
        self.before_first_request: Callable[[], None] | None = None
        fs.invalidate_entry = self._invalidate_entry
        fs.invalidate_entry_now = self._invalidate_entry_now
        fs.invalidate_attrs = self._invalidate_attrs

    def _note_timeout(self, repeat: tuple) -> None:
        now = trio.current_time()
        if len(self._timed_out) > 64:
            self._timed_out = {k: t for k, t in self._timed_out.items() if now - t < _REPEAT}
        self._timed_out[repeat] = now

    def _shorten_repeat(self, repeat: tuple, deadline: Deadline) -> None:
        """The kernel's second try of a request that just timed out (see _REPEAT) gets
        `_REPEAT_BOUND` seconds, unless S3 has answered the mount since."""
        failed = self._timed_out.get(repeat)
        if failed is None:
            return
        assert self._progress is not None       # _note_timeout records only with one
        if trio.current_time() - failed < _REPEAT and self._progress.last < failed:
            deadline.seconds = min(deadline.seconds, _REPEAT_BOUND)
        else:
            del self._timed_out[repeat]

    def _subject(self, op: str, args: tuple) -> str:
        """The S3 key a failed request concerned ('' if unknown).  Called only on
        failure: it walks the inode table."""
        if not args or op == "statfs":
            return ""
        try:
            if op in _BY_HANDLE:
                try:
                    node = self.fs.handles.file(args[0]).node
                except FSError:
                    node = self.fs.handles.dir(args[0]).node
            else:
                node = self.fs.inodes.get(args[0])
            if node is None or not node.attached():
                return ""
            if op in _WITH_NAME and len(args) > 1 and isinstance(args[1], bytes):
                return self.fs.inodes.key_for(node, _name(args[1]))
            return self.fs.inodes.dir_prefix(node) if node.is_dir else self.fs.inodes.file_key(node)
        except Exception:                       # unknown handle or inode: no key
            return ""

    @staticmethod
    def _invalidate_entry(parent: int, name: str) -> None:
        try:
            pyfuse3.invalidate_entry_async(parent, os.fsencode(name), ignore_enoent=True)
        except Exception:                     # not mounted (tests) or queue closed at unmount
            log.debug("could not invalidate kernel entry %s", name, exc_info=True)

    @staticmethod
    def _invalidate_entry_now(parent: int, name: str) -> None:
        """Blocking (core.forget_kernel_entry_now runs it in a worker thread)."""
        try:
            pyfuse3.invalidate_entry(parent, os.fsencode(name))
        except FileNotFoundError:
            pass                              # the kernel holds no such entry: nothing to forget
        except Exception:                     # not mounted (tests) or the session is ending
            log.debug("could not invalidate kernel entry %s", name, exc_info=True)

    @staticmethod
    def _invalidate_attrs(ino: int) -> None:
        # attributes only: no page locks are taken, so this cannot wait for a read in flight
        try:
            pyfuse3.invalidate_inode(ino, attr_only=True)
        except Exception:                     # not mounted (tests), or the kernel forgot the inode
            log.debug("could not invalidate kernel attributes of inode %d", ino, exc_info=True)

    # ---------------------------------------------------------------- attributes
    def _entry(self, node: Node) -> pyfuse3.EntryAttributes:
        a = node.attrs
        defaults = self.fs.cfg.defaults
        entry = pyfuse3.EntryAttributes()
        entry.st_ino = node.ino
        entry.generation = 0
        entry.entry_timeout = self.timeout
        # attributes typed from a listing but not yet read from the object: do not cache
        entry.attr_timeout = self.timeout if self.fs.fresh(node) else 0
        # the root's mode already comes from mp_umask (or umask) in mount.make_config
        entry.st_mode = a.mode if node.ino == ROOT_INODE else reported_mode(a, defaults)
        # one name per node (no hard links); a directory's count of subdirectories is not
        # known for sure (other clients, implicit directories), so it reports 1 as btrfs
        # does, which find and fts read as "unknown"; a node without a name (unlinked or
        # replaced while open) has none
        entry.st_nlink = 1 if node.attached() else 0
        entry.st_uid, entry.st_gid = reported_owner(a, defaults)
        entry.st_rdev = a.rdev
        entry.st_size = a.size
        entry.st_blksize = 128 * 1024
        entry.st_blocks = (a.size + 511) // 512
        entry.st_atime_ns = a.atime_ns
        entry.st_mtime_ns = a.mtime_ns
        entry.st_ctime_ns = a.ctime_ns
        return entry

    @_guard
    async def lookup(self, parent_inode, name, ctx=None):
        return self._entry(await self.fs.lookup(parent_inode, _name(name)))

    async def forget(self, inode_list):
        for ino, count in inode_list:
            try:
                self.fs.forget(ino, count)
            except Exception:
                log.exception("unexpected error in forget")

    @_guard
    async def getattr(self, inode, ctx=None):
        return self._entry(await self.fs.getattr(inode))

    @_guard
    async def setattr(self, inode, attr, fields, fh, ctx):
        node = await self.fs.setattr(
            inode,
            size=attr.st_size if fields.update_size else None,
            mode=attr.st_mode if fields.update_mode else None,
            uid=attr.st_uid if fields.update_uid else None,
            gid=attr.st_gid if fields.update_gid else None,
            atime_ns=attr.st_atime_ns if fields.update_atime else None,
            mtime_ns=attr.st_mtime_ns if fields.update_mtime else None,
            fh=fh)
        return self._entry(node)

    @_guard
    async def readlink(self, inode, ctx):
        return os.fsencode(await self.fs.readlink(inode))

    # ---------------------------------------------------------------- names
    @_guard
    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        return self._entry(await self.fs.mknod(parent_inode, _name(name), mode, rdev, ctx.uid, ctx.gid))

    @_guard
    async def mkdir(self, parent_inode, name, mode, ctx):
        return self._entry(await self.fs.mkdir(parent_inode, _name(name), mode & ~ctx.umask, ctx.uid, ctx.gid))

    @_guard
    async def unlink(self, parent_inode, name, ctx):
        await self.fs.unlink(parent_inode, _name(name))

    @_guard
    async def rmdir(self, parent_inode, name, ctx):
        await self.fs.rmdir(parent_inode, _name(name))

    @_guard
    async def symlink(self, parent_inode, name, target, ctx):
        return self._entry(await self.fs.symlink(parent_inode, _name(name), os.fsdecode(target), ctx.uid, ctx.gid))

    @_guard
    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        await self.fs.rename(parent_inode_old, _name(name_old), parent_inode_new, _name(name_new), flags)

    @_guard
    async def link(self, inode, new_parent_inode, new_name, ctx):
        return self._entry(await self.fs.link(inode, new_parent_inode, _name(new_name)))

    # ---------------------------------------------------------------- directories
    @_guard
    async def opendir(self, inode, ctx):
        return (await self.fs.opendir(inode)).fh

    @_guard
    async def readdir(self, fh, start_id, token):
        entries = await self.fs.readdir(fh)
        for index in range(start_id, len(entries)):
            name, node = entries[index]
            if node.ino not in self.fs.inodes.nodes:
                continue          # removed since the listing was taken
            self.fs.entry_handed_out(fh, node)
            if not pyfuse3.readdir_reply(token, os.fsencode(name), self._entry(node), index + 1):
                return
            self.fs.count_lookup(node)

    @_guard
    async def releasedir(self, fh):
        await self.fs.releasedir(fh)

    @_guard
    async def fsyncdir(self, fh, datasync):
        return None

    # ---------------------------------------------------------------- files
    @_guard
    async def open(self, inode, flags, ctx):
        node = self.fs.node(inode)
        previous_etag = node.page_cache_etag
        handle = await self.fs.open(inode, flags)
        if handle.direct_io:            # a newer version than other open handles read: past the cache
            return pyfuse3.FileInfo(fh=handle.fh, direct_io=True, keep_cache=True)
        # keep the kernel's page cache only while the object is unchanged
        keep = previous_etag is not None and previous_etag == node.attrs.etag and node.staging is None
        node.page_cache_etag = node.attrs.etag
        return pyfuse3.FileInfo(fh=handle.fh, keep_cache=keep)

    @_guard
    async def create(self, parent_inode, name, mode, flags, ctx):
        handle, node = await self.fs.create(parent_inode, _name(name), mode & ~ctx.umask, flags, ctx.uid, ctx.gid)
        return pyfuse3.FileInfo(fh=handle.fh, keep_cache=False), self._entry(node)

    @_guard
    async def read(self, fh, off, size):
        data = await self.fs.read(fh, off, size)
        metrics.counters.fuse_read_bytes += len(data)
        return data

    @_guard
    async def write(self, fh, off, buf):
        written = await self.fs.write(fh, off, buf)
        metrics.counters.fuse_written_bytes += written
        return written

    @_guard
    async def flush(self, fh):
        await self.fs.flush(fh)

    @_guard
    async def fsync(self, fh, datasync):
        await self.fs.fsync(fh)

    @_guard
    async def release(self, fh):
        await self.fs.release(fh)

    # ---------------------------------------------------------------- xattrs, misc
    def _require_xattrs(self) -> None:
        if not self.xattrs:
            raise pyfuse3.FUSEError(errno.ENOSYS)

    @_guard
    async def getxattr(self, inode, name, ctx):
        self._require_xattrs()
        return await self.fs.getxattr(inode, _name(name))

    @_guard
    async def setxattr(self, inode, name, value, ctx):
        self._require_xattrs()
        await self.fs.setxattr(inode, _name(name), value)

    @_guard
    async def listxattr(self, inode, ctx):
        self._require_xattrs()
        return [os.fsencode(n) for n in await self.fs.listxattr(inode)]

    @_guard
    async def removexattr(self, inode, name, ctx):
        self._require_xattrs()
        await self.fs.removexattr(inode, _name(name))

    @_guard
    async def access(self, inode, mode, ctx):
        return True       # default_permissions: the kernel checks mode bits itself

    @_guard
    async def statfs(self, ctx):
        data = pyfuse3.StatvfsData()
        for field, value in self.fs.statfs().items():
            setattr(data, field, value)
        return data

