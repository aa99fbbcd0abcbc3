"""Small files: few disk-thread hops per file, and bytes exactly as written.

Driven through the core (no FUSE) against moto's S3 server.  Every disk-thread
call is a wake-up of another thread; on a loaded machine each one costs far more
wall time than the microseconds of I/O it does, and creating or untarring many
small files is a chain of them.  The memory copy of a small file (writeback.py's
mirror) and the journal's coalesced removal keep a create-write-close at three.
"""

from __future__ import annotations

import os
import random
import uuid

import boto3
import pytest
import trio

from s3pyfs import diskio, writeback
from s3pyfs.core import Config
from s3pyfs.credentials import StaticKeys
from s3pyfs.filesystem import Filesystem
from s3pyfs.inodes import ROOT_INODE
from s3pyfs.metadata import Defaults
from s3pyfs.s3client import ClientSettings, open_client

pytestmark = pytest.mark.trio


@pytest.fixture
async def core(moto_server, tmp_path):
    s3 = boto3.client("s3", endpoint_url=moto_server.endpoint, aws_access_key_id="test",
                      aws_secret_access_key="test", region_name="us-east-1")
    bucket = "small-" + uuid.uuid4().hex[:12]
    s3.create_bucket(Bucket=bucket)
    settings = ClientSettings(bucket=bucket, endpoint_url=moto_server.endpoint, path_style=True,
                              static_keys=StaticKeys("test", "test"), retries=2, request_timeout=60)
    staging = tmp_path / "staging"
    async with open_client(settings) as client:
        config = Config(defaults=Defaults(uid=1000, gid=1000), staging_dir=str(staging),
                        multipart_size=5 * 1024 * 1024, stat_ttl=0)
        yield Filesystem(client, config), s3, bucket, staging


@pytest.fixture
def hops(monkeypatch):
    """Names of the functions run in disk threads."""
    calls: list[str] = []
    real = diskio.run

    async def counting(fn, *args):
        calls.append(getattr(fn, "__name__", repr(fn)))
        return await real(fn, *args)
    monkeypatch.setattr(diskio, "run", counting)
    return calls


def _records(staging) -> list[str]:
    return [name for name in os.listdir(staging) if name.endswith(".json")]


async def test_create_write_close_of_a_small_file_costs_three_disk_hops(core, hops):
    fs, s3, bucket, staging = core
    for i in range(3):
        body = os.urandom(4096)
        hops.clear()
        handle, node = await fs.create(ROOT_INODE, f"f{i}", 0o100644, os.O_WRONLY, 1000, 1000)
        await fs.write(handle.fh, 0, body)
        await fs.flush(handle.fh)
        await fs.release(handle.fh)
        await trio.sleep(0.3)               # the journal's writer tasks have done their work
        assert s3.get_object(Bucket=bucket, Key=f"f{i}")["Body"].read() == body
        # the record before create answers, the staging write before write answers, and one
        # call that removes the record and empties the file; no read-back, no second removal
        assert len(hops) <= 3, hops
        assert _records(staging) == []


async def test_small_file_bytes_are_exact_through_holes_overwrites_and_truncation(core, hops):
    fs, s3, bucket, staging = core
    rng = random.Random(5)
    handle, node = await fs.create(ROOT_INODE, "odd", 0o100644, os.O_RDWR, 1000, 1000)
    expected = bytearray()

    async def write(offset: int, data: bytes) -> None:
        await fs.write(handle.fh, offset, data)
        if len(expected) < offset:
            expected.extend(bytes(offset - len(expected)))
        expected[offset:offset + len(data)] = data

    await write(0, rng.randbytes(1000))
    await write(5000, rng.randbytes(300))                  # a hole of zeros
    await write(500, rng.randbytes(700))                   # an overwrite across the end of the first
    assert await fs.read(handle.fh, 0, 10_000) == bytes(expected)
    await fs.setattr(node.ino, size=2000)                  # shorter
    del expected[2000:]
    await fs.setattr(node.ino, size=3000)                  # longer again: zeros
    expected.extend(bytes(1000))
    assert await fs.read(handle.fh, 100, 2900) == bytes(expected[100:3000])
    await fs.flush(handle.fh)
    assert s3.get_object(Bucket=bucket, Key="odd")["Body"].read() == bytes(expected)
    # the staging file holds the same bytes (what a crash before close would recover)
    assert os.pread(node.staging.fd, 10_000, 0) == bytes(expected)

    # grown past the mirror's limit: the staging file alone, still exact
    big = rng.randbytes(writeback.MIRROR_MAX)
    await write(len(expected) - 10, big)
    assert node.staging._mirror is None
    assert await fs.read(handle.fh, 0, len(expected)) == bytes(expected)
    await fs.flush(handle.fh)
    await fs.release(handle.fh)
    assert s3.get_object(Bucket=bucket, Key="odd")["Body"].read() == bytes(expected)


async def test_a_truncated_existing_file_is_small_again(core):
    fs, s3, bucket, staging = core
    s3.put_object(Bucket=bucket, Key="old", Body=b"o" * 300_000)
    node = await fs.lookup(ROOT_INODE, "old")
    handle = await fs.open(node.ino, os.O_WRONLY | os.O_TRUNC)
    await fs.write(handle.fh, 0, b"new content")
    assert node.staging._mirror == bytearray(b"new content")
    await fs.flush(handle.fh)
    await fs.release(handle.fh)
    assert s3.get_object(Bucket=bucket, Key="old")["Body"].read() == b"new content"
