"""Shared state of the filesystem core: configuration, tables, name resolution.

Responsibility: `Core` owns the inode table, the handle table, the stat
cache, the S3 client and the per-file owners (ownership.py), and resolves a
(directory, name) to a fresh `Node`.  The services (files.FileData,
attributes.Attributes) and the Filesystem that composes them each hold a
reference to one Core; Core knows none of them.
Invariants:
  * A node with local data (staging) or never uploaded is authoritative: it is
    never refreshed from S3 while that lasts.
  * Lookup counts: every method returning a `Node` as a directory entry adds
    one kernel lookup (`count_lookup`).
  * Local changes invalidate the stat cache for the names they touch.
  * A node never changes version under open read handles: a new version of
    the object found while some are open gets a new inode (the old one is
    detached and keeps serving them its version, or ESTALE).
"""

from __future__ import annotations

import logging
import stat
import time
from collections.abc import Callable

import trio
from cachetools import LRUCache

from . import namespace
from .disk_cache import DiskCache
from .errors import InvalidArgument, NameTooLong, NotADirectory, NotFound, ReadOnly, Stale
from .handles import HandleTable
from .inodes import ROOT_INODE, InodeTable, Node
from .journal import Journal
from .metadata import Attrs, Defaults, attrs_from_object
from .ownership import Owners
from .s3client import ObjectInfo, S3Client
from .stat_cache import ListedEntry, StatCache

log = logging.getLogger(__name__)

MAX_KEY_BYTES = 1024          # default whole-key limit (AWS S3, MinIO, SeaweedFS)
# a HEAD this long after the object's Last-Modified pins its version: a later change of the
# headers alone (CopyObject in place) lands in a later second, so a listing shows it
VERSION_SETTLED_NS = 2 * 1_000_000_000
# bound of a synchronous kernel entry invalidation (forget_kernel_entry_now): the kernel
# waits for requests holding the directory's lock, which this process answers meanwhile
KERNEL_INVALIDATION_WAIT = 10.0


def object_version(etag: str | None, size: int, last_modified_ns: int) -> tuple[str | None, int, int]:
    """What identifies one version of an object in both HEAD and LIST answers (HEAD's
    Last-Modified has whole seconds only)."""
    return etag, size, last_modified_ns // 1_000_000_000


def now_ns() -> int:
    return time.time_ns()


class Config:
    """What the core needs to know of the mount options."""

    def __init__(self, *, prefix: str = "", defaults: Defaults, read_only: bool = False,
                 stat_ttl: float = 5.0, negative_ttl: float = 1.0, cache_entries: int = 100_000, staging_dir: str = "/var/tmp",
                 multipart_size: int = 10 * 1024 * 1024, parallel: int = 8, root_mode: int = 0o755,
                 drain_timeout: float = 120.0, name_max: int = 255, key_max: int = MAX_KEY_BYTES):
        self.prefix = prefix
        self.name_max = name_max                # longest new name (bytes); stores keep <= 255 per level
        self.key_max = key_max                  # longest whole key (bytes, prefix and a marker's '/' included)
        self.defaults = defaults
        self.read_only = read_only
        self.stat_ttl = stat_ttl
        self.negative_ttl = min(negative_ttl, stat_ttl)
        self.cache_entries = cache_entries
        self.staging_dir = staging_dir
        self.multipart_size = multipart_size
        self.parallel = parallel
        self.root_mode = root_mode
        self.drain_timeout = drain_timeout      # bound of the upload of dirty data at unmount


class _Fetcher:
    """fetch(start, end[, etag]): bytes of `node`'s object, under its current key."""

    def __init__(self, core: Core, node: Node) -> None:
        self.core = core
        self.node = node
        self.memory = core.client.memory   # staging fills take their buffers from the budget (writeback.py)

    async def __call__(self, start: int, end: int, etag: str | None = None) -> bytes | bytearray:
        try:
            key = self.core.inodes.file_key(self.node)
        except KeyError:
            raise Stale(f"{self.node.name} was removed or replaced while open") from None
        return await self.core.client.get_range(key, start, end, etag=etag)


