"""Two mounts of one bucket ("two nodes"): what one mount sees of the other's changes.

Responsibility: close-to-open consistency between mounts, checked through FUSE on
SeaweedFS.  A file closed on mount A is seen whole on mount B once B's caches have
expired (stat_cache_expire / negative_cache_expire, both 1 s here), and a read on B
is never a mix of two versions, even while A keeps replacing the object.  Creates,
deletes, renames and symlink switches made on A show on B after the cache TTLs.

A handle whose object is replaced while it reads may also fail (ESTALE or EIO:
S3 keeps no old version to finish the read from); it must never return a mix.

Versions are recognisable in every 4 KiB block: a block carries its version number
and its own index, so a read that stitched parts of two objects together, or
shifted data, is caught block by block.
"""

from __future__ import annotations

import errno
import os
import struct
import threading
import time

import pytest

pytestmark = pytest.mark.mounted

MiB = 1024 * 1024
BLOCK = 4096
TTL = 1.0                      # stat_cache_expire and negative_cache_expire of both mounts
SETTLE = TTL + 1.5             # TTL plus margin for a loaded 2-core machine
CACHE_OPTS = (f"stat_cache_expire={TTL:g}", f"negative_cache_expire={TTL:g}")
HEADER = struct.Struct("<QQ")  # version, block index
# What a read may fail with when the object it reads was replaced meanwhile.
REPLACED_ERRNOS = (errno.ESTALE, errno.EIO)


