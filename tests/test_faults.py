"""Never lose data: real faults between s3pyfs and SeaweedFS, data checked byte for byte.

Every fault goes through `fault_proxy.FaultProxy` (or is a real stop of the
S3 server) and every test asserts from the proxy's counters that the fault
really happened, so none can pass vacuously.  Written data is compared by
SHA-256 with what boto3 reads straight from SeaweedFS (not through the
proxy); read data with what boto3 wrote there.

Outcomes a user can rely on, asserted here:
  * transient faults (503 SlowDown, 500, resets, short bodies) are retried
    and the data is intact;
  * a damaged body is never handed over: it is retried into the right bytes
    or the call fails (EIO); a damaged upload is refused by the server
    (Content-MD5) and sent again;
  * a fault that lasts fails the call with EIO within a bound, and the same
    mount works once the fault is gone; data written meanwhile is kept.
"""

from __future__ import annotations

import errno
import hashlib
import os
import time

import pytest
import support
import trio
from support import timed

from s3pyfs.credentials import StaticKeys
from s3pyfs.errors import RemoteIOError
from s3pyfs.reader import ObjectReader
from s3pyfs.s3client import ClientSettings, open_client

MiB = 1024 * 1024
FAST = "retries=3,connect_timeout=1,readwrite_timeout=2,request_timeout=6"
BOUND = 25        # seconds for one failing file operation: a few S3 calls of request_timeout=6 each


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def stored(s3, bucket: str, key: str) -> bytes:
    """The object as SeaweedFS has it, read without the proxy."""
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()


def settings(seaweed, proxy, bucket: str, **overrides) -> ClientSettings:
    values = dict(bucket=bucket, endpoint_url=proxy.url, path_style=True,
                  static_keys=StaticKeys(seaweed.access_key, seaweed.secret_key),
                  retries=3, connect_timeout=1, read_timeout=2, request_timeout=6)
    values.update(overrides)
    return ClientSettings(**values)


# ------------------------------------------------------------------ S3 client, no FUSE

@pytest.mark.trio
@pytest.mark.parametrize("kind", ["short_body", "reset_response", "corrupt"])
async def test_damaged_download_is_retried_into_the_right_bytes(seaweed, s3, bucket, fault_proxy, kind):
    data = os.urandom(300 * 1024)
    s3.put_object(Bucket=bucket, Key="small", Body=data)
    fault_proxy.add(kind, method="GET", times=2)
    async with open_client(settings(seaweed, fault_proxy, bucket)) as client:
        assert sha(await client.get_all("small")) == sha(data)
        fault_proxy.add(kind, method="GET", header="Range", times=2)
        assert sha(await client.get_range("small", 0, len(data))) == sha(data)
    assert fault_proxy.injected[kind] == 4
    assert fault_proxy.count("GET") == 6


@pytest.mark.trio
async def test_short_ranged_body_of_a_large_object_is_retried(seaweed, s3, bucket, fault_proxy):
    data = os.urandom(12 * MiB)
    s3.put_object(Bucket=bucket, Key="large", Body=data)
    fault_proxy.add("short_body", method="GET", header="Range", times=2)
    async with open_client(settings(seaweed, fault_proxy, bucket)) as client:
        got = await client.get_range("large", 3 * MiB, 11 * MiB)
    assert sha(got) == sha(data[3 * MiB:11 * MiB])
    assert fault_proxy.injected["short_body"] == 2


@pytest.mark.trio
async def test_lasting_corruption_is_an_error_in_bounded_time_never_bytes(seaweed, s3, bucket, fault_proxy):
    s3.put_object(Bucket=bucket, Key="small", Body=os.urandom(100 * 1024))
    fault_proxy.add("corrupt", method="GET")
    async with open_client(settings(seaweed, fault_proxy, bucket)) as client:
        started = trio.current_time()
        with pytest.raises(RemoteIOError, match="does not match its ETag"):
            await client.get_all("small")
        assert trio.current_time() - started < 6
    assert fault_proxy.injected["corrupt"] == 3          # retries=3 tries, each damaged


