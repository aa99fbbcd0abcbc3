"""Staging and journal I/O in disk threads: ordering, acknowledgement, record format.

Driven through the core (no FUSE) against moto's S3 server, like test_core.py:
what is checked is what a user sees (file contents, objects in S3) and what a
crash would leave behind (the journal record on disk when a write is answered).
"""

from __future__ import annotations

import json
import os
import uuid

import boto3
import pytest
import trio

from s3pyfs import recovery, statedir
from s3pyfs.core import Config
from s3pyfs.filesystem import Filesystem
from s3pyfs.inodes import ROOT_INODE
from s3pyfs.metadata import Defaults
from s3pyfs.s3client import ClientSettings, open_client
from s3pyfs.statedir import Dir

pytestmark = pytest.mark.trio

MiB = 1024 * 1024


def _keys():
    from s3pyfs.credentials import StaticKeys
    return StaticKeys("test", "test")


@pytest.fixture
def moto_bucket(moto_server):
    client = boto3.client("s3", endpoint_url=moto_server.endpoint, aws_access_key_id="test",
                          aws_secret_access_key="test", region_name="us-east-1")
    name = "stio-" + uuid.uuid4().hex[:12]
    client.create_bucket(Bucket=name)
    return client, name


def _settings(moto_server, bucket):
    return ClientSettings(bucket=bucket, endpoint_url=moto_server.endpoint, path_style=True,
                          static_keys=_keys(), retries=2, connect_timeout=2, read_timeout=10, request_timeout=30)


@pytest.fixture
async def core(moto_server, moto_bucket, tmp_path):
    s3, bucket = moto_bucket
    staging = tmp_path / "staging"
    async with open_client(_settings(moto_server, bucket)) as client:
        config = Config(defaults=Defaults(uid=1000, gid=1000), staging_dir=str(staging),
                        multipart_size=5 * MiB, stat_ttl=0)
        yield Filesystem(client, config), s3, bucket, staging


def _records(directory) -> list[dict]:
    return [json.loads((directory / name).read_text()) for name in sorted(os.listdir(directory))
            if name.endswith(".json")]


def _written(record: dict) -> set[int]:
    """Written blocks of a record, either format (version 2 ranges, version 1 list)."""
    blocks = set(record.get("written") or [])
    for first, end in record.get("written_ranges") or []:
        blocks.update(range(first, end))
    return blocks


async def _open_rw(fs, name):
    node = await fs.lookup(ROOT_INODE, name)
    return await fs.open(node.ino, os.O_RDWR), node


async def test_a_write_is_answered_only_once_its_record_is_on_disk(core):
    fs, s3, bucket, staging = core
    s3.put_object(Bucket=bucket, Key="base", Body=b"b" * (3 * MiB))
    handle, node = await _open_rw(fs, "base")
    assert _records(staging) == []
    await fs.write(handle.fh, MiB, b"w" * MiB)           # makes the file dirty, block 1 written
    [record] = _records(staging)
    assert record["key"] == "base" and record["source_limit"] == 3 * MiB
    assert _written(record) == {1}
    await fs.write(handle.fh, 2 * MiB, b"v" * MiB)       # a new block: the record names it at once
    [record] = _records(staging)
    assert _written(record) == {1, 2}
    await fs.flush(handle.fh)
    await fs.release(handle.fh)
    await fs.journal.settle()
    assert _records(staging) == []                       # uploaded: nothing left to recover
    assert s3.get_object(Bucket=bucket, Key="base")["Body"].read() == b"b" * MiB + b"w" * MiB + b"v" * MiB


async def test_the_record_of_a_sequential_rewrite_does_not_grow_with_its_blocks(core):
    """The record lists written blocks as ranges: rewriting a large file block by block
    rewrites a record of constant size, not one that grows with every block (which made
    the journal quadratic: 10,000 blocks cost ~40 s of CPU and 0.3 GiB of JSON)."""
    fs, s3, bucket, staging = core
    blocks = 48
    s3.put_object(Bucket=bucket, Key="big", Body=b"\0" * (blocks * MiB))
    handle, node = await _open_rw(fs, "big")
    sizes = []
    for b in range(blocks):
        await fs.write(handle.fh, b * MiB, bytes([b % 251]) * MiB)
        [name] = [n for n in os.listdir(staging) if n.endswith(".json")]
        sizes.append((staging / name).stat().st_size)
    assert max(sizes) - sizes[3] <= 4, f"record grew from {sizes[3]} to {max(sizes)} bytes"
    [record] = _records(staging)
    assert _written(record) == set(range(blocks))
    await fs.release(handle.fh)
    data = s3.get_object(Bucket=bucket, Key="big", Range=f"bytes={40 * MiB}-{40 * MiB + 1}")["Body"].read()
    assert data == bytes([40, 40])


