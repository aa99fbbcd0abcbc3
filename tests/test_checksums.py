"""Upload checksums (`checksum=`, checksums.py, s3client.py) against SeaweedFS.

Every upload carries exactly the checksum header the option names (none of
botocore's own on top), the store checks it (a body that does not match is
refused with BadDigest and nothing is stored), ETags stay the MD5s recovery
and the read path compare with, and a store that refuses the header makes
the mount fall back to Content-MD5 once, with one WARNING, counted.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os

import pytest
from botocore.exceptions import ClientError

from s3pyfs import checksums, metrics
from s3pyfs.credentials import StaticKeys
from s3pyfs.errors import RemoteIOError
from s3pyfs.s3client import ClientSettings, open_client

pytestmark = pytest.mark.trio

HEADERS = {"crc32c": "x-amz-checksum-crc32c", "crc32": "x-amz-checksum-crc32", "md5": "content-md5"}
SUM_HEADERS = ("x-amz-checksum-crc32c", "x-amz-checksum-crc32", "x-amz-checksum-crc64nvme",
               "x-amz-checksum-sha1", "x-amz-checksum-sha256", "content-md5", "x-amz-trailer",
               "x-amz-sdk-checksum-algorithm")


def _settings(seaweed, bucket: str, checksum: str = "crc32c") -> ClientSettings:
    return ClientSettings(bucket=bucket, endpoint_url=seaweed.endpoint, path_style=True, region="us-east-1",
                          static_keys=StaticKeys(seaweed.access_key, seaweed.secret_key),
                          retries=2, request_timeout=60, checksum=checksum)


def _spy(client) -> list[dict[str, str]]:
    """Record the headers of every request the client sends (botocore's path and s3fast's)."""
    raw = client._fast._client
    session = raw._endpoint.http_session
    original = session.send
    sent: list[dict[str, str]] = []

    async def send(request):
        sent.append({k.lower(): v.decode() if isinstance(v, bytes) else v for k, v in request.headers.items()})
        return await original(request)
    session.send = send
    return sent


def _b64_crc(value: int) -> str:
    return base64.b64encode(value.to_bytes(4, "big")).decode()


async def test_checksum_values_are_what_s3_expects():
    # the standard check values of CRC-32C (Castagnoli) and CRC-32 for "123456789"
    assert checksums.value("crc32c", b"123456789") == _b64_crc(0xE3069283)
    assert checksums.value("crc32", b"123456789") == _b64_crc(0xCBF43926)
    assert checksums.value("md5", b"") == base64.b64encode(hashlib.md5(b"").digest()).decode()
    assert checksums.fields("none", b"x") == {}


@pytest.mark.parametrize("algorithm", ["crc32c", "crc32", "md5", "none"])
async def test_uploads_carry_one_checksum_header(seaweed, s3, bucket, algorithm):
    small, large = os.urandom(3000), os.urandom(3 * 1024 * 1024 + 17)     # fast path / botocore's path
    part1, part2 = os.urandom(5 * 1024 * 1024), os.urandom(1234)
    async with open_client(_settings(seaweed, bucket, algorithm)) as client:
        await client.head("teach-the-fast-path")
        sent = _spy(client)
        etags = {}
        for key, body in (("small", small), ("large", large)):
            etags[key] = await client.put(key, body, {"mode": "33188"})
        upload_id = await client.create_multipart("multi", {"mode": "33188"})
        tags = [await client.upload_part("multi", upload_id, 1, part1),
                await client.upload_part("multi", upload_id, 2, part2)]
        etags["multi"] = await client.complete_multipart("multi", upload_id, tags)
        assert client.checksum == algorithm and not client._part_sums
    bodies = [small, large, part1, part2]
    uploads = [h for h in sent if "x-amz-checksum-crc32c" in h or "x-amz-checksum-crc32" in h
               or "content-md5" in h or h.get("content-length") in {str(len(b)) for b in bodies}]
    assert len(uploads) == 4, sent
    for headers, body in zip(uploads, bodies, strict=True):
        present = sorted(name for name in SUM_HEADERS if name in headers)
        if algorithm == "none":
            assert present == []
        else:
            assert present == [HEADERS[algorithm]]         # botocore added nothing of its own
            assert headers[HEADERS[algorithm]] == checksums.value(algorithm, body)
    # ETags stay MD5s (recovery.py and the read-side check compare them with MD5s)
    assert etags["small"] == hashlib.md5(small).hexdigest()
    assert etags["large"] == hashlib.md5(large).hexdigest()
    assert etags["multi"] == hashlib.md5(hashlib.md5(part1).digest() + hashlib.md5(part2).digest()).hexdigest() + "-2"
    assert s3.get_object(Bucket=bucket, Key="multi")["Body"].read() == part1 + part2
    assert s3.get_object(Bucket=bucket, Key="large")["Body"].read() == large


@pytest.mark.parametrize("size", [100, 2 * 1024 * 1024])
async def test_store_refuses_a_body_that_does_not_match_its_crc(seaweed, s3, bucket, monkeypatch, size):
    """A body damaged on the way (here: a checksum of other bytes) is refused, not stored."""
    real = checksums.fields
    monkeypatch.setattr(checksums, "fields", lambda algorithm, data: real(algorithm, b"!" + bytes(data)))
    async with open_client(_settings(seaweed, bucket)) as client:
        await client.head("teach-the-fast-path")
        with pytest.raises(RemoteIOError, match="BadDigest"):
            await client.put("damaged", os.urandom(size), {})
        assert client.checksum == "crc32c"          # damage is no reason to fall back
    with pytest.raises(ClientError):
        s3.head_object(Bucket=bucket, Key="damaged")


async def test_store_refusing_the_header_falls_back_to_md5(seaweed, s3, bucket, caplog):
    """A store that does not know x-amz-checksum-crc32c (here: a refusal like such a store's,
    answered for every request carrying it) gets Content-MD5 from then on."""
    before = metrics.counters.checksum_fallbacks
    refused = []

    def refusing(method):
        async def call(**kwargs):
            if "ChecksumCRC32C" in kwargs or "ChecksumAlgorithm" in kwargs:
                refused.append(method.__name__)
                raise ClientError({"Error": {"Code": "InvalidArgument", "Message": "unknown header"},
                                   "ResponseMetadata": {"HTTPStatusCode": 400}}, method.__name__)
            return await method(**kwargs)
        call.__name__ = method.__name__
        return call
    caplog.set_level(logging.WARNING, logger="s3pyfs.s3client")
    async with open_client(_settings(seaweed, bucket)) as client:
        client._fast.put_enabled = False        # every PUT through the refusing botocore methods
        for name in ("put_object", "upload_part", "create_multipart_upload"):
            setattr(client._c, name, refusing(getattr(client._c, name)))
        body = os.urandom(2 * 1024 * 1024)
        assert await client.put("first", body, {}) == hashlib.md5(body).hexdigest()
        assert client.checksum == "md5"
        assert await client.put("second", body[:1000], {}) == hashlib.md5(body[:1000]).hexdigest()
        upload_id = await client.create_multipart("multi", {})
        tag = await client.upload_part("multi", upload_id, 1, body)
        await client.complete_multipart("multi", upload_id, [tag])
    assert refused == ["put_object"]                # refused once, then never asked again
    assert metrics.counters.checksum_fallbacks == before + 1
    warnings = [r for r in caplog.records if "refused the crc32c checksum header" in r.getMessage()]
    assert len(warnings) == 1
    assert s3.get_object(Bucket=bucket, Key="first")["Body"].read() == body
    assert s3.get_object(Bucket=bucket, Key="multi")["Body"].read() == body


async def test_multipart_create_refusing_the_algorithm_falls_back(seaweed, s3, bucket):
    async with open_client(_settings(seaweed, bucket, "crc32")) as client:
        original = client._c.create_multipart_upload

        async def refusing(**kwargs):
            if "ChecksumAlgorithm" in kwargs:
                raise ClientError({"Error": {"Code": "NotImplemented", "Message": "no"},
                                   "ResponseMetadata": {"HTTPStatusCode": 501}}, "CreateMultipartUpload")
            return await original(**kwargs)
        client._c.create_multipart_upload = refusing
        upload_id = await client.create_multipart("multi", {})
        assert client.checksum == "md5"
        body = os.urandom(1000)
        tag = await client.upload_part("multi", upload_id, 1, body)
        await client.complete_multipart("multi", upload_id, [tag])
    assert s3.get_object(Bucket=bucket, Key="multi")["Body"].read() == body
