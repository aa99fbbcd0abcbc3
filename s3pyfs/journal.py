"""Dirty-data journal: named staging files that outlive a crash of the mount.

Responsibility: give every staging file (writeback.Staging) a name on disk
and, while its content differs from S3, a small JSON record next to it that
says where the bytes belong.  After a SIGKILL or a crash the next mount with
the same state directory finds the records and uploads them (recovery.py).

Layout (all 0700/0600, owned by the mounting user; statedir.py):
    <base>/dirty/<store>/<instance>/lock        flock held while that mount lives
    <base>/dirty/<store>/<instance>/<n>.data    staging file (sparse; size = file size)
    <base>/dirty/<store>/<instance>/<n>.json    present only while <n>.data is dirty
    <base>/dirty/<store>/lost+found/            records recovery could not apply
<base> is the mounting user's state directory (statedir.base_for); <store> is
a hash of endpoint, bucket and prefix, so keys never become path components.

Invariants:
  * A `.json` exists exactly while its file holds data not yet in S3: it is
    written (temporary name + rename, so it is whole or absent) before the
    write that made the file dirty is acknowledged to the kernel, and
    removed after the upload of the newest generation succeeded (by the
    record's writer, in a disk thread, soon after; a crash in that gap leaves
    a stale record that recovery resolves without overwriting anything:
    "already in S3", or kept in lost+found).
  * A `.data` without a `.json` holds nothing that needs saving.
  * An instance directory whose lock can be taken belongs to no live mount.
  * Every file is opened relative to its directory's fd with O_NOFOLLOW (new
    files with O_EXCL): a symlink planted in a directory is never followed,
    and a directory renamed or replaced after it was opened is never used.
    Recovery only opens instance directories owned by the mounting uid and
    not writable by others (statedir.private_problem).
  * Only files s3pyfs names itself (<n>.data, <n>.json, <n>.json.tmp, lock)
    are ever deleted.
  * Records are not fsynced: they survive a process crash (the kernel keeps
    the page cache), not a power loss; close()/fsync() are the only
    durability promise (the data is in S3 then).
  * Record I/O runs in disk threads (diskio.py), never on the trio thread:
    `save`/`clear`/`discard` are synchronous requests that only note the
    newest wanted state; one writer per record (a trio.Lock, started as a
    trio system task) puts it on disk, always the newest state and in
    request order, so an older state never replaces a newer one.  A caller
    that must not answer before the record is on disk awaits `settle()`
    (writeback.Staging does for writes, truncations and creations).  The
    journal keeps the records with unwritten states (`unsaved`): `settle()`
    of the journal waits for all of them, and `close()` writes what is left
    (after the trio run, when no writer thread is in flight).  A removal
    after an upload (`clear`, the data is in S3) is put on disk `CLEAR_DELAY`
    later by the record's own writer task, unless something settles it sooner:
    the `discard` of the same file's close usually arrives meanwhile and does
    both in one disk-thread call (a stale record in that gap is harmless:
    recovery finds the data already in S3).  The removal for a file unlinked or
    replaced (`clear(now=True)`) never waits, and unlink/rename settle it before
    they answer: otherwise a crash right after them would upload the data again
    under the old name (a resurrected file).
  * The record holds the locally written blocks as ranges (`written_ranges`,
    record version 2): a sequential writer's record stays a few lines long
    however many blocks it wrote.  Version 1 records (`written`, a list of
    block numbers) are still read (`written_blocks`).
"""

from __future__ import annotations

import fcntl
import hashlib
import itertools
import json
import logging
import os
import re
import stat
import time
from collections.abc import Iterator

import trio

from . import diskio, statedir
from .statedir import Dir

log = logging.getLogger(__name__)

RECORD_VERSION = 2
READABLE_VERSIONS = (1, 2)
LOCK_NAME = "lock"
LOST_AND_FOUND = "lost+found"
SPARE_FILES = 64            # emptied staging files kept for reuse per mount
DIRTY = "dirty"
# staging files and records, and dirrename.py's intent records (kept like dirty records)
_OURS = re.compile(r"^([0-9]+\.(data|json|json\.tmp)|rename\.[0-9]+\.json)$")
_NEW = os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def store_name(endpoint: str | None, bucket: str, prefix: str = "") -> str:
    """Name of the directory of all instances mounting `bucket:/prefix` at `endpoint`."""
    return hashlib.sha256(f"{endpoint or 'aws'}\n{bucket}\n{prefix}".encode()).hexdigest()[:20]


