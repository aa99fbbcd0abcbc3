"""POSIX semantics over S3 keys: the filesystem core, usable without FUSE.

Responsibility: the namespace operations (lookup, readdir, mkdir, rmdir,
create, mknod, symlink, unlink, rename, statfs) on top of the attribute and
file operations it inherits (attributes.py, files.py, core.py).  Names are
`str` (the adapter decodes bytes); errors are `errors.FSError`; nothing here
imports pyfuse3.
Invariants:
  * rename copies every key before deleting any, so an interrupted rename
    leaves both names, never neither; dirty files below a renamed directory
    are uploaded first.  A renamed object keeps its system headers
    (Content-Type included, whatever the new name: s3fs re-derives it from the
    new name instead), storage class and SSE-KMS key.
    A directory's keys move in dirrename.py (intent record; a failed copy
    phase is undone, a failed delete phase finished by the same rename
    retried or by the next mount).
  * A new regular file gets its Content-Type from its name (content_types.py).
  * Every await is a trio checkpoint; bookkeeping that must be atomic
    (inode table moves, cache invalidation) happens between awaits.
  * readdir answers from one listing snapshot per handle.  Headers are fetched
    through `core.resolve*` only (one fetch per name at a time), also those
    fetched ahead of a tree walk (`_prefetch`), so a prefetched node is an
    ordinary node: fresh for stat_ttl, then fetched or revalidated again.
"""

from __future__ import annotations

import functools
import logging
import os
import stat
import time

import trio

from . import dirrename, namespace
from .attributes import Attributes
from .concurrency import Job, run_all
from .content_types import content_type_for
from .core import Config, Core, now_ns
from .disk_cache import DiskCache
from .errors import (
    Exists,
    FSError,
    InvalidArgument,
    IsADirectory,
    NameTooLong,
    NotADirectory,
    NotEmpty,
    NotFound,
    NotPermitted,
    RenamedElsewhere,
)
from .files import FileData
from .handles import DirHandle, FileHandle
from .inodes import ROOT_INODE, Node
from .journal import Journal
from .metadata import DIR_CONTENT_TYPE, Attrs, user_metadata
from .reader import Data
from .s3client import S3Client
from .stat_cache import ListedEntry

log = logging.getLogger(__name__)

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
LISTING_HEADS = 32          # parallel HEADs while listing a directory
MAX_SPECIAL_FILE_SIZE = 4096  # larger objects cannot be symlinks (PATH_MAX) or FIFOs
TREE_LISTING_LIMIT = 20_000   # keys of one recursive listing that primes subdirectory listings
PREFETCH_LIMIT = 256          # files whose headers one directory's prefetch fetches ahead of a walk


