"""Versions, not hopes: conditional commits and pinned staging fetches.

What a user can rely on, asserted here against real stores:
  * a file changed in S3 by another client while this mount had unsaved
    changes to it is never overwritten and never mixed with it: close()
    gets EIO, S3 keeps the other client's version byte for byte, the local
    data is kept in lost+found with a record naming the version that won,
    and the mount log says so in one ERROR line;
  * two mounts creating the same new name: the second close() fails, the
    first one's data stays;
  * crash recovery follows the same rules when the object changes while the
    next mount is recovering it;
  * the mount finds out whether the store enforces conditional writes with a
    probe key of its own that is gone afterwards, and `s3pyfs status` says it.

What the stores here enforce (checked by hand with boto3, see the report):
SeaweedFS 4.x enforces If-Match and If-None-Match on PutObject and on
CompleteMultipartUpload (412; If-Match on an absent key: 412).  moto 5.2
enforces both on PutObject (If-Match on an absent key: 404 NoSuchKey) and
If-None-Match on CompleteMultipartUpload, but ignores If-Match there, so the
version check by HEAD before a commit is tested on moto.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import urllib.parse
from pathlib import Path

import fault_proxy
import pytest
import support
from fault_proxy import FaultProxy

from s3pyfs.credentials import StaticKeys
from s3pyfs.errors import Conflict
from s3pyfs.journal import Journal
from s3pyfs.s3client import ClientSettings, open_client
from s3pyfs.writeback import Staging

MiB = 1024 * 1024


def payload(size: int, seed: int) -> bytes:
    block = hashlib.sha256(str(seed).encode()).digest() * 32       # 1 KiB, differs per seed
    return (block * (size // len(block) + 1))[:size]


def etag_of(response) -> str:
    return response["ETag"].strip('"')


def stored(s3, bucket: str, key: str) -> bytes:
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()


def kept(stage: Path) -> list[tuple[dict, bytes, Path]]:
    """(record, data, directory) of everything in lost+found under `stage`."""
    found = []
    for record in sorted(stage.rglob("lost+found/*/record.json")):
        found.append((json.loads(record.read_text()), (record.parent / "data").read_bytes(), record.parent))
    return found


def error_lines(m) -> list[str]:
    return [line for line in m.log_text().splitlines() if " ERROR " in line]


# ------------------------------------------------------------------ S3 client and Staging, no FUSE

@pytest.fixture
def moto_bucket(moto_server):
    moto_server.reset()
    client = moto_server.client()
    client.create_bucket(Bucket="cond")
    return client


def moto_settings(moto_server) -> ClientSettings:
    return ClientSettings(bucket="cond", endpoint_url=moto_server.endpoint, path_style=True,
                          static_keys=StaticKeys(moto_server.access_key, moto_server.secret_key),
                          retries=2, request_timeout=30)


@pytest.mark.trio
async def test_conditional_put_refuses_another_version_and_names_it(moto_server, moto_bucket):
    s3 = moto_bucket
    base = etag_of(s3.put_object(Bucket="cond", Key="k", Body=b"base"))
    async with open_client(moto_settings(moto_server)) as client:
        new = await client.put("k", b"mine", {}, if_match=base)            # still the base: written
        assert stored(s3, "cond", "k") == b"mine"
        theirs = etag_of(s3.put_object(Bucket="cond", Key="k", Body=b"theirs"))
        with pytest.raises(Conflict) as failure:
            await client.put("k", b"late", {}, if_match=new)
        assert failure.value.current_etag == theirs and theirs in str(failure.value)
        with pytest.raises(Conflict) as failure:
            await client.put("k", b"new here", {}, if_none_match=True)
        assert failure.value.current_etag == theirs
        s3.delete_object(Bucket="cond", Key="k")
        with pytest.raises(Conflict, match="deleted"):
            await client.put("k", b"late", {}, if_match=theirs)        # moto: 404 NoSuchKey
        assert await client.head("k") is None
        await client.put("k", b"first", {}, if_none_match=True)
    assert stored(s3, "cond", "k") == b"first"


@pytest.mark.trio
async def test_probe_on_moto_finds_complete_not_enforced_and_checks_by_head(moto_server, moto_bucket):
    s3 = moto_bucket
    async with open_client(moto_settings(moto_server)) as client:
        assert await client.probe_conditional_writes("some/prefix/") is False
        assert client.enforced == {"put": True, "complete": False}
        assert s3.list_objects_v2(Bucket="cond").get("KeyCount") == 0          # the probe key is gone
        assert not s3.list_multipart_uploads(Bucket="cond").get("Uploads")
        # moto ignores If-Match on CompleteMultipartUpload: the HEAD before the commit catches it
        base = etag_of(s3.put_object(Bucket="cond", Key="big", Body=b"base"))
        theirs = etag_of(s3.put_object(Bucket="cond", Key="big", Body=b"theirs"))
        upload_id = await client.create_multipart("big", {})
        part = await client.upload_part("big", upload_id, 1, b"mine")
        with pytest.raises(Conflict) as failure:
            await client.complete_multipart("big", upload_id, [part], if_match=base)
        assert failure.value.current_etag == theirs
        await client.abort_multipart("big", upload_id)
    assert stored(s3, "cond", "big") == b"theirs"


@pytest.mark.trio
async def test_staging_commits_conditionally_until_every_byte_is_local(moto_server, moto_bucket, tmp_path):
    s3 = moto_bucket
    original = payload(3 * MiB, 1)
    base = etag_of(s3.put_object(Bucket="cond", Key="f", Body=original))
    journal = Journal(str(tmp_path / "j"), lock=False)
    async with open_client(moto_settings(moto_server)) as client:
        async def fetch(start, end, etag=None):
            return await client.get_range("f", start, end, etag=etag)

        # a partial write: the rest comes from the base, pinned; the commit is If-Match base
        staging = Staging(journal.new_record(), len(original), len(original), base, base_key="f")
        await staging.write(0, b"12345", fetch)
        assert staging.condition("f") == {"if_match": base}
        theirs = etag_of(s3.put_object(Bucket="cond", Key="f", Body=b"theirs"))
        with pytest.raises(Conflict):                  # block 1 and 2 are of another version now
            await staging.upload(client, "f", {}, fetch, 8 * MiB, 2)
        assert stored(s3, "cond", "f") == b"theirs"
        assert staging.dirty

        # every byte written here: last writer wins, as on NFS
        whole = Staging(journal.new_record(), 6, 6, theirs, base_key="f")
        await whole.write(0, b"abc", fetch)
        assert whole.condition("f") == {"if_match": theirs}
        await whole.write(3, b"def", fetch)
        assert whole.condition("f") == {}
        s3.put_object(Bucket="cond", Key="f", Body=b"someone else")
        etag = await whole.upload(client, "f", {}, fetch, 8 * MiB, 2)
        assert stored(s3, "cond", "f") == b"abcdef"
        # after the upload the new version is the base again
        await whole.write(0, b"X", fetch)
        assert whole.condition("f") == {"if_match": etag}

        # truncated to 0 (O_TRUNC): independent of the base; a new name: If-None-Match
        cut = Staging(journal.new_record(), 6, 6, etag, base_key="f")
        await cut.truncate(0, fetch)
        assert cut.condition("f") == {}
        new = Staging(journal.new_record(), 0, 0, None, base_key="n", absent=True)
        await new.write(0, b"n", fetch)
        assert new.condition("n") == {"if_none_match": True}
        assert new.condition("renamed") == {}          # a rename target is replaced, as rename(2) does


class AnswerLosingProxy(FaultProxy):
    """"reset_response" here also resets answers without a body (PUT, Complete's small XML
    alike): the server did the work, the client never hears of it."""

    def _answer(self, down, up, fault, head, headers, body):
        if fault is not None and fault.kind == "reset_response":
            self._done(fault)
            fault_proxy._reset(down.sock)
            return None
        return super()._answer(down, up, fault, head, headers, body)


@pytest.fixture
def losing_proxy(seaweed):
    target = urllib.parse.urlsplit(seaweed.endpoint)
    p = AnswerLosingProxy(target.hostname, target.port)
    p.forward()
    yield p
    p.close()


@pytest.mark.trio
async def test_a_commit_whose_answer_was_lost_is_not_a_conflict_with_itself(seaweed, s3, bucket, losing_proxy):
    """The first try lands but its answer is cut: the retry's failed condition finds this
    very content in S3, which is success, not a conflict."""
    fault_proxy = losing_proxy
    settings = ClientSettings(bucket=bucket, endpoint_url=fault_proxy.url, path_style=True,
                              static_keys=StaticKeys(seaweed.access_key, seaweed.secret_key),
                              retries=3, connect_timeout=1, read_timeout=5, request_timeout=30)
    small, large = payload(1000, 7), payload(6 * MiB, 8)
    base = etag_of(s3.put_object(Bucket=bucket, Key="old", Body=b"base"))
    async with open_client(settings) as client:
        client.enforced = {"put": True, "complete": True}
        cut = fault_proxy.add("reset_response", method="PUT", times=2)
        await client.put("new", small, {}, if_none_match=True)
        await client.put("old", large, {}, if_match=base)
        assert cut.hits == 2
        upload_id = await client.create_multipart("multi", {})
        parts = [await client.upload_part("multi", upload_id, 1, large),
                 await client.upload_part("multi", upload_id, 2, small)]
        cut = fault_proxy.add("reset_response", method="POST", query="uploadId", times=1)
        await client.complete_multipart("multi", upload_id, parts, if_none_match=True)
        assert cut.hits == 1
    assert stored(s3, bucket, "new") == small and stored(s3, bucket, "old") == large
    assert stored(s3, bucket, "multi") == large + small


# ------------------------------------------------------------------ through a FUSE mount (SeaweedFS)

def test_partial_write_then_remote_replace_close_fails_and_keeps_both(s3, bucket, mount, tmp_path):
    """Row 2: pwrite 5 bytes at 0 of an 8 MiB object, another client replaces it, close()."""
    stage = tmp_path / "stage"
    stage.mkdir()
    original = payload(8 * MiB, 1)
    s3.put_object(Bucket=bucket, Key="big.bin", Body=original)
    m = mount(bucket, f"tmpdir={stage}")
    fd = os.open(m.path / "big.bin", os.O_WRONLY)
    try:
        os.pwrite(fd, b"PATCH", 0)
        other = payload(8 * MiB, 2)
        theirs = etag_of(s3.put_object(Bucket=bucket, Key="big.bin", Body=other))
    finally:
        with pytest.raises(OSError) as failure:
            os.close(fd)
    assert failure.value.errno == errno.EIO
    assert stored(s3, bucket, "big.bin") == other                  # exactly the other client's version
    [(record, data, where)] = kept(stage)
    assert record["key"] == "big.bin" and record["current_etag"] == theirs
    assert data[:5] == b"PATCH" and data[5:MiB] == original[5:MiB]   # the local change, on its own base
    errors = error_lines(m)
    assert len(errors) == 1 and "big.bin" in errors[0] and str(where) in errors[0], errors
    # the name shows S3's version again
    assert hashlib.sha256((m.path / "big.bin").read_bytes()).digest() == hashlib.sha256(other).digest()


def test_small_file_changed_remotely_is_not_overwritten(s3, bucket, mount, tmp_path):
    """The conditional PUT itself (every byte already local): If-Match on the fast PUT path."""
    stage = tmp_path / "stage"
    stage.mkdir()
    s3.put_object(Bucket=bucket, Key="notes.txt", Body=b"line one\nline two\n")
    m = mount(bucket, f"tmpdir={stage}")
    fd = os.open(m.path / "notes.txt", os.O_RDWR | os.O_APPEND)
    try:
        os.write(fd, b"line three\n")
        theirs = etag_of(s3.put_object(Bucket=bucket, Key="notes.txt", Body=b"their rewrite\n"))
        with pytest.raises(OSError) as failure:
            os.fsync(fd)
        assert failure.value.errno == errno.EIO
    finally:
        os.close(fd)
    assert stored(s3, bucket, "notes.txt") == b"their rewrite\n"
    [(record, data, _)] = kept(stage)
    assert record["current_etag"] == theirs and data == b"line one\nline two\nline three\n"
    assert len(error_lines(m)) == 1


def test_multipart_commit_is_conditional_and_aborted_on_conflict(s3, bucket, mount, tmp_path):
    stage = tmp_path / "stage"
    stage.mkdir()
    original = payload(12 * MiB, 3)
    s3.put_object(Bucket=bucket, Key="video.bin", Body=original)
    m = mount(bucket, f"tmpdir={stage}", "multipart_size=5")
    fd = os.open(m.path / "video.bin", os.O_RDWR)
    try:
        os.pwrite(fd, b"HEADER", 0)
        assert os.pread(fd, 12 * MiB, 0)[6:] == original[6:]      # every block fetched now
        other = payload(7 * MiB, 4)
        theirs = etag_of(s3.put_object(Bucket=bucket, Key="video.bin", Body=other))
    finally:
        with pytest.raises(OSError) as failure:
            os.close(fd)
    assert failure.value.errno == errno.EIO
    assert stored(s3, bucket, "video.bin") == other
    assert not s3.list_multipart_uploads(Bucket=bucket).get("Uploads")
    [(record, data, _)] = kept(stage)
    assert record["current_etag"] == theirs and data[:6] == b"HEADER" and data[6:] == original[6:]


def test_two_mounts_creating_the_same_name_second_close_fails(s3, bucket, mount, tmp_path):
    m1 = mount(bucket, f"tmpdir={tmp_path}")
    m2 = mount(bucket, f"tmpdir={tmp_path}")
    fd1 = os.open(m1.path / "report.txt", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    fd2 = os.open(m2.path / "report.txt", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.write(fd1, b"from the first mount")
    os.write(fd2, b"from the second mount")
    os.close(fd1)
    with pytest.raises(OSError) as failure:
        os.close(fd2)
    assert failure.value.errno == errno.EIO
    assert stored(s3, bucket, "report.txt") == b"from the first mount"
    [(record, data, _)] = kept(tmp_path)
    assert data == b"from the second mount" and record["key"] == "report.txt"
    assert record["current_etag"] == etag_of(s3.head_object(Bucket=bucket, Key="report.txt"))
    assert len(error_lines(m2)) == 1 and not error_lines(m1)
    assert (m2.path / "report.txt").read_bytes() == b"from the first mount"


def status(path, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "s3pyfs", "status", str(path), *args],
                          capture_output=True, text=True, timeout=30)


def test_probe_at_mount_shows_in_status_and_leaves_no_key(s3, bucket, mount):
    s3.put_object(Bucket=bucket, Key="data/keep.txt", Body=b"user data")
    m = mount(bucket, "dbglevel=info", prefix="data")
    doc = json.loads(status(m.path, "--json").stdout)
    assert doc["conditional_writes"] is True and doc["conflicts"] == 0
    assert doc["s3"]["requests"]["PUT"]["PreconditionFailed"] >= 2         # the probe's refused PUTs ...
    assert doc["health"]["status"] == "healthy"                             # ... are no endpoint failure
    human = status(m.path).stdout
    assert "writes      conditional (the store enforces" in human
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert keys == ["data/keep.txt"]
    assert not s3.list_multipart_uploads(Bucket=bucket).get("Uploads")
    assert "INFO s3pyfs: conditional writes: enforced" in m.log_text()


# ------------------------------------------------------------------ crash recovery (row 11)

class HoldingProxy(FaultProxy):
    """A "delay" fault here holds the response until the test calls `release`."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.held = threading.Event()
        self.released = threading.Event()

    def _answer(self, down, up, fault, head, headers, body):
        if fault is not None and fault.kind == "delay":
            self._done(fault)
            self.held.set()
            self.released.wait(120)
            fault = None
        return super()._answer(down, up, fault, head, headers, body)


