"""Names -> objects: how a path below the mount is found in S3, and how listings merge.

Responsibility: the S3 side of lookup and readdir, with no inode or handle
state.  A name NAME in directory prefix P is
  * a directory if `P/NAME/` exists (marker) or any key starts with `P/NAME/`,
    or an object `P/NAME` carries a directory mode (old s3fs format), or an
    empty `P/NAME_$folder$` exists (in every directory, in both the delimited
    listings and the recursive ones that prime subdirectory listings);
  * otherwise a file, symlink or special file if the object `P/NAME` exists.
A directory wins over a file of the same name (the file is logged and hidden),
so that the keys below it stay reachable; such a directory, like one whose
`dir/` marker has a body, is never empty for rmdir, so no hidden data is deleted.
Invariants: names that cannot be path components (empty, '.', '..', containing
'/' or NUL) are skipped with a debug log, never returned; no mutation here.
"""

from __future__ import annotations

import dataclasses
import logging

import trio

from .concurrency import run_all
from .s3client import ListPage, ObjectInfo, S3Client
from .stat_cache import ListedEntry, StatCache

log = logging.getLogger(__name__)

FOLDER_SUFFIX = "_$folder$"   # directory markers some S3 consoles and tools write


@dataclasses.dataclass
class Found:
    is_dir: bool
    info: ObjectInfo | None      # HEAD of the file, or of the `dir/` marker (None: implicit dir)
    legacy_dir_key: bool = False


def valid_name(name: str) -> bool:
    return bool(name) and name not in (".", "..") and "/" not in name and "\0" not in name


async def probe(client: S3Client, cache: StatCache, dir_prefix: str, name: str) -> Found | None:
    """What `name` in the directory `dir_prefix` is, or None if nothing.

    With the stat cache on, a lookup in a directory whose listing is older than
    the negative TTL lists it again (one page): that listing then answers every
    lookup there, found or not, until it ages; a directory larger than a page is
    probed name by name instead.
    """
    key = dir_prefix + name
    if cache.is_missing(key):
        return None
    trusted = cache.listing(dir_prefix)                    # young enough to say "absent"
    if trusted is None and cache.enabled and not cache.is_large(dir_prefix):
        # one LIST answers this and every other name there for a while (a name-by-name
        # probe costs three requests: HEAD file, HEAD marker, LIST children)
        trusted = await list_small_directory(client, cache, dir_prefix)
    listing = trusted if trusted is not None else cache.listing(dir_prefix, max_age=cache.ttl)
    if listing is not None:
        entry = listing.get(name)
        if entry is None and trusted is not None:
            return None
        if entry is None:
            pass                                           # old listing: probe the name itself
        elif entry.is_dir:
            return Found(True, await client.head(key + "/"))
        info = await client.head(key)
        if info is not None:
            return classify_file(info)
    found = await _probe_all(client, key)
    if found is None:
        cache.add_missing(key)
    return found


async def list_small_directory(client: S3Client, cache: StatCache, dir_prefix: str) -> dict[str, ListedEntry] | None:
    """The whole listing of a directory if it fits one page (cached), else None.
    Concurrent lookups in one directory share a single LIST."""
    running = cache.listing_in_flight.get(dir_prefix)
    if running is not None:
        await running.wait()
        return cache.listing(dir_prefix)
    done = cache.listing_in_flight[dir_prefix] = trio.Event()
    try:
        page, token = await client.list_page(dir_prefix, delimiter="/")
        if token:
            cache.note_large(dir_prefix)
            return None
        entries = _merge_page({}, dir_prefix, page)
        cache.remember_listing(dir_prefix, entries)
        return entries
    finally:
        del cache.listing_in_flight[dir_prefix]
        done.set()


def classify_file(info: ObjectInfo) -> Found:
    mode = info.metadata.get("mode", "")
    is_dir = (mode.isdigit() and (int(mode) & 0o170000) == 0o040000) or \
        info.content_type == "application/x-directory"
    return Found(is_dir, info, legacy_dir_key=is_dir)


async def _probe_all(client: S3Client, key: str) -> Found | None:
    results: dict[str, object] = {}

    async def head_file() -> None:
        results["file"] = await client.head(key)

    async def head_marker() -> None:
        results["marker"] = await client.head(key + "/")

    async def list_children() -> None:
        page, _ = await client.list_page(key + "/", delimiter="/", max_keys=1)
        results["children"] = bool(page.objects or page.prefixes)

    await run_all([head_file, head_marker, list_children], 3)
    file_info, marker = results["file"], results["marker"]
    if marker is not None or results["children"]:
        if file_info is not None:
            log.debug("%s is both a file and a directory; showing the directory", key)
        return Found(True, marker)  # type: ignore[arg-type]
    if file_info is not None:
        return classify_file(file_info)  # type: ignore[arg-type]
    return None


