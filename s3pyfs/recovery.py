"""Crash recovery: upload the dirty data an earlier mount left in its journal.

Responsibility: at mount start (after the bucket check, before the mount is
offered to the kernel) go through the journal directories of mounts of the
same bucket that are gone (journal.abandoned) and bring each record to an
end: uploaded, already in S3, or kept in lost+found for the operator.
Rules (data safety, see ARCHITECTURE.md):
  * Multipart uploads a record lists are aborted first: they were started by
    the dead mount and nobody will complete them.
  * A record is uploaded only when the object in S3 is still the version its
    data was based on (same ETag, or still absent for a new file), so a file
    changed by another client since the crash is never overwritten: checked
    by a HEAD first, then enforced by the requests themselves (`_apply`:
    unwritten blocks are fetched with If-Match: base, the commit carries
    If-Match: base or If-None-Match: *), so a change after the HEAD is a
    conflict (lost+found), never a mix or an overwrite.
  * When S3 already holds exactly the local content (the crash came after the
    upload but before the record was removed), the record is just dropped.
  * Otherwise the data goes to `<store>/lost+found/` with a record.json
    saying why, and one ERROR line names it.
  * A failed request leaves the record where it is, for the next mount.
  * Only records the mounting uid owns are read (journal.abandoned: the
    store, the instance directories and the files are checked and opened
    without following symlinks), and only keys inside the mount's prefix are
    acted on: a record naming any other key goes to lost+found with the
    reason, is never uploaded and none of its multipart uploads is touched.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os

import trio

from . import diskio, journal
from .errors import Conflict, FSError
from .journal import Journal, Record
from .statedir import Dir
from .writeback import Staging, part_size_for

log = logging.getLogger(__name__)

HASH_CHUNK = 8 * 1024 * 1024


@dataclasses.dataclass
class Outcome:
    key: str
    result: str          # "uploaded", "already in S3", "lost+found", "kept", "invalid"
    detail: str = ""


async def recover(store: Dir, client, multipart_size: int, parallel: int,
                  timeout: float, prefix: str = "") -> list[Outcome]:
    """Apply every abandoned record under `store` whose key starts with `prefix` (the
    mount's, "" or ending in "/"); gives up (records kept) after `timeout` s."""
    outcomes: list[Outcome] = []
    with trio.move_on_after(timeout) as scope:
        for dead in journal.abandoned(store):
            try:
                for record in dead.records():
                    outcomes.append(await _recover_one(store, dead, record, client, multipart_size, parallel,
                                                       prefix))
            finally:
                with trio.CancelScope(shield=True):
                    await dead.settle()         # record deletions run in disk threads
                dead.close()
    if scope.cancelled_caught:
        log.error("recovery of earlier dirty data stopped after %g s; the rest is kept in %s for the next mount",
                  timeout, store.path)
    return outcomes


async def _recover_one(store: Dir, dead: Journal, record: Record, client, multipart_size: int,
                       parallel: int, prefix: str = "") -> Outcome:
    entry = record.load()
    if entry is None or not isinstance(entry.get("key"), str):
        where = journal.move_to_lost_and_found(store, record, entry, "unreadable journal record")
        log.error("dirty data left by an earlier mount has an unreadable record; kept in %s", where)
        return Outcome("?", "invalid", where)
    key = entry["key"]
    if not key.startswith(prefix) or key == prefix:
        reason = f"the key is outside this mount's prefix {prefix!r}; not uploaded"
        where = journal.move_to_lost_and_found(store, record, entry, reason)
        log.error("recovery: a journal record names a key outside this mount's prefix; kept in %s", where)
        return Outcome(key, "lost+found", where)
    try:
        for upload_id in entry.get("uploads") or []:
            await client.abort_multipart(key, upload_id)
        return await _apply(store, record, entry, client, multipart_size, parallel)
    except FSError as exc:
        log.error("could not recover %s now (%s); kept in %s for the next mount", key, exc, dead.directory)
        record.release()
        return Outcome(key, "kept", str(exc))


async def _apply(store: Dir, record: Record, entry: dict, client, multipart_size: int, parallel: int) -> Outcome:
    key = entry["key"]
    size = os.fstat(record.fd).st_size
    source_limit = int(entry.get("source_limit") or 0)
    base_etag = entry.get("base_etag")
    current = await client.head(key)
    current_etag = current.etag if current is not None else None
    if current_etag != base_etag:
        if source_limit == 0 and current is not None and current.size == size and \
                await diskio.run(local_etag, record.fd, size, multipart_size) == current_etag:
            record.discard()
            log.info("recovery: %s was already uploaded before the earlier mount stopped", key)
            return Outcome(key, "already in S3")
        reason = ("the object was deleted" if current is None else "the object was replaced") + \
            " in S3 after this data was written; not overwriting it"
        where = journal.move_to_lost_and_found(store, record, entry, reason)
        log.error("recovery: unsaved data of %s kept in %s: %s", key, where, reason)
        return Outcome(key, "lost+found", where)
    # unwritten blocks are fetched pinned to the base (If-Match) and the commit is conditional
    # (If-Match base, If-None-Match: * for a new file): a version written after the HEAD above
    # is never mixed in nor overwritten
    staging = Staging(record, size, min(source_limit, size), base_etag, resize=False, base_key=key,
                      absent=base_etag is None)
    staging.depends_on_base = base_etag is not None      # the record does not say more: stay strict
    written = journal.written_blocks(entry)          # version 2 ranges or version 1's list
    staging.written.update(sorted(written))
    staging.present = set(written)
    staging.generation = 1

    async def fetch(start: int, end: int, etag: str | None = None) -> bytes:
        return await client.get_range(key, start, end, etag=etag)
    try:
        await staging.upload(client, key, dict(entry.get("metadata") or {}), fetch, multipart_size, parallel,
                             headers=dict(entry.get("headers") or {}))
    except Conflict as exc:
        reason = f"the object was changed in S3 during recovery; not overwriting it ({exc})"
        where = journal.move_to_lost_and_found(store, record, dict(entry, current_etag=exc.current_etag), reason)
        log.error("recovery: unsaved data of %s kept in %s: %s", key, where, reason)
        return Outcome(key, "lost+found", where)
    record.discard()
    log.warning("recovery: uploaded %s (%d bytes) that an earlier mount had not uploaded before it stopped",
                key, size)
    return Outcome(key, "uploaded")


def local_etag(fd: int, size: int, multipart_size: int) -> str:
    """The ETag S3 gives this content when s3pyfs uploads it (MD5, or MD5 of part MD5s)."""
    if size <= multipart_size:
        return _md5(fd, 0, size).hexdigest()
    part = part_size_for(size, multipart_size)
    digests = [_md5(fd, start, min(part, size - start)).digest() for start in range(0, size, part)]
    return f"{hashlib.md5(b''.join(digests)).hexdigest()}-{len(digests)}"


def _md5(fd: int, start: int, length: int):
    digest = hashlib.md5()
    end = start + length
    while start < end:
        chunk = os.pread(fd, min(HASH_CHUNK, end - start), start)
        if not chunk:
            break
        digest.update(chunk)
        start += len(chunk)
    return digest