@pytest.mark.trio
async def test_damaged_upload_is_refused_by_content_md5_and_sent_again(seaweed, s3, bucket, fault_proxy):
    data = os.urandom(6 * MiB)
    fault_proxy.add("corrupt_request", method="PUT", times=1)
    async with open_client(settings(seaweed, fault_proxy, bucket)) as client:
        etag = await client.put("file", data, {})
        upload_id = await client.create_multipart("multi", {})
        fault_proxy.add("corrupt_request", method="PUT", query="uploadId", times=1)
        part_etags = [await client.upload_part("multi", upload_id, 1, data[:5 * MiB]),
                      await client.upload_part("multi", upload_id, 2, data[5 * MiB:])]
        await client.complete_multipart("multi", upload_id, part_etags)
    assert etag == hashlib.md5(data).hexdigest()
    assert sha(stored(s3, bucket, "file")) == sha(data)
    assert sha(stored(s3, bucket, "multi")) == sha(data)
    assert fault_proxy.injected["corrupt_request"] == 2
    assert fault_proxy.count("PUT") == 5                   # 1 + 1 again, 2 parts + 1 again


@pytest.mark.trio
async def test_reader_pinned_to_an_etag_refuses_a_replaced_object(seaweed, s3, bucket, fault_proxy):
    first = os.urandom(3 * MiB)
    etag = s3.put_object(Bucket=bucket, Key="obj", Body=first)["ETag"].strip('"')
    async with open_client(settings(seaweed, fault_proxy, bucket)) as client:
        async def fetch(start, end, pinned):
            return await client.get_range("obj", start, end, etag=pinned)
        reader = ObjectReader(fetch, len(first), etag=etag)
        assert await reader.read(0, 4096) == first[:4096]
        s3.put_object(Bucket=bucket, Key="obj", Body=os.urandom(3 * MiB))    # replaced elsewhere
        with pytest.raises(RemoteIOError, match="changed while it was being read"):
            await reader.read(2 * MiB, 4096)
    assert fault_proxy.count("GET") == 2


# ------------------------------------------------------------------ through a FUSE mount

def test_multipart_write_survives_slowdown_and_resets(s3, bucket, mount, fault_proxy):
    m = mount(bucket, f"url={fault_proxy.url}", FAST, "multipart_size=5")
    small, large = os.urandom(200 * 1024), os.urandom(40 * MiB)
    fault_proxy.add("slowdown", method="PUT", times=2)
    (m.path / "small").write_bytes(small)
    assert fault_proxy.injected["slowdown"] == 2
    fault_proxy.add("slowdown", method="PUT", query="uploadId", times=3)
    fault_proxy.add("reset_request", method="PUT", query="uploadId", times=2)
    (m.path / "large").write_bytes(large)
    assert fault_proxy.injected["slowdown"] == 5 and fault_proxy.injected["reset_request"] == 2
    assert fault_proxy.count("PUT", query="uploadId") >= 8 + 3 + 2       # 8 parts, 5 sent again
    assert sha(stored(s3, bucket, "small")) == sha(small)
    assert sha(stored(s3, bucket, "large")) == sha(large)
    assert sha((m.path / "large").read_bytes()) == sha(large)


def test_reads_never_return_short_or_corrupt_bytes(s3, bucket, mount, fault_proxy):
    small, large = os.urandom(700 * 1024), os.urandom(20 * MiB)
    s3.put_object(Bucket=bucket, Key="small", Body=small)
    s3.put_object(Bucket=bucket, Key="large", Body=large)
    m = mount(bucket, f"url={fault_proxy.url}", FAST)
    fault_proxy.add("corrupt", method="GET", times=2)
    assert sha((m.path / "small").read_bytes()) == sha(small)
    fault_proxy.add("short_body", method="GET", header="Range", times=2)
    fault_proxy.add("reset_response", method="GET", header="Range", times=2)
    assert sha((m.path / "large").read_bytes()) == sha(large)
    assert fault_proxy.injected["corrupt"] == 2
    assert fault_proxy.injected["short_body"] == 2 and fault_proxy.injected["reset_response"] == 2