@pytest.fixture
def holding_proxy(seaweed):
    target = urllib.parse.urlsplit(seaweed.endpoint)
    p = HoldingProxy(target.hostname, target.port)
    p.forward()
    yield p
    p.released.set()
    p.close()


def test_recovery_never_overwrites_a_version_written_while_it_runs(s3, bucket, mount, holding_proxy, tmp_path):
    stage = tmp_path / "stage"
    stage.mkdir()
    original = payload(8 * MiB, 5)
    s3.put_object(Bucket=bucket, Key="db.bin", Body=original)
    m = mount(bucket, f"url={holding_proxy.url}", f"tmpdir={stage}")
    fd = os.open(m.path / "db.bin", os.O_WRONLY)
    os.pwrite(fd, b"PATCH", 0)
    m.expect_clean_exit = False                        # a crash with dirty data
    m.proc.send_signal(signal.SIGKILL)
    m.proc.wait(10)
    support.force_unmount(m.path)
    try:
        os.close(fd)
    except OSError:
        pass

    # the next mount recovers db.bin: its GET of the unwritten blocks is held until the
    # object has been replaced by another client (after recovery's HEAD saw the base)
    holding_proxy.add("delay", method="GET", header="Range", path="db.bin", times=1)
    m2 = mount(bucket, f"url={holding_proxy.url}", f"tmpdir={stage}", wait=False)
    assert holding_proxy.held.wait(60), "recovery sent no ranged GET"
    other = payload(8 * MiB, 6)
    theirs = etag_of(s3.put_object(Bucket=bucket, Key="db.bin", Body=other))
    holding_proxy.released.set()
    m2.wait_mounted(60)
    assert stored(s3, bucket, "db.bin") == other
    [(record, data, where)] = kept(stage)
    assert record["key"] == "db.bin" and record["current_etag"] == theirs
    assert data[:5] == b"PATCH"
    errors = error_lines(m2)
    assert len(errors) == 1 and str(where) in errors[0], errors
