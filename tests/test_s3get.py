"""The lean GET path (s3lean.py, s3get.py) through S3Client.get_range, against SeaweedFS.

It must really be taken (connections counted on its own pool), give exactly
the bytes botocore would, stay pinned to an ETag, reuse connections, and
never hand back short data when the body is cut or reset on the way.
"""

from __future__ import annotations

import os

import pytest

from s3pyfs import metrics
from s3pyfs.credentials import StaticKeys
from s3pyfs.errors import Conflict, FSError, NotFound
from s3pyfs.s3client import ClientSettings, open_client

pytestmark = pytest.mark.trio


def _settings(seaweed, bucket: str, endpoint: str | None = None, **overrides) -> ClientSettings:
    values = dict(bucket=bucket, endpoint_url=endpoint or seaweed.endpoint, path_style=True,
                  static_keys=StaticKeys(seaweed.access_key, seaweed.secret_key),
                  retries=3, connect_timeout=2, read_timeout=5, request_timeout=30)
    values.update(overrides)
    return ClientSettings(**values)


async def _learnt(client, key: str) -> None:
    """The first HEAD teaches the URL (s3fast.py); GETs take the lean way from then on."""
    assert await client.head(key) is not None
    assert client._fast._base is not None and client._lean is not None


async def test_ranges_match_the_object_and_connections_are_reused(seaweed, s3, bucket):
    body = os.urandom(3 * 1024 * 1024 + 123)
    key = "dir/with space+plus/ünï.bin"
    s3.put_object(Bucket=bucket, Key=key, Body=body)
    etag = s3.head_object(Bucket=bucket, Key=key)["ETag"].strip('"')
    async with open_client(_settings(seaweed, bucket)) as client:
        await _learnt(client, key)
        received = metrics.counters.s3_received_bytes
        for start, end in [(0, 1), (0, len(body)), (5, 1024 * 1024 + 7), (len(body) - 10, len(body) + 500),
                           (2 * 1024 * 1024, 3 * 1024 * 1024)]:
            data = await client.get_range(key, start, end, etag=etag)
            assert isinstance(data, bytearray)        # received by s3get.py, not botocore
            assert bytes(data) == body[start:end], (start, end)
        assert client._lean.http.connections_made == 1     # one keep-alive connection for all five
        assert metrics.counters.s3_received_bytes - received == sum(
            min(e, len(body)) - s for s, e in [(0, 1), (0, len(body)), (5, 1024 * 1024 + 7),
                                               (len(body) - 10, len(body) + 500), (2 * 1024 * 1024, 3 * 1024 * 1024)])


async def test_pinned_etag_mismatch_is_a_conflict(seaweed, s3, bucket):
    s3.put_object(Bucket=bucket, Key="k", Body=b"first version " * 1000)
    old = s3.head_object(Bucket=bucket, Key="k")["ETag"].strip('"')
    async with open_client(_settings(seaweed, bucket)) as client:
        await _learnt(client, "k")
        assert bytes(await client.get_range("k", 0, 5, etag=old)) == b"first"
        s3.put_object(Bucket=bucket, Key="k", Body=b"second version " * 1000)
        with pytest.raises(Conflict):
            await client.get_range("k", 0, 5, etag=old)
        new = s3.head_object(Bucket=bucket, Key="k")["ETag"].strip('"')
        assert bytes(await client.get_range("k", 0, 6, etag=new)) == b"second"


async def test_missing_key_falls_back_to_botocore_errors(seaweed, s3, bucket):
    s3.put_object(Bucket=bucket, Key="there", Body=b"x")
    async with open_client(_settings(seaweed, bucket)) as client:
        await _learnt(client, "there")
        with pytest.raises(NotFound):
            await client.get_range("absent", 0, 10)


async def test_cut_and_reset_bodies_are_fetched_again_never_short(seaweed, s3, bucket, fault_proxy):
    body = os.urandom(4 * 1024 * 1024)
    s3.put_object(Bucket=bucket, Key="big", Body=body)
    async with open_client(_settings(seaweed, bucket, fault_proxy.url)) as client:
        await _learnt(client, "big")
        made = client._lean.http.connections_made
        for kind in ("short_body", "reset_response"):
            fault = fault_proxy.add(kind, method="GET", times=1)
            data = await client.get_range("big", 1000, 3 * 1024 * 1024)
            assert fault.hits == 1, kind
            assert bytes(data) == body[1000:3 * 1024 * 1024], kind
        assert client._lean.http.connections_made > made   # the broken connections were not reused


async def test_body_cut_every_time_is_an_error_not_short_data(seaweed, s3, bucket, fault_proxy):
    body = os.urandom(2 * 1024 * 1024)
    s3.put_object(Bucket=bucket, Key="big", Body=body)
    async with open_client(_settings(seaweed, bucket, fault_proxy.url)) as client:
        await _learnt(client, "big")
        fault = fault_proxy.add("short_body", method="GET")
        with pytest.raises(FSError):
            await client.get_range("big", 0, len(body))
        assert fault.hits >= 3                       # every try was cut
        fault.times = fault.hits                     # no more faults: served again
        assert bytes(await client.get_range("big", 0, len(body))) == body


async def test_damaged_whole_object_is_caught_by_its_md5(seaweed, s3, bucket, fault_proxy):
    body = os.urandom(512 * 1024)
    s3.put_object(Bucket=bucket, Key="whole", Body=body)
    async with open_client(_settings(seaweed, bucket, fault_proxy.url)) as client:
        await _learnt(client, "whole")
        fault = fault_proxy.add("corrupt", method="GET", times=1)
        data = await client.get_range("whole", 0, len(body))
        assert fault.hits == 1
        assert bytes(data) == body


async def test_server_errors_go_the_botocore_way(seaweed, s3, bucket, fault_proxy):
    s3.put_object(Bucket=bucket, Key="k", Body=b"abcdef" * 100)
    async with open_client(_settings(seaweed, bucket, fault_proxy.url)) as client:
        await _learnt(client, "k")
        fault = fault_proxy.add("error500", method="GET", times=2)
        assert bytes(await client.get_range("k", 6, 12)) == b"abcdef"
        assert fault.hits == 2


async def test_lean_get_off_uses_botocore(seaweed, s3, bucket):
    s3.put_object(Bucket=bucket, Key="k", Body=b"0123456789")
    async with open_client(_settings(seaweed, bucket, lean_get=False)) as client:
        assert client._lean is not None and not client._lean.get_enabled     # HEADs only
        assert await client.head("k") is not None
        data = await client.get_range("k", 2, 5)
        assert data == b"234" and isinstance(data, bytes)



async def test_no_lean_get_through_a_configured_proxy(monkeypatch):
    from s3pyfs import s3get
    for name in ("no_proxy", "NO_PROXY", "HTTP_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")

    async def sign(method, key, headers):
        return f"http://s3.example.test/bucket/{key}", dict(headers)
    lean = s3get.LeanHTTP(sign)
    assert await lean.get("k", 0, 10) is s3get.FALLBACK       # botocore's path, which honours the proxy
    assert await lean.head("k") is s3get.FALLBACK
    assert lean.connections_made == 0