def versioned(version: int, size: int) -> bytes:
    """`size` bytes whose every 4 KiB block names `version` and its own index."""
    filler = bytes([version % 251 + 1]) * (BLOCK - HEADER.size)
    blocks = [HEADER.pack(version, i) + filler for i in range(size // BLOCK)]
    return b"".join(blocks)


def versions_in(data: bytes) -> set[int]:
    """The versions the blocks of `data` carry; raises on a block out of place."""
    assert len(data) % BLOCK == 0, f"read {len(data)} bytes, not whole blocks"
    found = set()
    view = memoryview(data)
    for i in range(len(data) // BLOCK):
        version, index = HEADER.unpack_from(view, i * BLOCK)
        assert index == i, f"block {i} holds block {index} of version {version}"
        filler = bytes(view[i * BLOCK + HEADER.size:(i + 1) * BLOCK])
        assert filler == bytes([version % 251 + 1]) * len(filler), \
            f"block {i} of version {version} has foreign filler bytes"
        found.add(version)
    return found


def two_mounts(mount, bucket, *opts):
    return mount(bucket, *CACHE_OPTS, *opts), mount(bucket, *CACHE_OPTS, *opts)


def write_whole(path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def test_rewrites_on_a_are_read_whole_on_b_never_mixed(s3, bucket, mount):
    """A rewrites a 24 MiB (multipart) file again and again; B reads it whole in a
    loop meanwhile.  Every read on B is one version; after A's close and the TTL,
    B reads the newest one."""
    size = 24 * MiB
    rewrites = 6
    a, b = two_mounts(mount, bucket, "multipart_size=5")
    name = "shared.bin"
    write_whole(a.path / name, versioned(0, size))
    time.sleep(SETTLE)
    assert versions_in((b.path / name).read_bytes()) == {0}

    mixes: list[str] = []
    seen: list[int] = []
    refused: list[int] = []            # reads that failed because the object changed
    errors: list[BaseException] = []
    stop = threading.Event()

    def read_on_b():
        while not stop.is_set():
            try:
                with open(b.path / name, "rb") as f:
                    data = f.read()
                if len(data) != size:
                    mixes.append(f"read {len(data)} bytes, expected {size}")
                    continue
                versions = versions_in(data)
                if len(versions) != 1:
                    mixes.append(f"one read holds versions {sorted(versions)}")
                else:
                    seen.extend(versions)
            except AssertionError as exc:
                mixes.append(str(exc))
            except OSError as exc:
                if exc.errno not in REPLACED_ERRNOS:
                    errors.append(exc)
                    return
                refused.append(exc.errno)
            except BaseException as exc:   # noqa: BLE001 - reported below
                errors.append(exc)
                return

    reader = threading.Thread(target=read_on_b, daemon=True)
    reader.start()
    try:
        for version in range(1, rewrites + 1):
            write_whole(a.path / name, versioned(version, size))
            # close returned: the object is complete in S3; after the TTL a new
            # open on B must see exactly this version.
            time.sleep(SETTLE)
            fresh = (b.path / name).read_bytes()
            assert versions_in(fresh) == {version}, f"after rewrite {version}"
    finally:
        stop.set()
        reader.join(120)
    assert not reader.is_alive(), "reader on mount B hung"
    assert not errors, f"reads on mount B failed: {errors[0]!r}"
    assert not mixes, f"{len(mixes)} reads on B were not one whole version: {mixes[:5]}"
    assert len(seen) >= rewrites, \
        f"reader on B finished only {len(seen)} whole reads ({len(refused)} refused)"
    body = s3.get_object(Bucket=bucket, Key=name)["Body"].read()
    assert versions_in(body) == {rewrites}


def test_create_delete_rename_on_a_seen_on_b(s3, bucket, mount):
    a, b = two_mounts(mount, bucket)
    (a.path / "dir").mkdir()
    time.sleep(SETTLE)

    # B looks the name up first, so "absent" is in B's negative cache.
    new_b = b.path / "dir" / "new.txt"
    with pytest.raises(FileNotFoundError):
        os.stat(new_b)
    assert "new.txt" not in os.listdir(b.path / "dir")
    write_whole(a.path / "dir" / "new.txt", b"created on A\n")
    time.sleep(SETTLE)
    assert new_b.read_bytes() == b"created on A\n"
    assert os.stat(new_b).st_size == len(b"created on A\n")
    assert "new.txt" in os.listdir(b.path / "dir")

    # Rewrite with another size: B sees the new size and bytes after the TTL.
    write_whole(a.path / "dir" / "new.txt", b"rewritten on A, longer than before\n")
    time.sleep(SETTLE)
    assert os.stat(new_b).st_size == len(b"rewritten on A, longer than before\n")
    assert new_b.read_bytes() == b"rewritten on A, longer than before\n"

    # Rename on A: B sees the new name with the bytes, and not the old one.
    os.rename(a.path / "dir" / "new.txt", a.path / "dir" / "moved.txt")
    time.sleep(SETTLE)
    with pytest.raises(FileNotFoundError):
        os.stat(new_b)
    assert (b.path / "dir" / "moved.txt").read_bytes() == b"rewritten on A, longer than before\n"
    assert sorted(os.listdir(b.path / "dir")) == ["moved.txt"]

    # Directory rename on A.
    os.rename(a.path / "dir", a.path / "dir2")
    time.sleep(SETTLE)
    assert "dir" not in os.listdir(b.path)
    assert (b.path / "dir2" / "moved.txt").read_bytes() == b"rewritten on A, longer than before\n"

    # Delete on A: gone on B, for stat, open and listing.
    os.unlink(a.path / "dir2" / "moved.txt")
    time.sleep(SETTLE)
    with pytest.raises(FileNotFoundError):
        os.stat(b.path / "dir2" / "moved.txt")
    with pytest.raises(OSError) as info:
        open(b.path / "dir2" / "moved.txt", "rb")
    assert info.value.errno == errno.ENOENT
    assert os.listdir(b.path / "dir2") == []
    assert "dir2/moved.txt" not in [
        o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]


def test_file_open_on_b_keeps_reading_its_version_or_whole_new(bucket, mount):
    """A handle opened on B before A replaces a small file reads either the old
    or the new bytes entirely, never a mix; a new open after the TTL reads the new."""
    a, b = two_mounts(mount, bucket)
    size = 3 * MiB
    write_whole(a.path / "f", versioned(1, size))
    time.sleep(SETTLE)
    with open(b.path / "f", "rb") as f:
        head = f.read(BLOCK)
        write_whole(a.path / "f", versioned(2, size))
        try:
            rest = f.read()
        except OSError as exc:
            assert exc.errno in REPLACED_ERRNOS, f"read after replacement failed: {exc!r}"
            rest = None
    if rest is not None:
        assert len(head + rest) == size
        assert len(versions_in(head + rest)) == 1, "one handle read two versions"
    time.sleep(SETTLE)
    assert versions_in((b.path / "f").read_bytes()) == {2}


def test_symlink_replaced_on_a_shows_new_target_on_b(bucket, mount):
    """`ln -sfn` on A (switching a "current" link): B follows the new target after the TTL."""
    a, b = two_mounts(mount, bucket)
    os.symlink("release-1", a.path / "current")
    time.sleep(SETTLE)
    assert os.readlink(b.path / "current") == "release-1"
    os.unlink(a.path / "current")
    os.symlink("release-2", a.path / "current")
    time.sleep(SETTLE)
    assert os.readlink(b.path / "current") == "release-2"
