"""Dirty-data journal: named staging files that outlive a crash of the mount.

Responsibility: give every staging file (writeback.Staging) a name on disk
and, while its content differs from S3, a small JSON record next to it that
says where the bytes belong.  After a SIGKILL or a crash the next mount with
the same cache directory finds the records and uploads them (recovery.py).

Layout (all 0700/0600, owned by the mounting user):
    <base>/<store>/<instance>/lock        flock held while that mount lives
    <base>/<store>/<instance>/<n>.data    staging file (sparse; size = file size)
    <base>/<store>/<instance>/<n>.json    present only while <n>.data is dirty
    <base>/<store>/lost+found/            records recovery could not apply
<base> is `use_cache=DIR/dirty` or `tmpdir/s3pyfs-dirty`; <store> is a hash
of endpoint and bucket, so keys never become path components.

Invariants:
  * A `.json` exists exactly while its file holds data not yet in S3: it is
    written (temporary name + rename, so it is whole or absent) before the
    write that made the file dirty is acknowledged to the kernel, and
    removed after the upload of the newest generation succeeded.
  * A `.data` without a `.json` holds nothing that needs saving.
  * An instance directory whose lock can be taken belongs to no live mount.
  * Records are not fsynced: they survive a process crash (the kernel keeps
    the page cache), not a power loss; close()/fsync() are the only
    durability promise (the data is in S3 then).
"""

from __future__ import annotations

import fcntl
import hashlib
import itertools
import json
import logging
import os
import shutil
import time
from typing import Iterator

log = logging.getLogger(__name__)

RECORD_VERSION = 1
LOCK_NAME = "lock"
LOST_AND_FOUND = "lost+found"
SPARE_FILES = 64            # emptied staging files kept for reuse per mount


def store_dir(base: str, endpoint: str | None, bucket: str) -> str:
    """Directory of all instances mounting `bucket` at `endpoint` under `base`."""
    digest = hashlib.sha256(f"{endpoint or 'aws'}\n{bucket}".encode()).hexdigest()[:20]
    return os.path.join(base, digest)


class Record:
    """One staging file and its journal record."""

    def __init__(self, directory: str, stem: str, fd: int, pool: list["Record"] | None = None):
        self.directory = directory
        self.stem = stem
        self.fd = fd
        self.pool = pool            # the journal's spare files, or None (recovery)
        self.data_path = os.path.join(directory, stem + ".data")
        self.json_path = os.path.join(directory, stem + ".json")

    def save(self, entry: dict) -> None:
        """Write the record (whole or not at all); errors are logged, not raised:
        the data itself is safe in the staging file and still uploaded at close."""
        tmp = self.json_path + ".tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(dict(entry, version=RECORD_VERSION), f)
            os.replace(tmp, self.json_path)
        except OSError as exc:
            log.error("could not write the journal record %s (%s): this file's unsaved data would not "
                      "survive a crash", self.json_path, exc.strerror)

    def load(self) -> dict | None:
        try:
            with open(self.json_path, encoding="utf-8") as f:
                entry = json.load(f)
        except (OSError, ValueError):
            return None
        return entry if isinstance(entry, dict) and entry.get("version") == RECORD_VERSION else None

    def clear(self) -> None:
        """The data is in S3: nothing to recover any more."""
        _remove(self.json_path)

    def release(self) -> None:
        """Close the staging file, keeping file and record for a later recovery."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def discard(self) -> None:
        """Close and delete the staging file and its record (or hand it back to the
        journal's pool of spare files, emptied: creating and unlinking a file per
        written file cost more than a small file's upload on overlay filesystems)."""
        _remove(self.json_path)
        if self.fd >= 0 and self.pool is not None and len(self.pool) < SPARE_FILES:
            try:
                os.ftruncate(self.fd, 0)
                self.pool.append(Record(self.directory, self.stem, self.fd, self.pool))
                self.fd = -1
                return
            except OSError:
                pass
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        _remove(self.data_path)


class Journal:
    """The records of one live mount: a locked instance directory."""

    def __init__(self, directory: str, lock: bool = True):
        self.directory = directory
        os.makedirs(directory, mode=0o700, exist_ok=True)
        self._lock_fd = -1
        if lock:
            self._lock_fd = os.open(os.path.join(directory, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._numbers = itertools.count(1)
        self._spare: list[Record] = []     # emptied staging files kept open for reuse

    @classmethod
    def create(cls, store: str) -> "Journal":
        """A new locked instance directory under `store`."""
        os.makedirs(store, mode=0o700, exist_ok=True)
        name = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{os.urandom(3).hex()}"
        return cls(os.path.join(store, name))

    def new_record(self) -> Record:
        if self._spare:
            return self._spare.pop()
        while True:
            stem = str(next(self._numbers))
            path = os.path.join(self.directory, stem + ".data")
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                continue
            return Record(self.directory, stem, fd, self._spare)

    def records(self) -> Iterator[Record]:
        """Records left in this directory (recovery); staging files without a record
        are removed: they held nothing unsaved."""
        for name in sorted(os.listdir(self.directory)):
            stem, dot, ext = name.partition(".")
            path = os.path.join(self.directory, name)
            if ext == "json":
                if not os.path.exists(os.path.join(self.directory, stem + ".data")):
                    log.error("journal record %s has no staging file; removed", path)
                    _remove(path)
                    continue
                fd = os.open(os.path.join(self.directory, stem + ".data"), os.O_RDWR)
                yield Record(self.directory, stem, fd)
            elif ext == "data" and not os.path.exists(os.path.join(self.directory, stem + ".json")):
                _remove(path)
            elif ext == "json.tmp":
                _remove(path)

    def pending(self) -> list[str]:
        return sorted(n for n in os.listdir(self.directory) if n.endswith(".json"))

    def close(self) -> None:
        """End of the mount: drop clean staging files; remove the directory when nothing
        unsaved is left, else keep it (unlocked) for the next mount to recover."""
        for record in self._spare:
            record.release()
        self._spare.clear()
        for name in os.listdir(self.directory):
            stem, _, ext = name.partition(".")
            if ext == "data" and not os.path.exists(os.path.join(self.directory, stem + ".json")):
                _remove(os.path.join(self.directory, name))
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1
        if not self.pending():
            shutil.rmtree(self.directory, ignore_errors=True)


def abandoned(store: str) -> Iterator[Journal]:
    """Instance directories of mounts that are gone, each locked for the caller."""
    try:
        names = sorted(os.listdir(store))
    except FileNotFoundError:
        return
    for name in names:
        path = os.path.join(store, name)
        if name == LOST_AND_FOUND or not os.path.isdir(path):
            continue
        try:
            journal = Journal(path)
        except BlockingIOError:
            continue                        # a live mount owns it
        except OSError as exc:
            log.error("cannot open journal directory %s: %s", path, exc.strerror)
            continue
        yield journal


def move_to_lost_and_found(store: str, record: Record, entry: dict | None, reason: str) -> str:
    """Keep a record that could not be applied, for the operator; returns its new path."""
    target = os.path.join(store, LOST_AND_FOUND, f"{time.strftime('%Y%m%dT%H%M%S')}-{os.urandom(3).hex()}")
    os.makedirs(target, mode=0o700)
    os.replace(record.data_path, os.path.join(target, "data"))
    info = dict(entry or {}, reason=reason)
    with open(os.path.join(target, "record.json"), "w", encoding="utf-8") as f:
        json.dump(info, f, indent=1)
    record.discard()
    return target


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("could not remove %s: %s", path, exc.strerror)