def open_store(base: Dir, endpoint: str | None, bucket: str, prefix: str = "") -> Dir:
    """The checked store directory under a checked base (created when missing)."""
    dirty = base.sub(DIRTY)
    try:
        return dirty.sub(store_name(endpoint, bucket, prefix))
    finally:
        dirty.close()


def _exists(name: str, dir_fd: int) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        return True
    except FileNotFoundError:
        return False


def _write_new(dir_fd: int, name: str, text: str) -> None:
    """Write a new file `name` in `dir_fd` (never through a symlink, never an old file)."""
    fd = os.open(name, os.O_WRONLY | _NEW, 0o600, dir_fd=dir_fd)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)


CLEAR_DELAY = 0.05        # seconds a record's removal waits for the file's discard (one disk call)
_DISCARD = object()          # wanted state of a record: staging file and record deleted (or pooled)


def written_blocks(entry: dict) -> set[int]:
    """The locally written blocks a record lists (version 2 ranges, or version 1's list)."""
    blocks: set[int] = set()
    for pair in entry.get("written_ranges") or []:
        first, end = int(pair[0]), int(pair[1])
        blocks.update(range(first, end))
    blocks.update(int(b) for b in entry.get("written") or [])
    return blocks


class Record:
    """One staging file and its journal record."""

    def __init__(self, dir_fd: int, directory: str, stem: str, fd: int, pool: list[Record] | None = None,
                 unsaved: set[Record] | None = None):
        self.dir_fd = dir_fd        # owned by the Journal
        self.directory = directory
        self.stem = stem
        self.fd = fd
        self.pool = pool            # the journal's spare files, or None (recovery)
        self.unsaved = unsaved      # the journal's records with a state not yet on disk
        self.data_name = stem + ".data"
        self.json_name = stem + ".json"
        self.data_path = os.path.join(directory, self.data_name)
        self.json_path = os.path.join(directory, self.json_name)
        self._want: object = None   # JSON text, None (no record) or _DISCARD
        self._asked = 0             # states requested so far ...
        self._done = 0              # ... and the newest of them on disk
        self._lock: trio.Lock | None = None
        self._scheduled = False
        self._gone = False          # discard() was asked: nothing more is written
        self._clear_now = False     # the removal asked for must not wait CLEAR_DELAY

    # ---- requests (synchronous, no disk I/O on the caller's thread inside trio) ----
    def save(self, entry: dict) -> None:
        """Ask for the record to be written (whole or not at all); errors are logged, not
        raised: the data itself is safe in the staging file and still uploaded at close."""
        if not self._gone:
            self._ask(json.dumps(dict(entry, version=RECORD_VERSION)))

    def clear(self, *, now: bool = False) -> None:
        """Nothing to recover any more.  After an upload (the data is in S3) the removal may
        wait `CLEAR_DELAY` for the close's discard; `now`: the data belongs nowhere (its
        file was unlinked or replaced), so a crash must not bring it back: written at once,
        and the caller settles it before it answers."""
        if not self._gone:
            self._clear_now = now
            self._ask(None)

    def discard(self) -> None:
        """Close and delete the staging file and its record (or hand it back to the
        journal's pool of spare files, emptied: creating and unlinking a file per
        written file cost more than a small file's upload on overlay filesystems)."""
        if not self._gone:
            self._gone = True
            self._ask(_DISCARD)

    def _ask(self, want: object) -> None:
        self._want = want
        self._asked += 1
        if not diskio.in_trio():
            self.flush_now()
            return
        if self.unsaved is not None:
            self.unsaved.add(self)
        if not self._scheduled:
            self._scheduled = True
            trio.lowlevel.spawn_system_task(self._writer, name=f"journal record {self.stem}")

    # ---- the writer ----------------------------------------------------------
    async def _writer(self) -> None:
        self._scheduled = False
        if self._want is None and not self._clear_now:
            # nothing to protect: give the discard that usually follows a chance to do it too
            await trio.sleep(CLEAR_DELAY)
        try:
            await self.settle()
        except Exception:            # noqa: BLE001 - a system task must not end the run
            log.exception("writing the journal record %s failed", self.json_path)

    async def settle(self) -> None:
        """Return once every state asked for so far is on disk (or its failure logged)."""
        target = self._asked
        if self._done >= target:
            return
        if self._lock is None:
            self._lock = trio.Lock()
        async with self._lock:
            while self._done < target:
                asked, want = self._asked, self._want
                pool_it = want is _DISCARD and self.pool is not None and len(self.pool) < SPARE_FILES
                pooled = await diskio.run(self._apply, want, pool_it)
                self._done = asked
                if want is _DISCARD:
                    self._discarded(pooled)
            if self._done >= self._asked and self.unsaved is not None:
                self.unsaved.discard(self)

    def flush_now(self) -> None:
        """Write the newest state on this thread (outside trio, or once no writer is in flight)."""
        if self._done < self._asked:
            asked, want = self._asked, self._want
            pool_it = want is _DISCARD and self.pool is not None and len(self.pool) < SPARE_FILES
            pooled = self._apply(want, pool_it)
            self._done = asked
            if want is _DISCARD:
                self._discarded(pooled)
        if self.unsaved is not None:
            self.unsaved.discard(self)

    def _apply(self, want: object, pool_it: bool) -> bool:
        """Disk side of a state (worker thread); True when the emptied file may be reused."""
        if want is None:
            _remove(self.json_name, self.dir_fd)
            return False
        if want is _DISCARD:
            _remove(self.json_name, self.dir_fd)
            if self.fd >= 0 and pool_it:
                try:
                    os.ftruncate(self.fd, 0)
                    return True
                except OSError:
                    pass
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1
            _remove(self.data_name, self.dir_fd)
            return False
        assert isinstance(want, str)  # the JSON text of the record: None and _DISCARD are handled above
        tmp = self.json_name + ".tmp"
        try:
            _remove(tmp, self.dir_fd, quiet=True)
            _write_new(self.dir_fd, tmp, want)
            os.replace(tmp, self.json_name, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
        except OSError as exc:
            log.error("could not write the journal record %s (%s): this file's unsaved data would not "
                      "survive a crash", self.json_path, exc.strerror)
        return False

    def _discarded(self, pooled: bool) -> None:
        if pooled and self.fd >= 0 and self.pool is not None:
            self.pool.append(Record(self.dir_fd, self.directory, self.stem, self.fd, self.pool, self.unsaved))
            self.fd = -1

    def load(self) -> dict | None:
        try:
            fd = os.open(self.json_name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.dir_fd)
            with os.fdopen(fd, encoding="utf-8") as f:
                entry = json.load(f)
        except (OSError, ValueError):
            return None
        return entry if isinstance(entry, dict) and entry.get("version") in READABLE_VERSIONS else None

    def release(self) -> None:
        """Close the staging file, keeping file and record for a later recovery."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Journal:
    """The records of one live mount: a locked instance directory."""

    def __init__(self, directory: str, lock: bool = True, parent: Dir | None = None):
        """`directory` is opened inside the checked `parent` when given (the mount, recovery);
        without it (tests of the core) it is created by path."""
        self.directory = directory
        self._parent_fd = -1
        name = os.path.basename(directory)
        if parent is not None:
            self._parent_fd = os.dup(parent.fd)
            self.dir_fd = statedir.open_private(self._parent_fd, name, directory, create=False)
        else:
            os.makedirs(directory, mode=0o700, exist_ok=True)
            self.dir_fd = os.open(directory, statedir.DIR_FLAGS)
        self._name = name
        self._lock_fd = -1
        try:
            if lock:
                self._lock_fd = os.open(LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                                        dir_fd=self.dir_fd)
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BaseException:
            self._close_fds()
            raise
        self._numbers = itertools.count(1)
        self._spare: list[Record] = []     # emptied staging files kept open for reuse
        self.unsaved: set[Record] = set()  # records with a state not yet on disk

    @classmethod
    def create(cls, store: Dir) -> Journal:
        """A new locked instance directory in the checked `store`."""
        name = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{os.urandom(3).hex()}"
        os.mkdir(name, 0o700, dir_fd=store.fd)
        return cls(os.path.join(store.path, name), parent=store)

    def store(self) -> Dir:
        """The store directory this instance lives in (lost+found is there); the caller
        closes it."""
        path = os.path.dirname(self.directory)
        if self._parent_fd >= 0:
            return Dir(os.dup(self._parent_fd), path)
        return Dir(os.open(path, statedir.DIR_FLAGS), path)

    def new_record(self) -> Record:
        if self._spare:
            return self._spare.pop()
        while True:
            stem = str(next(self._numbers))
            try:
                fd = os.open(stem + ".data", os.O_RDWR | _NEW, 0o600, dir_fd=self.dir_fd)
            except FileExistsError:
                continue
            return Record(self.dir_fd, self.directory, stem, fd, self._spare, self.unsaved)

    def records(self) -> Iterator[Record]:
        """Records left in this directory (recovery); staging files without a record
        are removed: they held nothing unsaved."""
        for name in sorted(os.listdir(self.dir_fd)):
            if not _OURS.match(name):
                continue
            stem, dot, ext = name.partition(".")
            if ext == "json":
                try:
                    fd = os.open(stem + ".data", os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.dir_fd)
                except FileNotFoundError:
                    log.error("journal record %s has no staging file; removed", os.path.join(self.directory, name))
                    _remove(name, self.dir_fd)
                    continue
                except OSError as exc:
                    log.error("journal record %s: staging file unusable (%s); ignored",
                              os.path.join(self.directory, name), exc.strerror)
                    continue
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    os.close(fd)
                    continue
                yield Record(self.dir_fd, self.directory, stem, fd, unsaved=self.unsaved)
            elif ext == "data" and not _exists(stem + ".json", self.dir_fd):
                _remove(name, self.dir_fd)
            elif ext == "json.tmp":
                _remove(name, self.dir_fd)

    def pending(self) -> list[str]:
        return sorted(n for n in os.listdir(self.dir_fd) if n.endswith(".json") and _OURS.match(n))

    async def settle(self) -> None:
        """Wait until every record state asked for so far is on disk."""
        while self.unsaved:
            await next(iter(self.unsaved)).settle()

    def close(self) -> None:
        """End of the mount: drop clean staging files; remove the directory when nothing
        unsaved is left, else keep it (unlocked) for the next mount to recover.  Call it
        after `settle()`, or once the trio run ended (no record writer in flight)."""
        if self.dir_fd < 0:
            return
        for record in list(self.unsaved):
            record.flush_now()
        for record in self._spare:
            record.release()
        self._spare.clear()
        for name in os.listdir(self.dir_fd):
            stem, _, ext = name.partition(".")
            if ext == "data" and _OURS.match(name) and not _exists(stem + ".json", self.dir_fd):
                _remove(name, self.dir_fd)
        if not self.pending():
            for name in os.listdir(self.dir_fd):
                if _OURS.match(name) or name == LOCK_NAME:
                    _remove(name, self.dir_fd, quiet=True)
            if self._parent_fd >= 0:
                try:
                    os.rmdir(self._name, dir_fd=self._parent_fd)
                except OSError:
                    pass
        self._close_fds()

    def _close_fds(self) -> None:
        for attr in ("_lock_fd", "dir_fd", "_parent_fd"):
            fd = getattr(self, attr, -1)
            if fd >= 0:
                os.close(fd)
                setattr(self, attr, -1)


def abandoned(store: Dir) -> Iterator[Journal]:
    """Instance directories of mounts that are gone, each locked for the caller.  Only
    directories of the mounting uid that nobody else can write to are considered."""
    try:
        names = sorted(os.listdir(store.fd))
    except OSError:
        return
    for name in names:
        path = os.path.join(store.path, name)
        if name == LOST_AND_FOUND:
            continue
        try:
            st = os.stat(name, dir_fd=store.fd, follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode):
            continue
        problem = statedir.private_problem(st)
        if problem:
            log.warning("ignoring journal directory %s: it %s", path, problem)
            continue
        try:
            journal = Journal(path, parent=store)
        except BlockingIOError:
            continue                        # a live mount owns it
        except (OSError, statedir.StateDirError) as exc:
            log.error("cannot open journal directory %s: %s", path, getattr(exc, "strerror", None) or exc)
            continue
        yield journal


def move_to_lost_and_found(store: Dir, record: Record, entry: dict | None, reason: str) -> str:
    """Keep a record that could not be applied, for the operator; returns its new path."""
    lost = store.sub(LOST_AND_FOUND)
    try:
        name = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.urandom(3).hex()}"
        target = lost.sub(name)
        try:
            os.replace(record.data_name, "data", src_dir_fd=record.dir_fd, dst_dir_fd=target.fd)
            info = dict(entry or {}, reason=reason)
            _write_new(target.fd, "record.json", json.dumps(info, indent=1))
        finally:
            target.close()
    finally:
        lost.close()
    record.pool = None
    record.discard()
    return target.path


def _remove(name: str, dir_fd: int, quiet: bool = False) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
    except OSError as exc:
        if not quiet:
            log.warning("could not remove %s: %s", name, exc.strerror)
