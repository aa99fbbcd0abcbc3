"""The fast HEAD/PUT paths (s3lean.py, s3fast.py) answer and store exactly what botocore's path does.

Against moto and against SeaweedFS: keys that need quoting, user metadata,
absent keys; the fast path must really be taken (else the tests would pass
on botocore alone), and HEAD requests with SSE-C arguments must not take it.
"""

from __future__ import annotations

import uuid

import boto3
import pytest

from s3pyfs.credentials import StaticKeys
from s3pyfs.s3client import ClientSettings, open_client

pytestmark = pytest.mark.trio

KEYS = ["plain", "dir/sub/file.txt", "with space+plus&amp=eq", "tilde~ünïcödé/€", "semi;colon,comma",
        "percent%20not-decoded", "long/" + "a" * 240, "star*paren()quote'"]


async def _compare(endpoint: str, access_key: str, secret_key: str, s3, bucket: str, path_style: bool):
    for i, key in enumerate(KEYS):
        s3.put_object(Bucket=bucket, Key=key, Body=b"x" * i, ContentType="text/x-test",
                      Metadata={"mode": "33188", "uid": str(i), "mtime": "1600000000.5"})
    settings = ClientSettings(bucket=bucket, endpoint_url=endpoint, path_style=path_style,
                              static_keys=StaticKeys(access_key, secret_key), region="us-east-1",
                              retries=2, request_timeout=30)
    async with open_client(settings) as client:
        fast = client._fast
        assert fast.enabled
        for _attempt in range(2):                # the first HEAD teaches the URL via botocore
            for key in KEYS:
                info = await client.head(key)
                expected = s3.head_object(Bucket=bucket, Key=key)
                assert info is not None, key
                assert (info.size, info.etag, info.content_type) == \
                    (expected["ContentLength"], expected["ETag"].strip('"'), expected["ContentType"])
                assert info.metadata == expected["Metadata"]
                assert info.last_modified_ns == int(expected["LastModified"].timestamp()) * 10**9
            assert await client.head("missing/" + KEYS[3]) is None
        assert fast._base is not None           # learnt, so the second round went the lean way (s3lean.py)
        # every HEAD but the very first (botocore's, which taught the URL) went that way
        assert client._lean.http.answers[("HEAD", 200)] == 2 * len(KEYS) - 1
        assert client._lean.http.answers[("HEAD", 404)] == 2
        sent = []
        original = fast._client._endpoint.http_session.send

        async def spy(request):
            sent.append(request.url)
            return await original(request)
        client._lean.head_enabled = False       # HEADs the lean path cannot send: s3fast.py
        fast._client._endpoint.http_session.send = spy
        try:
            assert (await client.head(KEYS[2])).size == 2
        finally:
            fast._client._endpoint.http_session.send = original
            client._lean.head_enabled = True
        assert len(sent) == 1 and sent[0].endswith("with%20space%2Bplus%26amp%3Deq")
        sent.clear()

        # small PUTs take the fast path too, and store what botocore would have stored
        fast._client._endpoint.http_session.send = spy
        try:
            for i, key in enumerate(KEYS):
                body = bytes(range(256)) * (i + 1)
                etag = await client.put("put/" + key, body, {"mode": "33261", "uid": str(i)}, "text/x-put")
                got = s3.get_object(Bucket=bucket, Key="put/" + key)
                assert got["Body"].read() == body
                assert got["Metadata"] == {"mode": "33261", "uid": str(i)}
                assert got["ContentType"] == "text/x-put" and got["ETag"].strip('"') == etag
        finally:
            fast._client._endpoint.http_session.send = original
        assert len(sent) == len(KEYS)               # one request per PUT: no fallback


async def test_fast_head_matches_botocore_on_moto(moto_server):
    s3 = boto3.client("s3", endpoint_url=moto_server.endpoint, aws_access_key_id="test",
                      aws_secret_access_key="test", region_name="us-east-1")
    bucket = "fast-" + uuid.uuid4().hex[:12]
    s3.create_bucket(Bucket=bucket)
    await _compare(moto_server.endpoint, "test", "test", s3, bucket, path_style=True)


async def test_fast_head_matches_botocore_on_seaweedfs(seaweed, s3, bucket):
    await _compare(seaweed.endpoint, seaweed.access_key, seaweed.secret_key, s3, bucket, path_style=False)


async def test_fast_head_not_used_with_sse_c_arguments(moto_server):
    settings = ClientSettings(bucket="any", endpoint_url=moto_server.endpoint, path_style=True,
                              static_keys=StaticKeys("test", "test"),
                              request_args={"SSECustomerAlgorithm": "AES256", "SSECustomerKey": "k" * 32})
    async with open_client(settings) as client:
        assert not client._fast.enabled