async def list_directory(client: S3Client, dir_prefix: str) -> dict[str, ListedEntry]:
    """All names in a directory, from every page of a delimited listing."""
    entries: dict[str, ListedEntry] = {}
    async for page in client.list(dir_prefix, delimiter="/"):
        _merge_page(entries, dir_prefix, page)
    return entries


def _merge_page(entries: dict[str, ListedEntry], dir_prefix: str, page: ListPage) -> dict[str, ListedEntry]:
    for obj in page.objects:
        name = obj.key[len(dir_prefix):]
        if name == "":
            continue  # the directory's own marker
        if name.endswith(FOLDER_SUFFIX) and obj.size == 0:
            name = name[:-len(FOLDER_SUFFIX)]
            if valid_name(name):
                entries[name] = ListedEntry(True)
            continue
        if not valid_name(name):
            log.debug("skipping key %r: not usable as a file name", obj.key)
            continue
        if name in entries and entries[name].is_dir:
            log.debug("%s is both a file and a directory; showing the directory", obj.key)
            continue
        entries[name] = ListedEntry(False, obj.size, obj.etag, obj.last_modified_ns)
    for prefix in page.prefixes:
        name = prefix[len(dir_prefix):-1]
        if not valid_name(name):
            log.debug("skipping prefix %r: not usable as a directory name", prefix)
            continue
        if name in entries and not entries[name].is_dir:
            log.debug("%s is both a file and a directory; showing the directory", prefix)
        entries[name] = ListedEntry(True)
    return entries


async def is_empty_directory(client: S3Client, dir_prefix: str) -> bool:
    """True when removing the directory `dir_prefix` deletes no data: no key below
    it, its marker has no body, and no file of the same name hides behind it
    (rmdir deletes `dir/`, `dir` and `dir_$folder$`)."""
    results: dict[str, object] = {}

    async def list_below() -> None:
        page, _ = await client.list_page(dir_prefix, delimiter="/", max_keys=2)
        results["below"] = bool(page.prefixes) or any(
            o.key != dir_prefix or o.size > 0 for o in page.objects)

    async def head_same_name() -> None:
        info = await client.head(dir_prefix[:-1])
        results["file"] = info is not None and not (info.size == 0 and classify_file(info).is_dir)

    await run_all([list_below, head_same_name], 2)
    for what in ("below", "file"):
        if results[what]:
            log.debug("directory %r is not empty: %s", dir_prefix,
                      "keys or a marker body below it" if what == "below" else "a file of the same name")
            return False
    return True


async def all_keys_below(client: S3Client, dir_prefix: str) -> list[ObjectInfo]:
    """Every object whose key starts with `dir_prefix` (recursive, paginated)."""
    found: list[ObjectInfo] = []
    async for page in client.list(dir_prefix, delimiter=None):
        found.extend(page.objects)
    return found


def directory_keys_deepest_first(root_prefix: str, keys: list[str]) -> list[str]:
    """`root_prefix` and every directory level between it and `keys`, deepest first."""
    levels = {root_prefix}
    for key in keys:
        rest = key[len(root_prefix):]
        parts = rest.split("/")[:-1]
        for depth in range(1, len(parts) + 1):
            levels.add(root_prefix + "/".join(parts[:depth]) + "/")
    return sorted(levels, key=lambda k: (-k.count("/"), k))


async def list_tree(client: S3Client, dir_prefix: str, limit: int) -> dict[str, dict[str, ListedEntry]] | None:
    """Listings of every directory below `dir_prefix` from one recursive listing,
    or None if the subtree holds more than `limit` keys."""
    tree: dict[str, dict[str, ListedEntry]] = {}
    count = 0
    async for page in client.list(dir_prefix, delimiter=None):
        count += len(page.objects)
        if count > limit:
            return None
        for obj in page.objects:
            _add_to_tree(tree, dir_prefix, obj)
    return tree


def _add_to_tree(tree: dict[str, dict[str, ListedEntry]], root: str, obj: ObjectInfo) -> None:
    parts = obj.key[len(root):].split("/")
    directory = root
    for depth, name in enumerate(parts):
        last = depth == len(parts) - 1
        if last and name == "":
            tree.setdefault(directory, {})          # a marker: the directory exists, maybe empty
            return
        if not valid_name(name):
            return                                  # not a path: skipped, as in listings
        entries = tree.setdefault(directory, {})
        if last and name.endswith(FOLDER_SUFFIX) and obj.size == 0:
            name = name[:-len(FOLDER_SUFFIX)]       # `x_$folder$`: the directory x, as in listings
            if valid_name(name):
                entries[name] = ListedEntry(True)
                tree.setdefault(directory + name + "/", {})
            return
        if last:
            if not (name in entries and entries[name].is_dir):
                entries[name] = ListedEntry(False, obj.size, obj.etag, obj.last_modified_ns)
            return
        entries[name] = ListedEntry(True)
        directory = directory + name + "/"
