"""Request arguments from s3fs options (use_sse, storage_class, default_acl, requester_pays).

Against moto (headers seen on the wire, and what the store recorded), a fake
client for the SSE-C read fallback, and a mount on SeaweedFS, which enforces
SSE-C keys for real.
"""

from __future__ import annotations

import os
import uuid

import boto3
import pytest
import trio
from botocore.exceptions import ClientError

from s3pyfs.credentials import StaticKeys
from s3pyfs.s3client import ClientSettings, _WithRequestArgs, open_client

MiB = 1024 * 1024
KMS = {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": "alias/s3pyfs-test", "StorageClass": "STANDARD_IA",
       "ACL": "public-read", "RequestPayer": "requester"}
WRITE_HEADERS = {"x-amz-server-side-encryption": "aws:kms",
                 "x-amz-server-side-encryption-aws-kms-key-id": "alias/s3pyfs-test",
                 "x-amz-storage-class": "STANDARD_IA", "x-amz-acl": "public-read",
                 "x-amz-request-payer": "requester"}


@pytest.fixture
def moto_s3(moto_server):
    client = boto3.client("s3", endpoint_url=moto_server.endpoint, aws_access_key_id="test",
                          aws_secret_access_key="test", region_name="us-east-1")
    name = "args-" + uuid.uuid4().hex[:12]
    client.create_bucket(Bucket=name)
    return client, name


@pytest.mark.trio
async def test_kms_storage_class_acl_and_payer_go_where_s3_takes_them(moto_server, moto_s3):
    s3, bucket = moto_s3
    settings = ClientSettings(bucket=bucket, endpoint_url=moto_server.endpoint, path_style=True,
                              static_keys=StaticKeys("test", "test"), request_args=KMS, request_timeout=30)
    sent: list[tuple[str, dict]] = []

    def record(request, event_name, **_):
        sent.append((event_name.rsplit(".", 1)[-1],
                     {k.lower(): v.decode() if isinstance(v, bytes) else v for k, v in request.headers.items()}))

    async with open_client(settings) as client:
        client._c._client.meta.events.register("before-send.s3", record)
        await client.put("small", b"body", {"mode": "33188"})
        upload = await client.create_multipart("big", {"mode": "33188"})
        etag = await client.upload_part("big", upload, 1, b"x" * (5 * MiB))
        await client.complete_multipart("big", upload, [etag])
        await client.copy("small", "copied", 4)
        assert (await client.head("small")).size == 4
        assert await client.get_range("small", 0, 4) == b"body"
        page, _ = await client.list_page("")
        assert {o.key for o in page.objects} == {"small", "big", "copied"}
        await client.delete("copied")

    def headers(op):
        found = [h for name, h in sent if name == op]
        assert found, f"no {op} sent"
        return found[0]

    for op in ("PutObject", "CreateMultipartUpload", "CopyObject"):
        got = headers(op)
        assert {k: got.get(k) for k in WRITE_HEADERS} == WRITE_HEADERS, op
    for op in ("HeadObject", "GetObject", "ListObjectsV2", "UploadPart", "CompleteMultipartUpload", "DeleteObject"):
        got = headers(op)
        assert got.get("x-amz-request-payer") == "requester", op
        assert "x-amz-server-side-encryption" not in got and "x-amz-storage-class" not in got, op
    for key in ("small", "big"):
        head = s3.head_object(Bucket=bucket, Key=key)
        assert (head["ServerSideEncryption"], head["SSEKMSKeyId"], head["StorageClass"]) == \
            ("aws:kms", "alias/s3pyfs-test", "STANDARD_IA"), key
        grants = s3.get_object_acl(Bucket=bucket, Key=key)["Grants"]
        assert any(g["Grantee"].get("URI", "").endswith("/AllUsers") and g["Permission"] == "READ" for g in grants)


class _FakeS3:
    """Answers like AWS: SSE-C read headers on an object not encrypted with SSE-C are a 400."""

    def __init__(self):
        self.meta = boto3.client("s3", region_name="us-east-1", aws_access_key_id="x",
                                 aws_secret_access_key="x").meta
        self.calls: list[tuple[str, dict]] = []

    def _answer(self, op, kwargs, encrypted_keys=("secret",)):
        self.calls.append((op, kwargs))
        if op == "CopyObject":
            has_key, source = "CopySourceSSECustomerKey" in kwargs, kwargs["CopySource"]["Key"]
        else:
            has_key, source = "SSECustomerKey" in kwargs, kwargs["Key"]
        if has_key and source not in encrypted_keys:
            raise ClientError({"Error": {"Code": "InvalidRequest"}, "ResponseMetadata": {"HTTPStatusCode": 400}}, op)
        return {"ok": op}

    async def get_object(self, **kwargs):
        return self._answer("GetObject", kwargs)

    async def copy_object(self, **kwargs):
        return self._answer("CopyObject", kwargs)

    async def put_object(self, **kwargs):
        return self._answer("PutObject", kwargs, encrypted_keys=(kwargs["Key"],))


@pytest.mark.trio
async def test_sse_c_reads_fall_back_for_objects_without_the_key():
    fake = _FakeS3()
    key = os.urandom(32)
    client = _WithRequestArgs(fake, {"SSECustomerAlgorithm": "AES256", "SSECustomerKey": key,
                                     "CopySourceSSECustomerAlgorithm": "AES256", "CopySourceSSECustomerKey": key})
    await client.get_object(Bucket="b", Key="secret")
    await client.get_object(Bucket="b", Key="plain")
    await client.copy_object(Bucket="b", Key="new", CopySource={"Bucket": "b", "Key": "plain"})
    await client.put_object(Bucket="b", Key="new", Body=b"")
    ops = [(op, sorted(k for k in kw if "SSE" in k)) for op, kw in fake.calls]
    assert ops == [
        ("GetObject", ["SSECustomerAlgorithm", "SSECustomerKey"]),              # encrypted: key works
        ("GetObject", ["SSECustomerAlgorithm", "SSECustomerKey"]),              # plain: 400 ...
        ("GetObject", []),                                                      # ... read again without
        ("CopyObject", ["CopySourceSSECustomerAlgorithm", "CopySourceSSECustomerKey",
                        "SSECustomerAlgorithm", "SSECustomerKey"]),
        ("CopyObject", ["SSECustomerAlgorithm", "SSECustomerKey"]),             # the copy stays encrypted
        ("PutObject", ["SSECustomerAlgorithm", "SSECustomerKey"]),
    ]