def test_server_errors_on_head_and_list_are_retried(s3, bucket, mount, fault_proxy):
    s3.put_object(Bucket=bucket, Key="dir/a", Body=b"alpha")
    s3.put_object(Bucket=bucket, Key="dir/b", Body=b"beta")
    m = mount(bucket, f"url={fault_proxy.url}", FAST, "stat_cache_expire=0.1")
    fault_proxy.add("error500", method="HEAD", times=2)
    fault_proxy.add("error500", method="GET", query="list-type", times=2)
    assert sorted(os.listdir(m.path / "dir")) == ["a", "b"]
    assert (m.path / "dir" / "b").stat().st_size == 4
    assert fault_proxy.injected["error500"] == 4
    fault_proxy.add("slowdown", method="GET", query="list-type")       # lasting: EIO, bounded
    time.sleep(0.3)
    code, took = timed(lambda: os.listdir(m.path / "dir"))
    assert code == errno.EIO and took < BOUND, (code, took)
    fault_proxy.clear()
    assert sorted(os.listdir(m.path / "dir")) == ["a", "b"]


def test_delays_below_the_timeout_succeed_and_above_give_eio_in_bounded_time(s3, bucket, mount, fault_proxy):
    data = os.urandom(64 * 1024)
    s3.put_object(Bucket=bucket, Key="slow", Body=data)
    m = mount(bucket, f"url={fault_proxy.url}", FAST, "stat_cache_expire=0.1")
    fault_proxy.add("delay", delay=1.0, times=3)
    assert (m.path / "slow").read_bytes() == data
    assert fault_proxy.injected["delay"] >= 1
    fault_proxy.clear()
    fault_proxy.add("delay", delay=30.0)
    time.sleep(0.3)
    code, took = timed(lambda: (m.path / "slow").read_bytes())
    assert code == errno.EIO and took < BOUND, (code, took)
    fault_proxy.clear()
    assert (m.path / "slow").read_bytes() == data
    assert m.proc.poll() is None


@pytest.fixture
def own_seaweed(tmp_path):
    """A SeaweedFS server of this test alone, free to be stopped and restarted."""
    server = support.SeaweedServer(tmp_path / "seaweed")
    server.start()
    yield server
    server.stop()


def test_server_stop_and_restart_while_mounted(own_seaweed, mount, bucket):
    s3 = own_seaweed.client()
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="dir/kept", Body=b"before the outage")
    m = mount(bucket, f"url={own_seaweed.endpoint}", FAST, "stat_cache_expire=0.1")
    assert (m.path / "dir" / "kept").read_bytes() == b"before the outage"
    written = open(m.path / "written-during-outage", "wb")    # opened before, written during
    own_seaweed.stop()
    time.sleep(0.3)
    code, took = timed(lambda: os.listdir(m.path / "dir"))
    assert code == errno.EIO and took < BOUND, (code, took)
    code, took = timed(lambda: open(m.path / "created-during-outage", "wb"))
    assert code == errno.EIO and took < BOUND, (code, took)
    data = os.urandom(3 * MiB)
    written.write(data)
    code, took = timed(written.close)
    assert code == errno.EIO and took < BOUND, (code, took)
    own_seaweed.restart()
    assert (m.path / "dir" / "kept").read_bytes() == b"before the outage"     # same mount works
    again = open(m.path / "written-during-outage", "r+b")
    assert sha(again.read()) == sha(data)                                    # kept locally
    os.fsync(again.fileno())                                                 # retried, succeeds
    again.close()
    assert sha(stored(s3, bucket, "written-during-outage")) == sha(data)
