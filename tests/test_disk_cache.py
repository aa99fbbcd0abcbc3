"""The disk cache (use_cache=): re-reads without S3, survives remounts, bounded, safe names."""

from __future__ import annotations

import os

import pytest

from s3pyfs.disk_cache import DiskCache

MiB = 1024 * 1024


def test_blocks_round_trip_and_survive_a_restart(tmp_path):
    cache = DiskCache(str(tmp_path), "b", max_bytes=10 * MiB, min_free=0)
    cache.put("../../etc/passwd", "etag1", MiB, 0, b"x" * 100)
    assert cache.get("../../etc/passwd", "etag1", MiB, 0, 100) == b"x" * 100
    assert cache.get("../../etc/passwd", "etag2", MiB, 0, 100) is None      # another version
    names = os.listdir(tmp_path / "blocks")
    assert len(names) == 1 and "/" not in names[0] and "passwd" not in names[0]
    again = DiskCache(str(tmp_path), "b", max_bytes=10 * MiB, min_free=0)
    assert again.get("../../etc/passwd", "etag1", MiB, 0, 100) == b"x" * 100


def test_size_limit_evicts_least_recently_used(tmp_path):
    cache = DiskCache(str(tmp_path), "b", max_bytes=3 * MiB, min_free=0)
    for i in range(3):
        cache.put("k", "e", MiB, i, bytes([i]) * MiB)
    assert cache.get("k", "e", MiB, 0, MiB) is not None                  # 0 is now the newest
    cache.put("k", "e", MiB, 3, b"3" * MiB)
    assert cache.bytes <= 3 * MiB
    assert cache.get("k", "e", MiB, 1, MiB) is None                      # the oldest went
    assert cache.get("k", "e", MiB, 0, MiB) is not None


def test_free_space_floor_is_kept(tmp_path):
    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    cache = DiskCache(str(tmp_path), "b", min_free=free + 1)             # the disk is already "full"
    cache.put("k", "e", MiB, 0, b"x" * MiB)
    assert cache.get("k", "e", MiB, 0, MiB) is None and cache.bytes == 0


@pytest.mark.mounted
def test_remount_reads_from_the_disk_cache(s3, bucket, mount, tmp_path, proxy):
    data = os.urandom(20 * MiB + 5)
    s3.put_object(Bucket=bucket, Key="f.bin", Body=data)
    s3.put_object(Bucket=bucket, Key="small", Body=b"tiny")
    cache_dir = tmp_path / "cache"
    m = mount(bucket, f"use_cache={cache_dir}")
    assert (m.path / "f.bin").read_bytes() == data
    assert (m.path / "small").read_bytes() == b"tiny"
    assert m.unmount() == 0
    stored = sum(p.stat().st_size for p in (cache_dir / f"s3pyfs-{os.getuid()}" / "blocks").iterdir())
    assert stored >= len(data)
    s3.put_object(Bucket=bucket, Key="small", Body=b"changed")         # new ETag: not served stale
    again = mount(bucket, f"use_cache={cache_dir}", f"url={proxy.url}")
    before = proxy.bytes_down
    assert (again.path / "f.bin").read_bytes() == data
    assert proxy.bytes_down - before < MiB          # headers only: the 20 MiB came from disk
    assert (again.path / "small").read_bytes() == b"changed"