class Core:
    """State and helpers shared by every group of operations."""

    def __init__(self, client: S3Client, config: Config, disk_cache: DiskCache | None = None,
                 journal: Journal | None = None):
        self.client = client
        self.cfg = config
        self.disk_cache = disk_cache
        # named staging files + records of dirty data (crash recovery); unlocked when not given
        self.journal = journal if journal is not None else Journal(config.staging_dir, lock=False)
        self.cache = StatCache(config.stat_ttl, config.cache_entries, negative_ttl=config.negative_ttl)
        now = now_ns()
        d = config.defaults
        root = Attrs(stat.S_IFDIR | config.root_mode, d.uid, d.gid, 0, now, now, now)
        self.inodes = InodeTable(root, config.prefix)
        self.handles = HandleTable()
        self.owners = Owners(self.inodes)     # who may change where a file's object lives
        # directory attributes the backend would not keep on `dir/` markers (SeaweedFS)
        self.dir_attr_overrides: LRUCache = LRUCache(maxsize=max(1, config.cache_entries))
        self.dir_metadata_kept: bool | None = None
        # set by mount.serve: start a background task (read-ahead); None runs work inline
        self.spawn: Callable[..., None] | None = None
        self._resolving: dict[tuple[int, str], trio.Event] = {}
        self._tree_listings: dict[str, trio.Event] = {}   # recursive listings in flight
        # set by the FUSE adapter: drop a name from the kernel's dentry cache
        self.invalidate_entry: Callable[[int, str], None] = lambda parent, name: None
        # set by the FUSE adapter: the same, done when it returns (blocks: run in a thread)
        self.invalidate_entry_now: Callable[[int, str], None] | None = None
        # set by the FUSE adapter: drop an inode's cached attributes (size) from the kernel
        self.invalidate_attrs: Callable[[int], None] = lambda ino: None
        self.unmounting = False     # set by the drain: the kernel is going, queue no invalidations

    # ------------------------------------------------------------------ helpers
    def node(self, ino: int) -> Node:
        node = self.inodes.get(ino)
        if node is None:
            raise NotFound(f"inode {ino} unknown")
        return node

    def dir_node(self, ino: int) -> Node:
        node = self.node(ino)
        if not node.is_dir:
            raise NotADirectory(f"inode {ino} is not a directory")
        return node

    def require_writable(self) -> None:
        if self.cfg.read_only:
            raise ReadOnly("mounted read-only")

    def name_too_long(self, parent: Node, name: str) -> NameTooLong | None:
        """Why `name` in `parent` is too long for the store (None if it is not): more than
        `name_max` bytes, or a key that, with the `/` a directory marker adds, would pass
        `key_max` bytes."""
        size = len(name.encode("utf-8", "surrogateescape"))
        if size > self.cfg.name_max:
            return NameTooLong(f"name of {size} bytes (name_max={self.cfg.name_max})")
        key_size = len(self.inodes.key_for(parent, name).encode("utf-8", "surrogateescape")) + 1
        if key_size > self.cfg.key_max:
            return NameTooLong(f"key of {key_size - 1} bytes, {key_size} as a directory (key_max={self.cfg.key_max})")
        return None

    def check_new_name(self, parent: Node, name: str) -> str:
        """The key of a name about to be created; refused before any request or data."""
        if not namespace.valid_name(name):
            raise InvalidArgument(f"name {name!r} cannot be stored")
        too_long = self.name_too_long(parent, name)
        if too_long is not None:
            # refused before any data is accepted: a close that fails for the name loses nothing
            raise too_long
        key = self.inodes.key_for(parent, name)
        try:
            key.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidArgument(f"name {name!r} is not valid UTF-8, which S3 keys need") from None
        return key

    def fresh(self, node: Node) -> bool:
        return node.staging is not None or not node.in_s3 or node.expires > time.monotonic()

    def fetcher(self, node: Node) -> _Fetcher:
        return _Fetcher(self, node)

    def attrs_from_found(self, found: namespace.Found, key: str) -> Attrs:
        info = found.info
        if info is None:
            info = ObjectInfo(key + "/", 0, None, 0)
        attrs = attrs_from_object(key_is_dir=found.is_dir, size=0 if found.is_dir else info.size,
                                  etag=info.etag, last_modified_ns=info.last_modified_ns or now_ns(),
                                  metadata=info.metadata, content_type=info.content_type,
                                  defaults=self.cfg.defaults, headers=info.headers)
        if found.is_dir:
            override = self.dir_attr_overrides.get(key + "/")
            if override is not None:
                attrs = override.copy()
        return attrs

    def apply_found(self, parent: Node, name: str, found: namespace.Found) -> Node:
        key = self.inodes.key_for(parent, name)
        attrs = self.attrs_from_found(found, key)
        node = self.inodes.child(parent.ino, name)
        ttl = self.cfg.stat_ttl
        if node is not None and node.attrs.kind == attrs.kind and node.staging is None and \
                node.open_handles > 0 and not found.is_dir and node.attrs.etag != attrs.etag:
            # open handles read the old version through this inode (and the kernel's size and
            # page cache of it): the new version gets an inode of its own, this one is detached
            node = self.inodes.add(parent.ino, name, attrs, ttl)
            self.forget_kernel_entry(parent.ino, name)
        elif node is not None and node.attrs.kind == attrs.kind:
            if node.staging is None:
                if node.attrs.etag != attrs.etag:
                    node.symlink_target = None      # replaced: a link's target may differ now
                node.attrs = attrs
            node.expires = time.monotonic() + ttl
        else:
            node = self.inodes.add(parent.ino, name, attrs, ttl)
        node.has_marker = found.is_dir and found.info is not None and not found.legacy_dir_key
        node.legacy_dir_key = found.legacy_dir_key
        node.in_s3 = True
        if not attrs.is_symlink():
            node.symlink_target = None
        info = found.info
        settled = info is not None and 0 < info.last_modified_ns <= now_ns() - VERSION_SETTLED_NS
        node.version = (object_version(info.etag, info.size, info.last_modified_ns)
                        if info is not None and settled and not found.is_dir and node.staging is None else None)
        return node

    def revalidate_from_listing(self, node: Node, entry: ListedEntry | None, listed_at: float) -> bool:
        """A stale file whose listing entry shows the version its headers came from is fresh
        again (as of the listing) without a HEAD; True if so."""
        if entry is None or entry.is_dir or node.version is None or node.staging is not None:
            return False
        if object_version(entry.etag, entry.size, entry.last_modified_ns) != node.version:
            return False
        node.expires = max(node.expires, listed_at + self.cfg.stat_ttl)
        return self.fresh(node)

    def node_from_listing(self, parent: Node, name: str, entry: ListedEntry) -> Node:
        """A node typed and sized by a listing; its other attributes are not verified yet
        (it is born stale, so the next getattr/lookup fetches the real headers)."""
        node = self.inodes.child(parent.ino, name)
        if node is not None:
            return node
        key = self.inodes.key_for(parent, name)
        info = None if entry.is_dir else ObjectInfo(key, entry.size, entry.etag, entry.last_modified_ns)
        attrs = self.attrs_from_found(namespace.Found(entry.is_dir, info), key)
        return self.inodes.add(parent.ino, name, attrs, ttl=0)

    async def resolve(self, parent: Node, name: str) -> Node | None:
        """The child `name` of `parent`, refreshed from S3 when stale; None if absent.

        Concurrent resolutions of one name share a single probe."""
        return await self._shared(parent, name, lambda node: self._probe(parent, name, node))

    async def resolve_listed_file(self, parent: Node, name: str) -> Node | None:
        """Like `resolve` for a name a fresh listing showed as an object: a single HEAD
        (shared with any resolution of the name already under way)."""
        async def head(node: Node | None) -> Node | None:
            info = await self.client.head(self.inodes.key_for(parent, name))
            if info is None:
                return await self._probe(parent, name, node)     # changed since the listing
            return self.apply_found(parent, name, namespace.classify_file(info))
        return await self._shared(parent, name, head)

    async def _shared(self, parent: Node, name: str, fetch) -> Node | None:
        """The fresh child `name`, or `await fetch(stale node or None)`; one fetch per name
        at a time: a caller arriving meanwhile waits for it and takes its result."""
        node = self.inodes.child(parent.ino, name)
        if node is not None and self.fresh(node):
            return node
        pending = self._resolving.get((parent.ino, name))
        if pending is not None:
            await pending.wait()
            node = self.inodes.child(parent.ino, name)
            if node is not None and self.fresh(node):
                return node
        done = self._resolving[(parent.ino, name)] = trio.Event()
        try:
            return await fetch(node)
        finally:
            if self._resolving.get((parent.ino, name)) is done:
                del self._resolving[(parent.ino, name)]
            done.set()

    async def _probe(self, parent: Node, name: str, node: Node | None) -> Node | None:
        dir_prefix = self.inodes.dir_prefix(parent)
        if node is not None and node.in_s3 and not node.is_dir:
            cached = self.cache.timed_listing(dir_prefix, max_age=self.cfg.stat_ttl)
            if cached is not None and self.revalidate_from_listing(node, cached[1].get(name), cached[0]):
                return node          # a recent listing shows the version its headers came from
            # refreshing a known file (stat after the TTL): one HEAD, not the full probe
            info = await self.client.head(dir_prefix + name)
            if info is not None:
                return self.apply_found(parent, name, namespace.classify_file(info))
        found = await namespace.probe(self.client, self.cache, dir_prefix, name)
        if found is None:
            if node is not None and node.open_handles == 0:
                self.inodes.detach(parent.ino, name)
            elif node is not None:
                return node      # open elsewhere: keep serving the handle's view
            return None
        return self.apply_found(parent, name, found)

    def count_lookup(self, node: Node) -> Node:
        node.lookups += 1
        return node

    async def getattr(self, ino: int) -> Node:
        node = self.node(ino)
        if not self.fresh(node) and node.attached() and node.ino != ROOT_INODE:
            parent = self.inodes.get(node.parent)
            if parent is not None:
                refreshed = await self.resolve(parent, node.name)
                if refreshed is None:
                    raise NotFound(f"{node.name} no longer exists")
                if refreshed is not node and refreshed.attrs.kind == node.attrs.kind:
                    return node     # a new version got its own inode: this one keeps its readers'
                if refreshed is not node:
                    # replaced remotely by an object of another type; report it under this inode
                    node.attrs = refreshed.attrs
                    node.expires = refreshed.expires
                    node.symlink_target = refreshed.symlink_target
        return node

    def touch_dir(self, directory: Node) -> None:
        directory.attrs.mtime_ns = directory.attrs.ctime_ns = now_ns()

    def name_added(self, parent: Node, name: str, node: Node) -> None:
        """Keep the caches true after `name` appeared in `parent` through this mount."""
        attrs = node.attrs
        self.cache.note_added(self.inodes.dir_prefix(parent), name,
                              ListedEntry(node.is_dir, attrs.size, attrs.etag, attrs.mtime_ns))
        if node.is_dir:
            self.cache.invalidate_tree(self.inodes.key_for(parent, name) + "/")

    def name_removed(self, parent: Node, name: str) -> None:
        self.cache.note_removed(self.inodes.dir_prefix(parent), name)
        self.cache.invalidate_tree(self.inodes.key_for(parent, name) + "/")

    def forget_kernel_entry(self, parent_ino: int, name: str) -> None:
        """Drop `name` from the kernel's dentry cache (queued), unless the mount is going."""
        if not self.unmounting:
            self.invalidate_entry(parent_ino, name)

    async def forget_kernel_entry_now(self, parent_ino: int, name: str) -> None:
        """Drop `name` from the kernel's dentry cache before returning, for a reply after
        which the name must be gone (a close whose data lost its name).  Waits at most
        KERNEL_INVALIDATION_WAIT seconds (then it stays queued).  Only for requests the
        kernel sends holding no directory lock (flush, fsync): the kernel takes the
        parent directory's lock for it."""
        if self.unmounting or self.invalidate_entry_now is None:
            self.forget_kernel_entry(parent_ino, name)
            return
        with trio.move_on_after(KERNEL_INVALIDATION_WAIT) as scope:
            await trio.to_thread.run_sync(self.invalidate_entry_now, parent_ino, name, abandon_on_cancel=True)
        if scope.cancelled_caught:
            log.warning("the kernel took more than %g s to forget %s; it may still show it briefly",
                        KERNEL_INVALIDATION_WAIT, name)

    def describe(self, node: Node) -> str:
        try:
            return self.inodes.file_key(node)
        except KeyError:
            return f"inode {node.ino} (unlinked)"