async def test_overlapping_concurrent_writes_end_with_the_one_answered_last(core):
    fs, s3, bucket, staging = core
    s3.put_object(Bucket=bucket, Key="f", Body=b"." * (2 * MiB))
    handle, node = await _open_rw(fs, "f")
    answered: list[bytes] = []

    async def write(fill: bytes, offset: int, length: int) -> None:
        await fs.write(handle.fh, offset, fill * length)
        answered.append(fill)

    for _ in range(5):
        answered.clear()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(write, b"A", 0, 2 * MiB)           # whole file
            nursery.start_soon(write, b"B", MiB // 2, MiB)        # overlaps both blocks
            nursery.start_soon(write, b"C", MiB, 4096)            # inside B's range
        data = await fs.read(handle.fh, 0, 2 * MiB)
        # every byte comes from the last answered write that covered it
        expected = bytearray(b"." * (2 * MiB))
        ranges = {b"A": (0, 2 * MiB), b"B": (MiB // 2, MiB // 2 + MiB), b"C": (MiB, MiB + 4096)}
        for fill in answered:
            lo, hi = ranges[fill]
            expected[lo:hi] = fill * (hi - lo)
        assert data == bytes(expected)
    await fs.release(handle.fh)


async def test_a_fetch_never_overwrites_a_write_that_raced_it(core):
    """A read fetches blocks from S3 while a write replaces one of them: the fetched
    bytes go only where nothing was written meanwhile."""
    fs, s3, bucket, staging = core
    s3.put_object(Bucket=bucket, Key="g", Body=b"s" * (4 * MiB))
    for _ in range(3):
        handle, node = await _open_rw(fs, "g")
        await fs.write(handle.fh, 0, b"x")                   # local staging, blocks 1-3 not fetched
        got: list[bytes] = []

        async def read() -> None:
            got.append(await fs.read(handle.fh, MiB, 3 * MiB))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            nursery.start_soon(fs.write, handle.fh, 2 * MiB, b"w" * MiB)
        data = await fs.read(handle.fh, 0, 4 * MiB)
        assert data == b"x" + b"s" * (2 * MiB - 1) + b"w" * MiB + b"s" * MiB
        assert got[0][:MiB] == b"s" * MiB and got[0][2 * MiB:] == b"s" * MiB
        await fs.release(handle.fh)
        s3.put_object(Bucket=bucket, Key="g", Body=b"s" * (4 * MiB))


@pytest.mark.parametrize("version", [1, 2])
async def test_recovery_reads_written_blocks_of_version_1_and_2_records(moto_server, moto_bucket, tmp_path, version):
    s3, bucket = moto_bucket
    etag = s3.put_object(Bucket=bucket, Key="k", Body=b"a" * (3 * MiB))["ETag"].strip('"')
    store_path = tmp_path / "store"
    instance = store_path / "20250101T000000-1-abcdef"
    instance.mkdir(parents=True, mode=0o700)
    os.chmod(store_path, 0o700)
    with open(instance / "1.data", "wb") as f:
        f.truncate(3 * MiB)
        f.seek(MiB)
        f.write(b"L" * MiB)                              # the only locally written block
    record = {"version": version, "key": "k", "base_etag": etag, "source_limit": 3 * MiB, "metadata": {},
              "uploads": []}
    if version == 1:
        record["written"] = [1]
    else:
        record["written_ranges"] = [[1, 2]]
    (instance / "1.json").write_text(json.dumps(record))
    store = Dir(os.open(store_path, statedir.DIR_FLAGS), str(store_path))
    try:
        async with open_client(_settings(moto_server, bucket)) as client:
            outcomes = await recovery.recover(store, client, 5 * MiB, 4, 30)
    finally:
        store.close()
    assert [(o.key, o.result) for o in outcomes] == [("k", "uploaded")]
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"a" * MiB + b"L" * MiB + b"a" * MiB
    assert not instance.exists() or not any(n.endswith(".json") for n in os.listdir(instance))
