"""The S3 side of renaming a directory: copy every key, then delete the sources,
with an intent record that makes an interrupted rename finish one way or the other.

Responsibility: `DirRenames.rename` moves every key below `old/` to `new/`
(and the old s3fs forms of the directory, `old_$folder$` and an `old` object
with a directory mode, which become the `new/` marker); `recover` finishes
the renames a dead mount left half done.  No inode or cache state here:
filesystem.py does that bookkeeping once the S3 side is done.

Phases and their record (`rename.<n>.json` in the mount's journal instance
directory; written whole, temporary name + os.replace, mode 0600):
  1. plan: list the source (recursive) and the target; the record names the
     source keys (with ETags) and the target keys this rename will create,
     i.e. those that did not exist before.  Written BEFORE the first copy.
  2. copying: every source key is copied (markers re-created).  A failure
     deletes every planned target key that did not exist before (an
     in-flight copy may have landed although its call failed), leaves the
     source alone and raises: the caller gets EIO and a retry starts afresh.
  3. deleting (record rewritten first): source files, then directory levels
     deepest first, then the legacy keys.  A failure keeps the record:
     the rename is rolled forward by a retried rename of the same source
     (the target is complete) or at the next mount.
  4. record removed.
Invariants:
  * A key under the target that existed before the rename is never deleted
    by a roll-back; a source key is deleted by a roll-forward only while its
    ETag is still the one the record names (a newer version stays).
  * A crash leaves the record: phase copying -> rolled back at the next
    mount (source kept), phase deleting -> rolled forward (target kept).
  * A record whose prefixes lie outside the recovering mount's prefix is left
    alone with an ERROR line (another mount of the bucket may own it).
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import os
from collections.abc import Callable

import trio

from . import namespace
from .concurrency import run_all
from .errors import FSError, NameTooLong, RenamedElsewhere
from .journal import abandoned
from .metadata import DIR_CONTENT_TYPE
from .s3client import ObjectInfo, S3Client

log = logging.getLogger(__name__)

RECORD_VERSION = 1
RECORD_PREFIX = "rename."        # `rename.<n>.json`: never taken for a dirty-file record (`<n>.json`)
RECORD_SUFFIX = ".json"
COPY_FAN_OUT = 16


class Intent:
    """One directory rename in progress, as recorded on disk."""

    def __init__(self, old_prefix: str, new_prefix: str, sources: list[list], legacy: list[list],
                 created: list[str], existing: list[str], phase: str = "copying", path: str | None = None):
        self.old_prefix = old_prefix
        self.new_prefix = new_prefix
        self.sources = sources        # [key, etag, size] of every key below old_prefix
        self.legacy = legacy          # [key, etag] of `old_$folder$` / the `old` directory object
        self.created = created        # target keys this rename writes that did not exist before
        self.existing = existing      # keys under the target before the rename (never deleted)
        self.phase = phase
        self.path = path

    def to_json(self) -> dict:
        return {"version": RECORD_VERSION, "kind": "directory rename", "old_prefix": self.old_prefix,
                "new_prefix": self.new_prefix, "phase": self.phase, "sources": self.sources,
                "legacy": self.legacy, "created": self.created, "existing": self.existing}

    @classmethod
    def from_json(cls, entry: object, path: str) -> Intent:
        if not isinstance(entry, dict) or entry.get("version") != RECORD_VERSION or \
                entry.get("phase") not in ("copying", "deleting"):
            raise ValueError("not a directory rename record of this version")
        old, new = entry.get("old_prefix"), entry.get("new_prefix")
        if not (isinstance(old, str) and isinstance(new, str) and old.endswith("/") and new.endswith("/")):
            raise ValueError("bad prefixes")
        sources = [s for s in entry.get("sources") or [] if isinstance(s, list) and len(s) == 3
                   and isinstance(s[0], str) and s[0].startswith(old)]
        legacy = [s for s in entry.get("legacy") or [] if isinstance(s, list) and len(s) == 2
                  and s[0] in (old[:-1], old[:-1] + namespace.FOLDER_SUFFIX)]
        created = [k for k in entry.get("created") or [] if isinstance(k, str) and k.startswith(new)]
        existing = [k for k in entry.get("existing") or [] if isinstance(k, str)]
        return cls(old, new, sources, legacy, created, existing, entry["phase"], path)


# ------------------------------------------------------------------ the record on disk
def _write_new(path: str, data: bytes) -> None:
    """`data` at `path`, whole or not at all: a fresh 0600 temporary file, then os.replace."""
    tmp = path + ".tmp"
    try:
        os.unlink(tmp)                # left by a crash between create and replace
    except FileNotFoundError:
        pass
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _new_path(directory: str, numbers: itertools.count) -> str:
    """A record path not in use in this mount's instance directory."""
    while True:
        path = os.path.join(directory, f"{RECORD_PREFIX}{next(numbers)}{RECORD_SUFFIX}")
        if not os.path.lexists(path):
            return path


