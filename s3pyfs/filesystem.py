"""POSIX semantics over S3 keys: the filesystem core, usable without FUSE.

Responsibility: every filesystem operation, in terms of the inode table,
handles, caches, the read path, the write path and the S3 client.  Names are
`str` (the adapter decodes bytes); errors are `errors.FSError`; nothing here
imports pyfuse3.
Invariants (see ARCHITECTURE.md for the full list):
  * Lookup counts: every method returning a `Node` as a directory entry
    (lookup, create, mkdir, mknod, symlink) adds one kernel lookup; the adapter
    calls `count_lookup` for each readdir entry the kernel accepted.
  * Data safety: written data lives in a `Staging` file until an upload
    succeeds; `flush`/`fsync` return only after that upload, or raise.  A file
    whose upload failed at `release` keeps its staging file and stays in the
    inode table (dirty) until a later flush or the unmount drain succeeds.
  * Local changes invalidate the stat cache for the names they touch before
    returning.
  * Every await is a trio checkpoint; state changes that must be atomic are
    done between awaits.
"""

from __future__ import annotations

import errno as E
import functools
import logging
import os
import stat
import time
from typing import Callable

from cachetools import LRUCache

from . import namespace
from .concurrency import run_all
from .errors import (Exists, FSError, InvalidArgument, IsADirectory, NameTooLong, NoAttribute, NoSpace,
                     NotADirectory, NotEmpty, NotFound, NotPermitted, NotSupported, ReadOnly)
from .handles import DirHandle, FileHandle, HandleTable
from .inodes import ROOT_INODE, InodeTable, Node
from .metadata import (DIR_CONTENT_TYPE, S3_USER_METADATA_LIMIT, Attrs, Defaults, attrs_from_object, metadata_size,
                       user_metadata)
from .reader import ObjectReader
from .s3client import ObjectInfo, S3Client
from .stat_cache import StatCache
from .writeback import Staging

log = logging.getLogger(__name__)

MAX_KEY_BYTES = 1024
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
XATTR_CREATE = 1
XATTR_REPLACE = 2
LISTING_HEADS = 32          # parallel HEADs while listing a directory


class Config:
    """What the core needs to know of the mount options."""

    def __init__(self, *, prefix: str = "", defaults: Defaults, read_only: bool = False,
                 stat_ttl: float = 5.0, cache_entries: int = 100_000, staging_dir: str = "/var/tmp",
                 multipart_size: int = 10 * 1024 * 1024, parallel: int = 8, root_mode: int = 0o755):
        self.prefix = prefix
        self.defaults = defaults
        self.read_only = read_only
        self.stat_ttl = stat_ttl
        self.cache_entries = cache_entries
        self.staging_dir = staging_dir
        self.multipart_size = multipart_size
        self.parallel = parallel
        self.root_mode = root_mode


def _now_ns() -> int:
    return time.time_ns()