def test_sse_c_mount_encrypts_what_it_writes(s3, bucket, mount, tmp_path):
    key = os.urandom(32)
    key_file = tmp_path / "sse-c.key"
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, __import__("base64").b64encode(key) + b"\n")
    os.close(fd)
    s3.put_object(Bucket=bucket, Key="plain.txt", Body=b"written without encryption")
    m = mount(bucket, f"use_sse=custom:{key_file}", "storage_class=standard_ia")
    (m.path / "secret.txt").write_bytes(b"encrypted with a customer key")
    (m.path / "dir").mkdir()
    os.rename(m.path / "secret.txt", m.path / "dir" / "moved.txt")          # CopyObject with both keys
    assert (m.path / "plain.txt").read_bytes() == b"written without encryption"
    m.unmount()

    with pytest.raises(ClientError):
        s3.get_object(Bucket=bucket, Key="dir/moved.txt")                    # no key: refused
    with pytest.raises(ClientError):
        s3.get_object(Bucket=bucket, Key="dir/moved.txt", SSECustomerAlgorithm="AES256",
                      SSECustomerKey=os.urandom(32))                         # wrong key: refused
    got = s3.get_object(Bucket=bucket, Key="dir/moved.txt", SSECustomerAlgorithm="AES256", SSECustomerKey=key)
    assert got["Body"].read() == b"encrypted with a customer key"
    head = s3.head_object(Bucket=bucket, Key="dir/moved.txt", SSECustomerAlgorithm="AES256", SSECustomerKey=key)
    assert head["StorageClass"] == "STANDARD_IA"

    again = mount(bucket, f"use_sse=custom:{key_file}")                     # a fresh mount reads it back
    assert (again.path / "dir" / "moved.txt").read_bytes() == b"encrypted with a customer key"
    assert (again.path / "plain.txt").read_bytes() == b"written without encryption"


@pytest.mark.trio
@pytest.mark.parametrize("options, expected", [
    ("endpoint=eu-west-1", r"^AWS4-HMAC-SHA256 Credential=AKIDTEST/\d{8}/eu-west-1/s3/aws4_request"),
    ("", r"^AWS4-HMAC-SHA256 Credential=AKIDTEST/\d{8}/us-east-1/s3/aws4_request"),
    ("sigv2", r"^AWS AKIDTEST:[A-Za-z0-9+/=]+$"),
    ("public_bucket=1", None),
])
async def test_signature_follows_endpoint_sigv2_and_public_bucket(moto_server, moto_s3, tmp_path, monkeypatch,
                                                                  options, expected):
    import re

    from s3pyfs.cli import parse_args
    from s3pyfs.mount import make_settings
    _, bucket = moto_s3
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDTEST")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    opts = parse_args([bucket, str(tmp_path), "-o", f"url={moto_server.endpoint},use_path_request_style,{options}"])
    seen = []
    async with open_client(make_settings(opts)) as client:
        client._c.meta.events.register("before-send.s3", lambda request, **_: seen.append(request.headers))
        await client.head("nothing-here")
    auth = seen[0].get("Authorization")
    auth = auth.decode() if isinstance(auth, bytes) else auth
    if expected is None:
        assert auth is None
    else:
        assert re.match(expected, auth or ""), auth


class _CountingServer:
    """Counts connections and requests; answers 500, or never answers (stall)."""

    def __init__(self, mode):
        import socket
        import threading
        self.mode, self.connections, self.requests = mode, 0, 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self._open = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        import threading
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            self._open.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        body = b"<Error><Code>InternalError</Code><Message>boom</Message></Error>"
        try:
            while True:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                self.requests += 1
                if self.mode == "stall":
                    continue                  # read it, never answer
                conn.sendall(b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/xml\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        except OSError:
            pass

    def close(self):
        self.listener.close()
        for conn in self._open:
            conn.close()


@pytest.mark.trio
@pytest.mark.parametrize("mode, options, attempts", [
    ("error", "retries=3", 3), ("error", "retries=1", 1),
    ("stall", "retries=2,readwrite_timeout=1", 2),
])
async def test_retries_count_attempts_and_readwrite_timeout_bounds_silence(tmp_path, monkeypatch, mode, options,
                                                                           attempts):
    from s3pyfs.cli import parse_args
    from s3pyfs.errors import RemoteIOError
    from s3pyfs.mount import make_settings
    server = _CountingServer(mode)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDTEST")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    opts = parse_args(["bucket1", str(tmp_path), "-o", f"url={server.url},use_path_request_style,connect_timeout=1,"
                                                        f"request_timeout=30,{options}"])
    try:
        async with open_client(make_settings(opts)) as client:
            started = trio.current_time()
            with pytest.raises(RemoteIOError):
                await client.get_range("key", 0, 10)
            took = trio.current_time() - started
    finally:
        server.close()
    assert server.requests == attempts                      # s3fs's meaning: attempts, the first included
    if mode == "stall":
        assert attempts * 1 <= took < attempts * 1 + 5     # each silent attempt gives up after 1 s