class Filesystem:
    """The filesystem core: POSIX namespace operations here, composed with the services
    that own the rest (see ARCHITECTURE.md, "Ownership"):

      core   (core.Core)              inode and handle tables, caches, the S3 client, name
                                      resolution, the per-file owners (ownership.Owners)
      files  (files.FileData)         open files, staging, uploads, conflicts, retry, drain
      attrs  (attributes.Attributes)  setattr, xattrs, metadata copies

    Every service reads and changes the tables only through `core`; none holds a
    reference to this class.  The methods below the namespace operations only forward,
    so the FUSE adapter, metrics and tests see one object."""

    def __init__(self, client: S3Client, config: Config, disk_cache: DiskCache | None = None,
                 journal: Journal | None = None):
        self.core = Core(client, config, disk_cache, journal)
        self.files = FileData(self.core)
        self.attrs = Attributes(self.core, self.files)
        self._dir_renames_state: dirrename.DirRenames | None = None

    # ------------------------------------------------------------------ the services' state, for
    # the adapter, mount.py, metrics and tests
    client = property(lambda self: self.core.client)
    cfg = property(lambda self: self.core.cfg)
    inodes = property(lambda self: self.core.inodes)
    handles = property(lambda self: self.core.handles)
    cache = property(lambda self: self.core.cache)
    journal = property(lambda self: self.core.journal)
    disk_cache = property(lambda self: self.core.disk_cache)

    @property
    def spawn(self):
        return self.core.spawn

    @spawn.setter
    def spawn(self, value) -> None:
        self.core.spawn = value

    @property
    def invalidate_entry(self):
        return self.core.invalidate_entry

    @invalidate_entry.setter
    def invalidate_entry(self, value) -> None:
        self.core.invalidate_entry = value

    @property
    def invalidate_entry_now(self):
        return self.core.invalidate_entry_now

    @invalidate_entry_now.setter
    def invalidate_entry_now(self, value) -> None:
        self.core.invalidate_entry_now = value

    @property
    def invalidate_attrs(self):
        return self.core.invalidate_attrs

    @invalidate_attrs.setter
    def invalidate_attrs(self, value) -> None:
        self.core.invalidate_attrs = value

    def node(self, ino: int) -> Node:
        return self.core.node(ino)

    def fresh(self, node: Node) -> bool:
        return self.core.fresh(node)

    def count_lookup(self, node: Node) -> Node:
        return self.core.count_lookup(node)

    async def getattr(self, ino: int) -> Node:
        return await self.core.getattr(ino)

    # ------------------------------------------------------------------ files and attributes
    async def open(self, ino: int, flags: int) -> FileHandle:
        return await self.attrs.open_truncating(ino, flags)

    async def read(self, fh: int, offset: int, size: int) -> Data:
        return await self.files.read(fh, offset, size)

    async def write(self, fh: int, offset: int, data: bytes) -> int:
        return await self.files.write(fh, offset, data)

    async def flush(self, fh: int) -> None:
        await self.files.flush(fh)

    async def fsync(self, fh: int) -> None:
        await self.files.fsync(fh)

    async def release(self, fh: int) -> None:
        await self.files.release(fh)

    def dirty_nodes(self) -> list[Node]:
        return self.files.dirty_nodes()

    async def drain(self) -> list[str]:
        return await self.files.drain()

    async def retry_failed_uploads(self) -> None:
        await self.files.retry_failed_uploads()

    async def setattr(self, ino: int, **changes) -> Node:
        return await self.attrs.setattr(ino, **changes)

    async def getxattr(self, ino: int, name: str) -> bytes:
        return await self.attrs.getxattr(ino, name)

    async def listxattr(self, ino: int) -> list[str]:
        return await self.attrs.listxattr(ino)

    async def setxattr(self, ino: int, name: str, value: bytes) -> None:
        await self.attrs.setxattr(ino, name, value)

    async def removexattr(self, ino: int, name: str) -> None:
        await self.attrs.removexattr(ino, name)

    # ------------------------------------------------------------------ lookups
    async def lookup(self, parent_ino: int, name: str) -> Node:
        parent = self.core.dir_node(parent_ino)
        if name == ".":
            return self.core.count_lookup(parent)
        if name == "..":
            return self.core.count_lookup(self.core.node(parent.parent or ROOT_INODE))
        if not namespace.valid_name(name):
            raise NotFound(name)
        node = await self.core.resolve(parent, name)
        if node is None:
            # a name too long to be created answers ENAMETOOLONG, as local filesystems do (so
            # open(O_CREAT), mkdir, link ... of it fail before any data); objects another client
            # stored under a longer name are still found above
            raise self.core.name_too_long(parent, name) or NotFound(name)
        return self.core.count_lookup(node)

    def forget(self, ino: int, count: int) -> None:
        self.core.inodes.forget(ino, count)

    async def readlink(self, ino: int) -> str:
        node = await self.core.getattr(ino)
        if not node.attrs.is_symlink():
            raise InvalidArgument("not a symbolic link")
        if node.symlink_target is None:
            # the target is the object's body: never fetch more than the kernel can take
            # (PATH_MAX, terminating NUL included), whatever size the object claims: ENAMETOOLONG
            PATH_MAX = 4096
            if node.attrs.size >= PATH_MAX:
                raise NameTooLong(f"symbolic link target of {node.attrs.size} bytes (limit {PATH_MAX - 1})")
            body: bytes | bytearray = b""
            if node.attrs.size > 0:
                body = await self.core.client.get_range(self.core.inodes.file_key(node), 0, PATH_MAX, etag=node.attrs.etag)
            if len(body) >= PATH_MAX:
                raise NameTooLong(f"symbolic link target of more than {PATH_MAX - 1} bytes")
            node.symlink_target = body.decode("utf-8", "surrogateescape")
        return node.symlink_target

    # ------------------------------------------------------------------ directories
    async def opendir(self, ino: int) -> DirHandle:
        node = self.core.dir_node(ino)
        node.open_handles += 1
        return self.core.handles.add_dir(node)

    async def readdir(self, fh: int) -> list[tuple[str, Node]]:
        """The directory's entries (snapshot taken at the first call of this handle)."""
        handle = self.core.handles.dir(fh)
        if handle.entries is None:
            handle.entries, handle.verified = await self._list(handle.node)
        return handle.entries

    def entry_handed_out(self, fh: int, node: Node) -> None:
        """readdir gives `node` to the kernel now.  If the handle's snapshot verified it, its
        attributes count as fresh from now: `ls -l` stats each entry right after reading it,
        and handing out a snapshot of 10,000 entries takes longer than `stat_ttl`."""
        handle = self.core.handles.dir(fh)
        if node.ino in handle.verified and node.in_s3 and node.staging is None:
            node.expires = max(node.expires, time.monotonic() + self.core.cfg.stat_ttl)

    async def _list(self, directory: Node) -> tuple[list[tuple[str, Node]], frozenset[int]]:
        """The entries, sorted, and the inodes whose headers this listing verified."""
        dir_prefix = self.core.inodes.dir_prefix(directory)
        listed_at, listing = await self._listing_for_readdir(dir_prefix)
        if self.core.spawn is not None and self.core.cache.was_primed(dir_prefix):
            # served from an ancestor's recursive listing: a tree walk (find, du, ls -R) is
            # under way and reads this directory's subdirectories and its siblings next
            parent = self.core.inodes.get(directory.parent) if directory.attached() else None
            self.core.spawn(self._prefetch, directory, "")
            if parent is not None:
                self.core.spawn(self._prefetch, parent, directory.name)
        names = set(listing)
        for child in self.core.inodes.children_of(directory.ino):
            if not child.in_s3 or child.staging is not None:
                names.add(child.name)         # created here, upload pending
        resolved: dict[str, Node] = {}
        to_head, to_verify = [], []
        for name in names:
            node = self.core.inodes.child(directory.ino, name)
            entry = listing.get(name)
            if node is not None and (self.core.fresh(node) or self.core.revalidate_from_listing(node, entry, listed_at)):
                resolved[name] = node
            elif self.core.spawn is not None and entry is not None and \
                    (entry.is_dir or entry.size > MAX_SPECIAL_FILE_SIZE):
                # the type is certain (directory, or too large for a symlink or a FIFO):
                # answer now, fetch the headers in the background
                resolved[name] = self.core.node_from_listing(directory, name, entry)
                to_verify.append(name)
            else:
                to_head.append(name)

        async def one(name: str) -> None:
            entry = listing.get(name)
            if entry is not None and not entry.is_dir:
                node = await self.core.resolve_listed_file(directory, name)     # one HEAD, no probing
            else:
                node = await self.core.resolve(directory, name)
            if node is not None:
                resolved[name] = node
        await run_all((functools.partial(one, name) for name in to_head), LISTING_HEADS)
        # a large directory takes longer to list than stat_ttl: what it verified counts as
        # fresh from now, so the stat() calls that follow a readdir (ls -l) fetch nothing again
        fresh_until = time.monotonic() + self.core.cfg.stat_ttl
        unverified = set(to_verify)
        verified = frozenset(node.ino for name, node in resolved.items() if name not in unverified)
        for node in resolved.values():
            if node.ino in verified and node.in_s3 and node.staging is None:
                node.expires = max(node.expires, fresh_until)
        if to_verify:
            assert self.core.spawn is not None    # names are only left to verify with a spawn
            self.core.spawn(self._verify, directory, to_verify)
        return sorted(resolved.items()), verified

    async def _listing_for_readdir(self, dir_prefix: str) -> tuple[float, dict[str, ListedEntry]]:
        """(monotonic time it was taken, the directory's listing), cached or fresh."""
        for prefix, running in list(self.core._tree_listings.items()):
            if dir_prefix != prefix and dir_prefix.startswith(prefix):
                await running.wait()              # an ancestor's recursive listing covers this one
        cached = self.core.cache.timed_listing(dir_prefix, max_age=self.core.cfg.stat_ttl)
        if cached is not None:
            return cached[0], dict(cached[1])
        listed_at = time.monotonic()
        listing = await namespace.list_directory(self.core.client, dir_prefix)
        self.core.cache.remember_listing(dir_prefix, listing)
        subdirs = [dir_prefix + name + "/" for name, entry in listing.items() if entry.is_dir]
        cache = self.core.cache
        if self.core.spawn is not None and cache.enabled and \
                any(cache.listing(p, max_age=self.core.cfg.stat_ttl) is None for p in subdirs):
            self.core._tree_listings[dir_prefix] = trio.Event()
            self.core.spawn(self._list_tree, dir_prefix)
        return listed_at, dict(listing)

    async def _list_tree(self, dir_prefix: str) -> None:
        """One recursive listing instead of one per directory, for find/du/ls -R (background)."""
        changes = self.core.cache.changes
        try:
            tree = await namespace.list_tree(self.core.client, dir_prefix, TREE_LISTING_LIMIT)
        except FSError as exc:
            log.debug("recursive listing of %s failed: %s", dir_prefix, exc)
            tree = None
        finally:
            self.core._tree_listings.pop(dir_prefix).set()
        if tree is None or changes != self.core.cache.changes:
            return                                # too large, failed, or raced a local change
        for prefix, entries in tree.items():
            if prefix != dir_prefix and self.core.cache.listing(prefix, max_age=self.core.cfg.stat_ttl) is None:
                self.core.cache.remember_listing(prefix, entries, primed=True)

    async def _prefetch(self, directory: Node, after: str) -> None:
        """Fetch the headers of the files in `directory`'s subdirectories named after
        `after`, in name order (background, bounded: the subdirectories not prefetched yet,
        up to PREFETCH_LIMIT files; a sliding window as the walk moves on), from
        their cached listings, so that a walk's readdir of each finds fresh nodes instead
        of waiting for one round of HEADs there.  Through `core.resolve_listed_file`: a
        name is fetched once, whoever asks first.  Directories are left to their parent's
        readdir (typed by the listing, headers in the background: `_verify`); the window
        is small so that what is fetched is still fresh (stat_ttl) when the walk gets there."""
        jobs: list[Job] = []
        subdirs = sorted((n for n in self.core.inodes.children_of(directory.ino) if n.is_dir and n.name > after),
                         key=lambda n: n.name)
        for sub in subdirs:
            if len(jobs) >= PREFETCH_LIMIT:
                break
            prefix = self.core.inodes.dir_prefix(sub)
            listing = self.core.cache.listing(prefix, max_age=self.core.cfg.stat_ttl)
            if listing is None or not self.core.cache.claim_prefetch(prefix):
                continue                          # not listed, or done already (once per stat_ttl)
            for name, entry in sorted(listing.items()):
                node = self.core.inodes.child(sub.ino, name)
                if not entry.is_dir and (node is None or not self.core.fresh(node)) and len(jobs) < PREFETCH_LIMIT:
                    jobs.append(functools.partial(self._fetch_one, sub, name))

        try:
            await run_all(jobs, LISTING_HEADS)
        except (FSError, KeyError) as exc:      # what is missing is fetched when asked for
            log.debug("prefetch below %s stopped: %s", directory.name, exc)

    async def _fetch_one(self, directory: Node, name: str) -> None:
        if directory.attached():
            await self.core.resolve_listed_file(directory, name)

    async def _verify(self, directory: Node, names: list[str]) -> None:
        """Fetch the headers of names a listing returned (background, bounded)."""
        async def one(name: str) -> None:
            if directory.attached():
                await self.core.resolve(directory, name)
        try:
            await run_all((functools.partial(one, name) for name in names), LISTING_HEADS)
        except (FSError, KeyError) as exc:     # the entries stay stale; getattr retries
            log.debug("background HEADs in %s stopped: %s", directory.name, exc)

    async def releasedir(self, fh: int) -> None:
        handle = self.core.handles.pop(fh)
        if isinstance(handle, DirHandle):
            handle.node.open_handles -= 1
            for _name, child in handle.entries or ():
                self.core.inodes.forget_if_unused(child)     # entries the kernel never took
            self.core.inodes.forget_if_unused(handle.node)

    async def mkdir(self, parent_ino: int, name: str, mode: int, uid: int, gid: int) -> Node:
        self.core.require_writable()
        parent = self.core.dir_node(parent_ino)
        key = self.core.check_new_name(parent, name)
        if await self.core.resolve(parent, name) is not None:
            raise Exists(name)
        now = now_ns()
        attrs = Attrs(stat.S_IFDIR | stat.S_IMODE(mode), uid, gid, 0, now, now, now)
        async with self.core.owners.hold(parent):            # not while a directory above moves
            key = self.core.inodes.key_for(parent, name)
            await self.core.client.put(key + "/", b"", user_metadata(attrs), DIR_CONTENT_TYPE)
        node = self.core.inodes.add(parent.ino, name, attrs, self.core.cfg.stat_ttl)
        node.has_marker = True
        self.core.name_added(parent, name, node)
        self.core.cache.remember_listing(key + "/", {})        # new, hence empty
        self.core.touch_dir(parent)
        return self.core.count_lookup(node)

    async def rmdir(self, parent_ino: int, name: str) -> None:
        self.core.require_writable()
        parent = self.core.dir_node(parent_ino)
        node = await self.core.resolve(parent, name)
        if node is None:
            raise NotFound(name)
        if not node.is_dir:
            raise NotADirectory(name)
        async with self.core.owners.hold(parent, node):
            if self.core.inodes.child(parent.ino, name) is not node:
                raise NotFound(name)                    # renamed away meanwhile
            await self._require_empty(node)
            key = self.core.inodes.key_for(parent, name)
            await self._delete_dir_objects(key)
        self.core.dir_attr_overrides.pop(key + "/", None)
        self.core.name_removed(parent, name)
        self.core.inodes.detach(parent.ino, name)
        self.core.touch_dir(parent)

    async def _require_empty(self, node: Node) -> None:
        if any(child.in_s3 is False or child.staging is not None for child in self.core.inodes.children_of(node.ino)):
            raise NotEmpty(node.name)
        if not await namespace.is_empty_directory(self.core.client, self.core.inodes.dir_prefix(node)):
            raise NotEmpty(node.name)

    async def _delete_dir_objects(self, key: str) -> None:
        await self.core.client.delete_many([key + "/", key, key + namespace.FOLDER_SUFFIX])

    # ------------------------------------------------------------------ creating names
    async def create(self, parent_ino: int, name: str, mode: int, flags: int, uid: int, gid: int) -> tuple[FileHandle, Node]:
        self.core.require_writable()
        parent = self.core.dir_node(parent_ino)
        self.core.check_new_name(parent, name)
        existing = await self.core.resolve(parent, name)
        if existing is not None:
            if flags & os.O_EXCL:
                raise Exists(name)
            if existing.is_dir:
                raise IsADirectory(name)
            self.core.count_lookup(existing)
            return await self.attrs.open_truncating(existing.ino, flags), existing
        now = now_ns()
        attrs = Attrs(stat.S_IFREG | stat.S_IMODE(mode), uid, gid, 0, now, now, now,
                      headers={"ContentType": content_type_for(name)})
        node = self.core.inodes.add(parent.ino, name, attrs, self.core.cfg.stat_ttl)
        node.in_s3 = False
        self.core.name_added(parent, name, node)
        staging = self.files.staging_for(node)
        staging.mark_dirty()                    # an empty file must reach S3 too
        self.core.touch_dir(parent)
        self.core.count_lookup(node)
        handle = await self.attrs.open_truncating(node.ino, flags)
        handle.wrote = True                     # its close makes the object, even when empty
        await staging.journal_settled()         # its record is on disk before create answers
        return handle, node

    async def mknod(self, parent_ino: int, name: str, mode: int, rdev: int, uid: int, gid: int) -> Node:
        self.core.require_writable()
        parent = self.core.dir_node(parent_ino)
        key = self.core.check_new_name(parent, name)
        if await self.core.resolve(parent, name) is not None:
            raise Exists(name)
        if stat.S_IFMT(mode) == 0:
            mode |= stat.S_IFREG
        if stat.S_ISDIR(mode) or stat.S_ISLNK(mode):
            raise InvalidArgument("mknod cannot make directories or symlinks")
        now = now_ns()
        attrs = Attrs(mode, uid, gid, 0, now, now, now, rdev=rdev)
        attrs.etag = await self.core.client.put(key, b"", user_metadata(attrs))
        node = self.core.inodes.add(parent.ino, name, attrs, self.core.cfg.stat_ttl)
        self.core.name_added(parent, name, node)
        self.core.touch_dir(parent)
        return self.core.count_lookup(node)

    async def symlink(self, parent_ino: int, name: str, target: str, uid: int, gid: int) -> Node:
        self.core.require_writable()
        parent = self.core.dir_node(parent_ino)
        key = self.core.check_new_name(parent, name)
        if await self.core.resolve(parent, name) is not None:
            raise Exists(name)
        body = target.encode("utf-8", "surrogateescape")
        now = now_ns()
        attrs = Attrs(stat.S_IFLNK | 0o777, uid, gid, len(body), now, now, now)
        attrs.etag = await self.core.client.put(key, body, user_metadata(attrs))
        node = self.core.inodes.add(parent.ino, name, attrs, self.core.cfg.stat_ttl)
        node.symlink_target = target
        self.core.name_added(parent, name, node)
        self.core.touch_dir(parent)
        return self.core.count_lookup(node)

    async def link(self, ino: int, new_parent_ino: int, new_name: str) -> Node:
        self.core.check_new_name(self.core.dir_node(new_parent_ino), new_name)
        raise NotPermitted("hard links cannot be stored in S3")

    async def unlink(self, parent_ino: int, name: str) -> None:
        self.core.require_writable()
        parent = self.core.dir_node(parent_ino)
        while True:
            node = await self.core.resolve(parent, name)
            if node is None:
                raise NotFound(name)
            if node.is_dir:
                raise IsADirectory(name)
            # as the file's owner: an upload in flight ends first (its object is then
            # deleted here), and no later upload finds the name
            async with self.core.owners.hold(parent, lock=(node,)):
                if self.core.inodes.child(parent.ino, name) is not node:
                    continue                    # renamed or replaced while we waited
                key = self.core.inodes.key_for(parent, name)
                if node.in_s3:
                    await self.core.client.delete(key)
                self.core.name_removed(parent, name)
                self.core.inodes.detach(parent.ino, name)
                await self._discard_replaced(node)
                self.core.touch_dir(parent)
                return

    async def _discard_replaced(self, node: Node) -> None:
        """`node` lost its name (unlinked or renamed over): its data belongs nowhere now, and
        its journal record is gone from disk before the caller answers (no resurrection by
        the recovery of a mount killed right after)."""
        staging = node.staging
        if staging is None:
            return
        staging.mark_clean(gone=True)
        if node.open_handles == 0:
            self.files.drop_staging(node)
        await staging.journal_settled()

    # ------------------------------------------------------------------ rename
    async def rename(self, old_parent_ino: int, old_name: str, new_parent_ino: int, new_name: str,
                     flags: int = 0) -> None:
        self.core.require_writable()
        if flags & RENAME_EXCHANGE:
            raise InvalidArgument("RENAME_EXCHANGE is not supported")
        old_parent, new_parent = self.core.dir_node(old_parent_ino), self.core.dir_node(new_parent_ino)
        while True:
            self.core.check_new_name(new_parent, new_name)
            src = await self.core.resolve(old_parent, old_name)
            if src is None:
                raise NotFound(old_name)
            if old_parent is new_parent and old_name == new_name:
                return
            dst = await self.core.resolve(new_parent, new_name)
            if dst is not None and flags & RENAME_NOREPLACE:
                raise Exists(new_name)
            if src.is_dir:
                owner = self.core.owners.moving(src, new_parent, *([dst] if dst is not None else []))
            else:
                files = (src,) + ((dst,) if dst is not None and not dst.is_dir else ())
                owner = self.core.owners.hold(old_parent, new_parent, lock=files)
            async with owner:
                if self.core.inodes.child(old_parent.ino, old_name) is not src or \
                        self.core.inodes.child(new_parent.ino, new_name) is not dst:
                    continue                    # the names changed while we waited: look again
                await self._rename_owned(old_parent, old_name, new_parent, new_name, src, dst)
                return

    async def _rename_owned(self, old_parent: Node, old_name: str, new_parent: Node, new_name: str,
                            src: Node, dst: Node | None) -> None:
        """The rename itself, run as the owner of `src` (and `dst`): keys read here stay true."""
        new_key = self.core.check_new_name(new_parent, new_name)
        if src.is_dir:
            ancestor = new_parent
            while ancestor.ino != ROOT_INODE:
                if ancestor is src:
                    raise InvalidArgument("cannot move a directory into itself")
                ancestor = self.core.node(ancestor.parent)
            if dst is not None:
                if not dst.is_dir:
                    raise NotADirectory(new_name)
                if self._dir_renames().resumes(self.core.inodes.dir_prefix(src), new_key + "/"):
                    dst = None      # the target holds an earlier failed attempt's keys: finish it
                else:
                    await self._require_empty(dst)
            await self._rename_dir(src, new_key)
            if dst is not None:
                # the replaced empty directory's old s3fs forms; its `new/` marker is the rename's
                # now (and on SeaweedFS deleting `new` would delete the folder's marker too)
                await self.core.client.delete_many([new_key + namespace.FOLDER_SUFFIX] +
                                              ([new_key] if dst.legacy_dir_key else []))
        else:
            if dst is not None and dst.is_dir:
                raise IsADirectory(new_name)
            await self._rename_file(src, new_key)
        self.core.name_removed(old_parent, old_name)
        if dst is not None:
            await self._discard_replaced(dst)
        self.core.inodes.move(src, new_parent.ino, new_name)
        self.core.name_added(new_parent, new_name, src)
        moved = self._rejournal_below(src)
        src.attrs.ctime_ns = now_ns()
        self.core.touch_dir(old_parent)
        self.core.touch_dir(new_parent)
        for staging in moved:                   # the records name the new key before rename answers
            await staging.journal_settled()

    def _rejournal_below(self, node: Node) -> list:
        """Dirty files that moved with a rename: their journal records name the new key
        (written in disk threads; returns the staging files to wait for)."""
        nodes = [node] if not node.is_dir else list(self.core.inodes.descendants(node))
        stagings = [each.staging for each in nodes if each.staging is not None]
        for staging in stagings:
            staging.journal_changed()
        return stagings

    async def _rename_file(self, node: Node, new_key: str) -> None:
        old_key = self.core.inodes.file_key(node)
        staging = node.staging
        if staging is not None and (staging.dirty or not node.in_s3):
            etag = await staging.upload(self.core.client, new_key, user_metadata(node.attrs), self.core.fetcher(node),
                                        self.core.cfg.multipart_size, self.core.cfg.parallel, headers=node.attrs.headers)
            node.attrs.etag = etag
        else:       # S3 copies metadata and Content-*; storage class and SSE-KMS go from the node
            await self.core.client.copy(old_key, new_key, node.attrs.size, parallel=self.core.cfg.parallel,
                                   headers=node.attrs.headers)
        was_in_s3, node.in_s3 = node.in_s3, True
        old_etag = node.attrs.etag if staging is None or not staging.dirty else None
        if was_in_s3:
            try:
                await self.core.client.delete(old_key)
            except FSError as exc:
                # the data is under the new name already: the rename stands, and the old
                # copy is removed later rather than left to show up as a second file
                log.error("renamed %s to %s, but the old object could not be deleted (%s); retrying in "
                          "the background", old_key, new_key, exc)
                self._delete_later(old_key, old_etag)

    def _delete_later(self, key: str, etag: str | None, tries: int = 5) -> None:
        """Delete a key left behind by a rename, in the background, with backoff; only
        while it still holds the version renamed (`etag`; None: any version of it)."""
        async def delete() -> None:
            delay = 1.0
            for attempt in range(tries):
                await trio.sleep(delay)
                try:
                    if etag is not None:
                        info = await self.core.client.head(key)
                        if info is None or info.etag != etag:
                            return          # gone, or written anew by someone: not ours to delete
                    await self.core.client.delete(key)
                    log.warning("deleted %s, left behind by an earlier rename", key)
                    return
                except FSError as exc:
                    if attempt == tries - 1:
                        log.error("gave up deleting %s, left behind by a rename: %s", key, exc)
                delay = min(delay * 2, 30.0)
        if self.core.spawn is not None:
            self.core.spawn(delete)

    def _dir_renames(self) -> dirrename.DirRenames:
        if self._dir_renames_state is None:
            self._dir_renames_state = dirrename.DirRenames(self.core.journal.directory)
        return self._dir_renames_state

    async def _rename_dir(self, node: Node, new_key: str) -> None:
        """Upload pending data below `node`, then move its keys (dirrename.py)."""
        old_prefix = self.core.inodes.dir_prefix(node)
        # pending data goes up first; `rename` holds the subtree (ownership.Owners.moving), so
        # no other upload below runs now and these locks are free or about to be
        for child in list(self.core.inodes.descendants(node)):
            if self.files.needs_upload(child):
                async with self.core.owners.locked(child):
                    await self.files.upload_held(child)
        new_prefix = new_key + "/"
        try:
            await self._dir_renames().rename(self.core.client, old_prefix, new_prefix, user_metadata(node.attrs),
                                             self.core.cfg.parallel, key_max=self.core.cfg.key_max)
        except RenamedElsewhere:
            # an earlier failed rename of this directory to another name was finished now
            parent = self.core.node(node.parent)
            self.core.name_removed(parent, node.name)
            self.core.inodes.detach(parent.ino, node.name)
            self.core.cache.invalidate_tree(new_prefix)
            raise
        except BaseException:
            self.core.cache.invalidate_tree(new_prefix)      # the target may hold keys now (roll-forward)
            raise
        override = self.core.dir_attr_overrides.pop(old_prefix, None)
        if override is not None:
            self.core.dir_attr_overrides[new_prefix] = override
        node.has_marker = True

    def statfs(self) -> dict[str, int]:
        block = 4096
        blocks = 2**50 // block      # 1 PiB: S3 has no fixed size; tools want a large, stable figure
        return {"f_bsize": block, "f_frsize": block, "f_blocks": blocks, "f_bfree": blocks,
                "f_bavail": blocks, "f_files": 2**32, "f_ffree": 2**32, "f_favail": 2**32,
                "f_namemax": self.statfs_namemax()}

    def statfs_namemax(self) -> int:
        """statfs's f_namemax: the longest name the mount root takes, `name_max` or less when
        `key_max` leaves less room below the prefix (with the '/' of a directory marker);
        deeper directories take less (core.name_too_long)."""
        room = self.core.cfg.key_max - len(self.core.cfg.prefix.encode("utf-8", "surrogateescape")) - 1
        return max(1, min(self.core.cfg.name_max, room))
