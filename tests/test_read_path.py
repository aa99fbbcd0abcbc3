"""Mounted read path: byte-exact answers across part boundaries, and hydration of
randomly read objects into the disk cache (hydrate.py) only up to `hydrate_max`.

Reads use O_DIRECT so that every one reaches the mounter (the kernel's page
cache would otherwise answer re-read pages).  What is fetched is observed on
the mount's Prometheus counters (bytes S3 sent) and in the cache directory.
"""

from __future__ import annotations

import mmap
import os
import random
import urllib.request

import pytest
import support

pytestmark = pytest.mark.mounted

MiB = 1024 * 1024
PART = 8 * MiB


def received(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("s3pyfs_s3_received_bytes_total"):
                return float(line.split()[-1])
    raise AssertionError("no s3pyfs_s3_received_bytes_total")


class Direct:
    """O_DIRECT preads (4 KiB aligned) into an aligned buffer."""

    def __init__(self, path):
        self.fd = os.open(path, os.O_RDONLY | os.O_DIRECT)

    def pread(self, offset: int, size: int) -> bytes:
        buf = mmap.mmap(-1, size)
        n = os.preadv(self.fd, [buf], offset)
        return bytes(buf[:n])

    def close(self) -> None:
        os.close(self.fd)


def blocks_of(cache_dir, size: int) -> list:
    blocks = cache_dir / f"s3pyfs-{os.getuid()}" / "blocks"
    if not blocks.is_dir():
        return []
    return [p for p in blocks.iterdir() if p.name.endswith(".blk") and p.stat().st_size == size]


def test_reads_are_byte_exact_across_part_boundaries(s3, bucket, mount):
    body = os.urandom(3 * PART + 12345)
    s3.put_object(Bucket=bucket, Key="f", Body=body)
    m = mount(bucket)
    f = Direct(m.path / "f")
    try:
        # a sequential run that becomes streamed parts, with reads straddling each boundary
        step = 192 * 1024
        offset = 4096
        while offset < len(body):
            assert f.pread(offset, step) == body[offset:offset + step], offset
            offset += step
        # reads crossing a part boundary by a few pages, in no order
        for boundary in (2 * PART, PART, 3 * PART):
            assert f.pread(boundary - 8192, 16384) == body[boundary - 8192:boundary + 8192]
    finally:
        f.close()
    assert (m.path / "f").read_bytes() == body


def test_random_reads_hydrate_the_object_into_the_disk_cache(s3, bucket, mount, tmp_path):
    size = 4 * PART + 5000
    body = os.urandom(size)
    s3.put_object(Bucket=bucket, Key="r", Body=body)
    port = support.free_ports(1)[0]
    cache = tmp_path / "cache"
    cache.mkdir()
    m = mount(bucket, f"use_cache={cache}", f"metrics=127.0.0.1:{port}")
    rng = random.Random(7)
    f = Direct(m.path / "r")
    try:
        for _ in range(8):
            offset = rng.randrange(size // 4096) * 4096
            assert f.pread(offset, 4096) == body[offset:offset + 4096]
        # the whole object arrives in the cache in the background: 4 full parts and the tail
        assert support.wait_until(lambda: len(blocks_of(cache, PART)) == 4 and blocks_of(cache, 5000), 60), \
            sorted(p.stat().st_size for p in (cache / f"s3pyfs-{os.getuid()}" / "blocks").iterdir())
        before = received(port)
        for _ in range(300):
            offset = rng.randrange(size // 4096) * 4096
            assert f.pread(offset, 4096) == body[offset:offset + 4096]
        assert received(port) == before          # all answered from the cache
    finally:
        f.close()


def test_objects_above_hydrate_max_fetch_only_what_is_read(s3, bucket, mount, tmp_path):
    size = 6 * PART
    body = os.urandom(size)
    s3.put_object(Bucket=bucket, Key="big", Body=body)
    port = support.free_ports(1)[0]
    cache = tmp_path / "cache"
    cache.mkdir()
    m = mount(bucket, f"use_cache={cache}", "hydrate_max=32", f"metrics=127.0.0.1:{port}")
    rng = random.Random(3)
    f = Direct(m.path / "big")
    before = received(port)
    count = 200
    try:
        for _ in range(count):
            offset = rng.randrange(size // 4096) * 4096
            assert f.pread(offset, 4096) == body[offset:offset + 4096]
    finally:
        f.close()
    fetched = received(port) - before
    assert count * 4096 <= fetched <= 2 * count * 4096
    assert blocks_of(cache, PART) == []