async def _save(intent: Intent) -> None:
    data = json.dumps(intent.to_json()).encode()
    assert intent.path is not None
    await trio.to_thread.run_sync(_write_new, intent.path, data)


def _drop(intent: Intent) -> None:
    if intent.path is None:
        return
    try:
        os.unlink(intent.path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("could not remove the rename record %s: %s", intent.path, exc.strerror)


def record_paths(directory: str) -> list[str]:
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return sorted(os.path.join(directory, n) for n in names
                  if n.startswith(RECORD_PREFIX) and n.endswith(RECORD_SUFFIX))


def _load(path: str) -> Intent:
    with open(path, "rb") as f:
        return Intent.from_json(json.loads(f.read() or b"null"), path)


# ------------------------------------------------------------------ S3 steps
def _target(intent: Intent, key: str) -> str:
    return intent.new_prefix + key[len(intent.old_prefix):]


async def _legacy_keys(client: S3Client, old_prefix: str) -> list[list]:
    """The old s3fs forms of the directory that exist: `old_$folder$`, `old` with a directory mode."""
    found: dict[str, ObjectInfo] = {}

    async def head(key: str) -> None:
        info = await client.head(key)
        if info is None:
            return
        if info.size == 0 and (key.endswith(namespace.FOLDER_SUFFIX) or namespace.classify_file(info).is_dir):
            found[key] = info           # (with a body it is a file of its own, shown as such)
    base = old_prefix[:-1]
    await run_all([functools.partial(head, base), functools.partial(head, base + namespace.FOLDER_SUFFIX)], 2)
    return [[key, info.etag] for key, info in sorted(found.items())]


async def _plan(client: S3Client, old_prefix: str, new_prefix: str) -> Intent:
    sources = await namespace.all_keys_below(client, old_prefix)
    if not any(o.key == old_prefix for o in sources):
        marker = await client.head(old_prefix)     # some stores list no `dir/` key of a folder
        if marker is not None:
            sources.append(marker)
    legacy = await _legacy_keys(client, old_prefix)
    before = {o.key for o in await namespace.all_keys_below(client, new_prefix)}
    if new_prefix not in before and await client.head(new_prefix) is not None:
        before.add(new_prefix)
    planned = [new_prefix + o.key[len(old_prefix):] for o in sources]
    if new_prefix not in planned:
        planned.append(new_prefix)                  # the marker is re-created in any case
    created = sorted(k for k in set(planned) if k not in before)
    return Intent(old_prefix, new_prefix, [[o.key, o.etag, o.size] for o in sources], legacy, created,
                  sorted(before))


async def _copy_all(client: S3Client, intent: Intent, marker_metadata: dict[str, str], parallel: int) -> None:
    async def copy_one(key: str, size: int) -> None:
        target = _target(intent, key)
        if key.endswith("/") and size == 0:
            head = await client.head(key)           # markers are re-created: some
            meta = head.metadata if head else {}    # stores cannot copy `dir/` keys
            await client.put(target, b"", meta, DIR_CONTENT_TYPE)
        else:
            await client.copy(key, target, size, parallel=parallel)
    if not any(key == intent.old_prefix for key, _etag, _size in intent.sources):
        # no `old/` marker (implicit, or an old s3fs form): the target gets one
        await client.put(intent.new_prefix, b"", marker_metadata, DIR_CONTENT_TYPE)
    await run_all((functools.partial(copy_one, key, size) for key, _etag, size in intent.sources),
                  max(parallel, COPY_FAN_OUT))


async def _roll_back(client: S3Client, intent: Intent) -> None:
    """Delete what the copy phase created: files, then directory levels deepest first
    (stores with real folders, SeaweedFS, keep a folder whose children were copied into
    it) except levels that held a key before."""
    files = [k for k in intent.created if not k.endswith("/")]
    await client.delete_many(files)
    levels = [k for k in namespace.directory_keys_deepest_first(intent.new_prefix, intent.created)
              if not any(old.startswith(k) for old in intent.existing)]
    await client.delete_many(levels)


async def _roll_forward(client: S3Client, intent: Intent, check: bool) -> None:
    """Delete the source keys (the target has them all): files, then directory levels
    deepest first, then the legacy keys.  With `check` (a retry, or recovery) only keys
    still holding the recorded version go, found by a LIST and two HEADs; a directory
    level that still holds a kept key stays."""
    recorded = {key: etag for key, etag, _size in intent.sources}
    legacy = {key: etag for key, etag in intent.legacy}
    deletable, kept = list(recorded), []
    if check:
        present = await namespace.all_keys_below(client, intent.old_prefix)
        deletable = [o.key for o in present if o.key in recorded and recorded[o.key] == o.etag]
        kept = [o.key for o in present if not (o.key in recorded and recorded[o.key] == o.etag)]
        for key in kept:
            log.warning("rename %s -> %s: %s changed or appeared since it was copied; kept",
                        intent.old_prefix, intent.new_prefix, key)
        current = {key: etag for key, etag in await _legacy_keys(client, intent.old_prefix)}
        legacy = {key: etag for key, etag in legacy.items() if current.get(key) == etag}
    await client.delete_many([k for k in deletable if not k.endswith("/")])
    levels = namespace.directory_keys_deepest_first(intent.old_prefix, list(recorded))
    levels = [level for level in levels if not any(key.startswith(level) for key in kept)]
    await client.delete_many(levels + (sorted(legacy) if not kept else []))


# ------------------------------------------------------------------ a live mount
class DirRenames:
    """Directory renames of one live mount; the records live in `directory`."""

    def __init__(self, directory: str):
        self.directory = directory
        self._numbers = itertools.count(1)
        self.unfinished: dict[str, Intent] = {}      # old prefix -> record left by a failure

    def resumes(self, old_prefix: str, new_prefix: str) -> bool:
        """True if renaming `old_prefix` to `new_prefix` finishes an earlier failed attempt
        (the target then holds that attempt's keys and is not empty)."""
        intent = self.unfinished.get(old_prefix)
        return intent is not None and intent.new_prefix == new_prefix

    async def rename(self, client: S3Client, old_prefix: str, new_prefix: str,
                     marker_metadata: dict[str, str], parallel: int, key_max: int | None = None) -> None:
        """Move the directory `old_prefix` to `new_prefix` in S3 (see the module doc).
        Raises RenamedElsewhere (ENOENT) when an earlier attempt to rename `old_prefix` elsewhere was
        rolled forward now (the source is gone), NameTooLong before any copy when a key below
        would pass `key_max` bytes."""
        earlier = self.unfinished.get(old_prefix)
        if earlier is not None:
            await self._finish(client, earlier)
            if earlier.phase == "deleting":
                if earlier.new_prefix == new_prefix:
                    return
                raise RenamedElsewhere(f"{old_prefix} was renamed to {earlier.new_prefix} by an earlier rename, "
                               "finished now")
        intent = await _plan(client, old_prefix, new_prefix)
        if key_max is not None:
            longest = max(len(_target(intent, key).encode("utf-8", "surrogateescape"))
                          for key, _etag, _size in intent.sources + [[old_prefix, None, 0]])
            if longest > key_max:
                raise NameTooLong(f"renaming {old_prefix} to {new_prefix} would make a key of {longest} bytes "
                                  f"(key_max={key_max})")
        intent.path = _new_path(self.directory, self._numbers)
        try:
            await _save(intent)
        except BaseException:
            _drop(intent)
            raise
        try:
            await _copy_all(client, intent, marker_metadata, parallel)
        except BaseException as exc:
            with trio.CancelScope(shield=True):
                await self._undo_copies(client, intent, exc)
            raise
        intent.phase = "deleting"
        await _save(intent)
        try:
            await _roll_forward(client, intent, check=False)
        except BaseException:
            self.unfinished[old_prefix] = intent
            log.error("rename %s -> %s: the copies are complete but deleting the source failed; "
                      "renaming it again, or the next mount, finishes it (record %s)",
                      old_prefix, new_prefix, intent.path)
            raise
        _drop(intent)

    async def _undo_copies(self, client: S3Client, intent: Intent, exc: BaseException) -> None:
        try:
            with trio.fail_after(120):
                await _roll_back(client, intent)
        except (FSError, trio.TooSlowError) as undo_error:
            self.unfinished[intent.old_prefix] = intent
            log.error("rename %s -> %s failed (%s) and removing its copies failed too (%s); the next "
                      "attempt or the next mount removes them (record %s)", intent.old_prefix,
                      intent.new_prefix, exc, undo_error, intent.path)
            return
        _drop(intent)
        log.warning("rename %s -> %s failed (%s); its copies were removed, the source is unchanged",
                    intent.old_prefix, intent.new_prefix, exc)

    async def _finish(self, client: S3Client, intent: Intent) -> None:
        if intent.phase == "deleting":
            await _roll_forward(client, intent, check=True)
        else:
            await _roll_back(client, intent)
        self.unfinished.pop(intent.old_prefix, None)
        _drop(intent)


# ------------------------------------------------------------------ at mount start
async def recover(store, client: S3Client, prefix: str, timeout: float,
                  dead_journals: Callable = abandoned) -> list[tuple[str, str]]:
    """Finish the directory renames of dead mounts under `store`: phase copying is rolled
    back, phase deleting rolled forward.  Returns (record path, outcome) pairs."""
    outcomes: list[tuple[str, str]] = []
    with trio.move_on_after(timeout) as scope:
        for dead in dead_journals(store):
            try:
                for path in record_paths(dead.directory):
                    outcomes.append((path, await _recover_one(path, client, prefix)))
            finally:
                dead.close()
    if scope.cancelled_caught:
        log.error("finishing earlier directory renames stopped after %g s; the rest is kept in %s for "
                  "the next mount", timeout, getattr(store, "path", store))
    return outcomes


async def _recover_one(path: str, client: S3Client, prefix: str) -> str:
    try:
        intent = await trio.to_thread.run_sync(_load, path)
    except (OSError, ValueError) as exc:
        log.error("unreadable directory rename record %s (%s); left in place", path, exc)
        return "invalid"
    if not (intent.old_prefix.startswith(prefix) and intent.new_prefix.startswith(prefix)):
        log.error("directory rename record %s (%s -> %s) lies outside this mount's prefix %r; ignored",
                  path, intent.old_prefix, intent.new_prefix, prefix)
        return "outside"
    try:
        if intent.phase == "deleting":
            await _roll_forward(client, intent, check=True)
        else:
            await _roll_back(client, intent)
    except FSError as exc:
        log.error("could not finish the rename %s -> %s now (%s); kept in %s for the next mount",
                  intent.old_prefix, intent.new_prefix, exc, path)
        return "kept"
    _drop(intent)
    done = "rolled forward" if intent.phase == "deleting" else "rolled back (source kept)"
    log.warning("recovery: the directory rename %s -> %s an earlier mount left unfinished was %s",
                intent.old_prefix, intent.new_prefix, done)
    return done