class Filesystem:
    def __init__(self, client: S3Client, config: Config):
        self.client = client
        self.cfg = config
        self.cache = StatCache(config.stat_ttl, config.cache_entries)
        now = _now_ns()
        d = config.defaults
        root = Attrs(stat.S_IFDIR | config.root_mode, d.uid, d.gid, 0, now, now, now)
        self.inodes = InodeTable(root, config.prefix)
        self.handles = HandleTable()
        # directory attributes the backend would not keep on `dir/` markers (SeaweedFS)
        self.dir_attr_overrides: LRUCache = LRUCache(maxsize=max(1, config.cache_entries))
        self.dir_metadata_kept: bool | None = None
        # set by the FUSE adapter: drop a name from the kernel's dentry cache
        self.invalidate_entry: Callable[[int, str], None] = lambda parent, name: None

    # ------------------------------------------------------------------ helpers
    def node(self, ino: int) -> Node:
        node = self.inodes.get(ino)
        if node is None:
            raise NotFound(f"inode {ino} unknown")
        return node

    def _dir(self, ino: int) -> Node:
        node = self.node(ino)
        if not node.is_dir:
            raise NotADirectory(f"inode {ino} is not a directory")
        return node

    def _writable(self) -> None:
        if self.cfg.read_only:
            raise ReadOnly("mounted read-only")

    def _check_new_name(self, parent: Node, name: str) -> str:
        if not namespace.valid_name(name):
            raise InvalidArgument(f"name {name!r} cannot be stored")
        try:
            key = self.inodes.key_for(parent, name)
            encoded = key.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidArgument(f"name {name!r} is not valid UTF-8, which S3 keys need") from None
        if len(encoded) + 1 > MAX_KEY_BYTES:
            raise NameTooLong(f"key of {name!r} would exceed {MAX_KEY_BYTES} bytes")
        return key

    def _fresh(self, node: Node) -> bool:
        return node.staging is not None or not node.in_s3 or node.expires > time.monotonic()

    def _fetcher(self, node: Node):
        async def fetch(start: int, end: int) -> bytes:
            return await self.client.get_range(self.inodes.file_key(node), start, end)
        return fetch

    def _attrs_from_found(self, found: namespace.Found, key: str) -> Attrs:
        info = found.info
        if info is None:
            info = ObjectInfo(key + "/", 0, None, 0)
        attrs = attrs_from_object(key_is_dir=found.is_dir, size=0 if found.is_dir else info.size,
                                  etag=info.etag, last_modified_ns=info.last_modified_ns or _now_ns(),
                                  metadata=info.metadata, content_type=info.content_type,
                                  defaults=self.cfg.defaults)
        if found.is_dir:
            override = self.dir_attr_overrides.get(key + "/")
            if override is not None:
                attrs = override.copy()
        return attrs

    def _apply_found(self, parent: Node, name: str, found: namespace.Found) -> Node:
        key = self.inodes.key_for(parent, name)
        attrs = self._attrs_from_found(found, key)
        node = self.inodes.child(parent.ino, name)
        ttl = self.cfg.stat_ttl
        if node is not None and node.attrs.kind == attrs.kind:
            if node.staging is None:
                node.attrs = attrs
            node.expires = time.monotonic() + ttl
        else:
            node = self.inodes.add(parent.ino, name, attrs, ttl)
        node.has_marker = found.is_dir and found.info is not None and not found.legacy_dir_key
        node.legacy_dir_key = found.legacy_dir_key
        node.in_s3 = True
        if not attrs.is_symlink():
            node.symlink_target = None
        return node

    async def _resolve(self, parent: Node, name: str) -> Node | None:
        """The child `name` of `parent`, refreshed from S3 when stale; None if absent."""
        node = self.inodes.child(parent.ino, name)
        if node is not None and self._fresh(node):
            return node
        dir_prefix = self.inodes.dir_prefix(parent)
        found = await namespace.probe(self.client, self.cache, dir_prefix, name, self.cache.listing(dir_prefix))
        if found is None:
            if node is not None and node.open_handles == 0:
                self.inodes.detach(parent.ino, name)
            elif node is not None:
                return node      # open elsewhere: keep serving the handle's view
            return None
        return self._apply_found(parent, name, found)

    def count_lookup(self, node: Node) -> Node:
        node.lookups += 1
        return node

    # ------------------------------------------------------------------ lookups
    async def lookup(self, parent_ino: int, name: str) -> Node:
        parent = self._dir(parent_ino)
        if name == ".":
            return self.count_lookup(parent)
        if name == "..":
            return self.count_lookup(self.node(parent.parent or ROOT_INODE))
        if not namespace.valid_name(name):
            raise NotFound(name)
        node = await self._resolve(parent, name)
        if node is None:
            raise NotFound(name)
        return self.count_lookup(node)

    def forget(self, ino: int, count: int) -> None:
        self.inodes.forget(ino, count)

    async def getattr(self, ino: int) -> Node:
        node = self.node(ino)
        if not self._fresh(node) and node.attached() and node.ino != ROOT_INODE:
            parent = self.inodes.get(node.parent)
            if parent is not None:
                refreshed = await self._resolve(parent, node.name)
                if refreshed is None:
                    raise NotFound(f"{node.name} no longer exists")
                if refreshed is not node:
                    # replaced remotely by an object of another type; report it under this inode
                    node.attrs = refreshed.attrs
                    node.expires = refreshed.expires
        return node

    async def readlink(self, ino: int) -> str:
        node = await self.getattr(ino)
        if not node.attrs.is_symlink():
            raise InvalidArgument("not a symbolic link")
        if node.symlink_target is None:
            body = await self.client.get_all(self.inodes.file_key(node))
            node.symlink_target = body.decode("utf-8", "surrogateescape")
        return node.symlink_target

    # ------------------------------------------------------------------ directories
    async def opendir(self, ino: int) -> DirHandle:
        node = self._dir(ino)
        node.open_handles += 1
        return self.handles.add_dir(node)

    async def readdir(self, fh: int) -> list[tuple[str, Node]]:
        """The directory's entries (snapshot taken at the first call of this handle)."""
        handle = self.handles.dir(fh)
        if handle.entries is None:
            handle.entries = await self._list(handle.node)
        return handle.entries

    async def _list(self, directory: Node) -> list[tuple[str, Node]]:
        dir_prefix = self.inodes.dir_prefix(directory)
        listing = await namespace.list_directory(self.client, dir_prefix)
        self.cache.remember_listing(dir_prefix, listing)
        names = set(listing)
        for child in self.inodes.children_of(directory.ino):
            if not child.in_s3 or child.staging is not None:
                names.add(child.name)         # created here, upload pending
        resolved: dict[str, Node] = {}

        async def one(name: str) -> None:
            node = await self._resolve(directory, name)
            if node is not None:
                resolved[name] = node
        await run_all((functools.partial(one, name) for name in names), LISTING_HEADS)
        return sorted(resolved.items())

    async def releasedir(self, fh: int) -> None:
        handle = self.handles.pop(fh)
        if isinstance(handle, DirHandle):
            handle.node.open_handles -= 1
            self.inodes.forget_if_unused(handle.node)

    async def mkdir(self, parent_ino: int, name: str, mode: int, uid: int, gid: int) -> Node:
        self._writable()
        parent = self._dir(parent_ino)
        key = self._check_new_name(parent, name)
        if await self._resolve(parent, name) is not None:
            raise Exists(name)
        now = _now_ns()
        attrs = Attrs(stat.S_IFDIR | stat.S_IMODE(mode), uid, gid, 0, now, now, now)
        await self.client.put(key + "/", b"", user_metadata(attrs), DIR_CONTENT_TYPE)
        self.cache.invalidate(key + "/")
        node = self.inodes.add(parent.ino, name, attrs, self.cfg.stat_ttl)
        node.has_marker = True
        self._touch_dir(parent)
        return self.count_lookup(node)

    async def rmdir(self, parent_ino: int, name: str) -> None:
        self._writable()
        parent = self._dir(parent_ino)
        node = await self._resolve(parent, name)
        if node is None:
            raise NotFound(name)
        if not node.is_dir:
            raise NotADirectory(name)
        await self._require_empty(node)
        key = self.inodes.key_for(parent, name)
        await self._delete_dir_objects(key)
        self.dir_attr_overrides.pop(key + "/", None)
        self.cache.invalidate_tree(key + "/")
        self.inodes.detach(parent.ino, name)
        self._touch_dir(parent)

    async def _require_empty(self, node: Node) -> None:
        if any(child.in_s3 is False or child.staging is not None for child in self.inodes.children_of(node.ino)):
            raise NotEmpty(node.name)
        if not await namespace.is_empty_directory(self.client, self.inodes.dir_prefix(node)):
            raise NotEmpty(node.name)

    async def _delete_dir_objects(self, key: str) -> None:
        await self.client.delete_many([key + "/", key, key + namespace.FOLDER_SUFFIX])

    def _touch_dir(self, directory: Node) -> None:
        now = _now_ns()
        directory.attrs.mtime_ns = directory.attrs.ctime_ns = now
        self.cache.invalidate(self.inodes.dir_prefix(directory))

    # ------------------------------------------------------------------ creating names
    async def create(self, parent_ino: int, name: str, mode: int, flags: int, uid: int, gid: int) -> tuple[FileHandle, Node]:
        self._writable()
        parent = self._dir(parent_ino)
        key = self._check_new_name(parent, name)
        existing = await self._resolve(parent, name)
        if existing is not None:
            if flags & os.O_EXCL:
                raise Exists(name)
            if existing.is_dir:
                raise IsADirectory(name)
            self.count_lookup(existing)
            return await self.open(existing.ino, flags), existing
        now = _now_ns()
        attrs = Attrs(stat.S_IFREG | stat.S_IMODE(mode), uid, gid, 0, now, now, now)
        node = self.inodes.add(parent.ino, name, attrs, self.cfg.stat_ttl)
        node.in_s3 = False
        node.staging = Staging(self.cfg.staging_dir, 0, 0)
        node.staging.mark_dirty()           # an empty file must reach S3 too
        self.cache.invalidate(key)
        self._touch_dir(parent)
        self.count_lookup(node)
        return await self.open(node.ino, flags), node

    async def mknod(self, parent_ino: int, name: str, mode: int, rdev: int, uid: int, gid: int) -> Node:
        self._writable()
        parent = self._dir(parent_ino)
        key = self._check_new_name(parent, name)
        if await self._resolve(parent, name) is not None:
            raise Exists(name)
        if stat.S_IFMT(mode) == 0:
            mode |= stat.S_IFREG
        if stat.S_ISDIR(mode) or stat.S_ISLNK(mode):
            raise InvalidArgument("mknod cannot make directories or symlinks")
        now = _now_ns()
        attrs = Attrs(mode, uid, gid, 0, now, now, now, rdev=rdev)
        attrs.etag = await self.client.put(key, b"", user_metadata(attrs))
        self.cache.invalidate(key)
        node = self.inodes.add(parent.ino, name, attrs, self.cfg.stat_ttl)
        self._touch_dir(parent)
        return self.count_lookup(node)

    async def symlink(self, parent_ino: int, name: str, target: str, uid: int, gid: int) -> Node:
        self._writable()
        parent = self._dir(parent_ino)
        key = self._check_new_name(parent, name)
        if await self._resolve(parent, name) is not None:
            raise Exists(name)
        body = target.encode("utf-8", "surrogateescape")
        now = _now_ns()
        attrs = Attrs(stat.S_IFLNK | 0o777, uid, gid, len(body), now, now, now)
        attrs.etag = await self.client.put(key, body, user_metadata(attrs))
        self.cache.invalidate(key)
        node = self.inodes.add(parent.ino, name, attrs, self.cfg.stat_ttl)
        node.symlink_target = target
        self._touch_dir(parent)
        return self.count_lookup(node)

    async def link(self, ino: int, new_parent_ino: int, new_name: str) -> Node:
        raise NotPermitted("hard links cannot be stored in S3")

    async def unlink(self, parent_ino: int, name: str) -> None:
        self._writable()
        parent = self._dir(parent_ino)
        node = await self._resolve(parent, name)
        if node is None:
            raise NotFound(name)
        if node.is_dir:
            raise IsADirectory(name)
        key = self.inodes.key_for(parent, name)
        if node.in_s3:
            await self.client.delete(key)
        self.cache.invalidate(key)
        self.inodes.detach(parent.ino, name)
        if node.staging is not None and node.open_handles == 0:
            self._drop_staging(node)
        self._touch_dir(parent)

    # ------------------------------------------------------------------ rename
    async def rename(self, old_parent_ino: int, old_name: str, new_parent_ino: int, new_name: str,
                     flags: int = 0) -> None:
        self._writable()
        if flags & RENAME_EXCHANGE:
            raise InvalidArgument("RENAME_EXCHANGE is not supported")
        old_parent, new_parent = self._dir(old_parent_ino), self._dir(new_parent_ino)
        new_key = self._check_new_name(new_parent, new_name)
        src = await self._resolve(old_parent, old_name)
        if src is None:
            raise NotFound(old_name)
        if old_parent is new_parent and old_name == new_name:
            return
        dst = await self._resolve(new_parent, new_name)
        if dst is not None and flags & RENAME_NOREPLACE:
            raise Exists(new_name)
        if src.is_dir:
            ancestor = new_parent
            while ancestor.ino != ROOT_INODE:
                if ancestor is src:
                    raise InvalidArgument("cannot move a directory into itself")
                ancestor = self.node(ancestor.parent)
            if dst is not None:
                if not dst.is_dir:
                    raise NotADirectory(new_name)
                await self._require_empty(dst)
            await self._rename_dir(src, new_key)
            if dst is not None:
                await self._delete_dir_objects(new_key)
        else:
            if dst is not None and dst.is_dir:
                raise IsADirectory(new_name)
            await self._rename_file(src, new_key)
        old_key = self.inodes.key_for(old_parent, old_name)
        self.cache.invalidate_tree(old_key + "/")
        self.cache.invalidate_tree(new_key + "/")
        self.cache.invalidate(old_key)
        self.cache.invalidate(new_key)
        if dst is not None and dst.staging is not None and dst.open_handles == 0:
            self._drop_staging(dst)
        self.inodes.move(src, new_parent.ino, new_name)
        src.attrs.ctime_ns = _now_ns()
        self._touch_dir(old_parent)
        self._touch_dir(new_parent)

    async def _rename_file(self, node: Node, new_key: str) -> None:
        old_key = self.inodes.file_key(node)
        staging = node.staging
        if staging is not None and (staging.dirty or not node.in_s3):
            etag = await staging.upload(self.client, new_key, user_metadata(node.attrs), self._fetcher(node),
                                        self.cfg.multipart_size, self.cfg.parallel)
            node.attrs.etag = etag
        else:
            await self.client.copy(old_key, new_key, node.attrs.size, parallel=self.cfg.parallel)
        if node.in_s3:
            await self.client.delete(old_key)
        node.in_s3 = True

    async def _rename_dir(self, node: Node, new_key: str) -> None:
        old_prefix = self.inodes.dir_prefix(node)
        new_prefix = new_key + "/"
        for child in list(self.inodes.descendants(node)):     # pending data goes up first
            if child.staging is not None and (child.staging.dirty or not child.in_s3):
                await self._upload(child)
        objects = await namespace.all_keys_below(self.client, old_prefix)
        if not any(o.key == old_prefix for o in objects):
            marker = await self.client.head(old_prefix)
            if marker is not None:
                objects.append(marker)
        async def copy_one(obj: ObjectInfo) -> None:
            target = new_prefix + obj.key[len(old_prefix):]
            if obj.key.endswith("/") and obj.size == 0:
                head = await self.client.head(obj.key)     # markers are re-created: some
                meta = head.metadata if head else {}       # stores cannot copy `dir/` keys
                await self.client.put(target, b"", meta, DIR_CONTENT_TYPE)
            else:
                await self.client.copy(obj.key, target, obj.size, parallel=self.cfg.parallel)
        if not any(o.key == old_prefix for o in objects):
            await self.client.put(new_prefix, b"", user_metadata(node.attrs), DIR_CONTENT_TYPE)
        await run_all((functools.partial(copy_one, obj) for obj in objects), max(self.cfg.parallel, 16))
        # files first, then every directory level deepest first: stores with real
        # directories (SeaweedFS) keep a folder whose marker went before its children
        files = [o.key for o in objects if not o.key.endswith("/")]
        await self.client.delete_many(files)
        await self.client.delete_many(namespace.directory_keys_deepest_first(old_prefix, [o.key for o in objects]))
        override = self.dir_attr_overrides.pop(old_prefix, None)
        if override is not None:
            self.dir_attr_overrides[new_prefix] = override
        node.has_marker = True

    # ------------------------------------------------------------------ attributes
    async def setattr(self, ino: int, *, size: int | None = None, mode: int | None = None,
                      uid: int | None = None, gid: int | None = None, atime_ns: int | None = None,
                      mtime_ns: int | None = None, fh: int | None = None) -> Node:
        node = await self.getattr(ino)
        self._writable()
        now = _now_ns()
        attrs = node.attrs
        changed_meta = False
        if mode is not None:
            attrs.mode = stat.S_IFMT(attrs.mode) | stat.S_IMODE(mode)
            changed_meta = True
        if uid is not None:
            attrs.uid = uid
            changed_meta = True
        if gid is not None:
            attrs.gid = gid
            changed_meta = True
        if atime_ns is not None:
            attrs.atime_ns = atime_ns
            changed_meta = True
        if mtime_ns is not None:
            attrs.mtime_ns = mtime_ns
            changed_meta = True
        if changed_meta:
            attrs.ctime_ns = now
        if size is not None:
            if node.is_dir:
                raise IsADirectory(node.name)
            if not stat.S_ISREG(attrs.mode):
                raise InvalidArgument("only regular files can be truncated")
            staging = self._staging_for(node)
            await staging.truncate(size, self._fetcher(node))
            attrs.size = size
            if mtime_ns is None:
                attrs.mtime_ns = attrs.ctime_ns = now
            if fh is None and node.open_handles == 0:
                await self._upload(node)      # truncate(2) of a closed file persists now
                self._drop_staging_if_idle(node)
            return node
        if changed_meta:
            await self._persist_metadata(node)
        return node

    async def _persist_metadata(self, node: Node) -> None:
        """Store a node's attributes (mode, owner, times, xattrs) in S3."""
        meta = user_metadata(node.attrs)
        if metadata_size(meta) > S3_USER_METADATA_LIMIT:
            raise NoSpace("attributes exceed the 2 KiB S3 metadata limit")
        if node.staging is not None and (node.staging.dirty or not node.in_s3):
            return                              # uploaded with the data at the next flush
        if node.ino == ROOT_INODE:
            return                              # the mount root has no object of its own
        if node.is_dir:
            await self._persist_dir_metadata(node, meta)
            return
        key = self.inodes.file_key(node)
        node.attrs.etag = await self.client.copy(key, key, node.attrs.size, metadata=meta,
                                                 parallel=self.cfg.parallel) or node.attrs.etag
        self.cache.invalidate(key)

    async def _persist_dir_metadata(self, node: Node, meta: dict[str, str]) -> None:
        marker = self.inodes.dir_prefix(node)
        await self.client.put(marker, b"", meta, DIR_CONTENT_TYPE)
        node.has_marker = True
        if self.dir_metadata_kept is None:
            head = await self.client.head(marker)
            self.dir_metadata_kept = head is not None and head.metadata.get("mode") == meta["mode"]
            if not self.dir_metadata_kept:
                log.warning("this S3 backend drops metadata of directory markers; directory modes, owners "
                            "and times are kept in memory for this mount only")
        if not self.dir_metadata_kept:
            self.dir_attr_overrides[marker] = node.attrs.copy()

    # ------------------------------------------------------------------ xattrs
    async def getxattr(self, ino: int, name: str) -> bytes:
        node = await self.getattr(ino)
        try:
            return node.attrs.xattrs[name]
        except KeyError:
            raise NoAttribute(name) from None

    async def listxattr(self, ino: int) -> list[str]:
        node = await self.getattr(ino)
        return sorted(node.attrs.xattrs)

    async def setxattr(self, ino: int, name: str, value: bytes, flags: int = 0) -> None:
        self._writable()
        if not name.startswith("user."):
            raise NotSupported(f"only user.* attributes can be stored, not {name}")
        node = await self.getattr(ino)
        xattrs = node.attrs.xattrs
        if flags & XATTR_CREATE and name in xattrs:
            raise Exists(name)
        if flags & XATTR_REPLACE and name not in xattrs:
            raise NoAttribute(name)
        old = xattrs.get(name)
        xattrs[name] = bytes(value)
        try:
            node.attrs.ctime_ns = _now_ns()
            await self._persist_metadata(node)
        except FSError:
            if old is None:
                xattrs.pop(name, None)
            else:
                xattrs[name] = old
            raise

    async def removexattr(self, ino: int, name: str) -> None:
        self._writable()
        node = await self.getattr(ino)
        if name not in node.attrs.xattrs:
            raise NoAttribute(name)
        old = node.attrs.xattrs.pop(name)
        try:
            await self._persist_metadata(node)
        except FSError:
            node.attrs.xattrs[name] = old
            raise

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
            handle.reader = ObjectReader(self._fetcher(node), node.attrs.size,
                                         part=8 * 1024 * 1024, parallel=min(4, self.cfg.parallel))
        return handle

    def _staging_for(self, node: Node) -> Staging:
        if node.staging is None:
            size = node.attrs.size if node.in_s3 else 0
            node.staging = Staging(self.cfg.staging_dir, size, size)
            for handle in self.handles.files_of(node):
                if handle.reader is not None:
                    handle.reader.drop()
                    handle.reader = None
        return node.staging

    async def read(self, fh: int, offset: int, size: int) -> bytes:
        handle = self.handles.file(fh)
        node = handle.node
        if node.staging is not None:
            return await node.staging.read(offset, size, self._fetcher(node))
        if handle.reader is None:
            handle.reader = ObjectReader(self._fetcher(node), node.attrs.size)
        return await handle.reader.read(offset, size)

    async def write(self, fh: int, offset: int, data: bytes) -> int:
        handle = self.handles.file(fh)
        if not handle.writable:
            raise FSError("file not open for writing", errno=E.EBADF)
        node = handle.node
        staging = self._staging_for(node)
        written = await staging.write(offset, data, self._fetcher(node))
        node.attrs.size = staging.size
        node.attrs.mtime_ns = node.attrs.ctime_ns = _now_ns()
        return written

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
                node.staging.clean_generation = node.staging.generation
            raise

    async def fsync(self, fh: int) -> None:
        await self.flush(fh)

    async def release(self, fh: int) -> None:
        handle = self.handles.pop(fh)
        if not isinstance(handle, FileHandle):
            return
        node = handle.node
        node.open_handles -= 1
        try:
            await self._upload(node)
        except NameTooLong:
            return                  # reported to close() by flush; the node is gone
        except FSError as exc:
            log.error("could not upload %s at close (%s); the data stays staged and is retried at the next "
                      "flush or at unmount", self._describe(node), exc)
            return
        self._drop_staging_if_idle(node)
        self.inodes.forget_if_unused(node)

    def _describe(self, node: Node) -> str:
        try:
            return self.inodes.file_key(node)
        except KeyError:
            return f"inode {node.ino} (unlinked)"

    async def _upload(self, node: Node) -> None:
        staging = node.staging
        if staging is None or not (staging.dirty or not node.in_s3):
            return
        if not node.attached():
            staging.clean_generation = staging.generation      # unlinked: nothing to keep
            return
        key = self.inodes.file_key(node)
        etag = await staging.upload(self.client, key, user_metadata(node.attrs), self._fetcher(node),
                                    self.cfg.multipart_size, self.cfg.parallel)
        if node.staging is staging:
            node.attrs.etag = etag
            node.in_s3 = True
        self.cache.invalidate(key)

    def _drop_staging(self, node: Node) -> None:
        if node.staging is not None:
            node.staging.close()
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
        """Upload every dirty file; returns the keys that could not be uploaded."""
        failed: list[str] = []
        for node in self.dirty_nodes():
            try:
                await self._upload(node)
                self._drop_staging_if_idle(node)
            except FSError as exc:
                key = self._describe(node)
                log.error("could not upload %s: %s", key, exc)
                failed.append(key)
        return failed

    def statfs(self) -> dict[str, int]:
        block = 4096
        blocks = 2**50 // block      # 1 PiB: S3 has no fixed size; tools want a large, stable figure
        return {"f_bsize": block, "f_frsize": block, "f_blocks": blocks, "f_bfree": blocks,
                "f_bavail": blocks, "f_files": 2**32, "f_ffree": 2**32, "f_favail": 2**32,
                "f_namemax": MAX_KEY_BYTES - len(self.cfg.prefix)}

