"""An object keeps what it is: its system headers survive everything s3pyfs does to it.

Content-Type, Content-Encoding, Cache-Control, Content-Disposition, Content-Language
and Expires are checked through a FUSE mount on SeaweedFS (chmod, chown, touch -d,
append, rewrite, rename of the file and of its directory, each followed by a
head_object with boto3).  SeaweedFS reports no SSE-KMS key, so the storage class and
the KMS key id are checked on moto with the core driven directly (moto, like AWS,
drops both on a CopyObject that does not re-send them), together with the rule that
the mount's options win.  New files get a Content-Type from their name.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import stat
import subprocess
import uuid

import boto3
import pytest

from s3pyfs.core import Config
from s3pyfs.credentials import StaticKeys
from s3pyfs.filesystem import Filesystem
from s3pyfs.inodes import ROOT_INODE
from s3pyfs.metadata import Defaults
from s3pyfs.s3client import ClientSettings, _WithRequestArgs, open_client

MiB = 1024 * 1024

CONTENT = {"ContentType": "text/x-s3pyfs-report", "CacheControl": "max-age=600, public",
           "ContentDisposition": 'attachment; filename="report.txt"', "ContentEncoding": "identity",
           "ContentLanguage": "de-CH"}
EXPIRES = datetime.datetime(2031, 2, 3, 4, 5, 6, tzinfo=datetime.UTC)
EXPIRES_TEXT = "Mon, 03 Feb 2031 04:05:06 GMT"
OWN = {"StorageClass": "STANDARD_IA", "ServerSideEncryption": "aws:kms", "SSEKMSKeyId": "s3pyfs-key-1"}
FILE_MODE = stat.S_IFREG | 0o644


def _put(s3, bucket, key, data=b"original body\n", **extra):
    s3.put_object(Bucket=bucket, Key=key, Body=data, Expires=EXPIRES,
                  Metadata={"mode": str(FILE_MODE), "uid": "0", "gid": "0", "mtime": "1600000000"},
                  **CONTENT, **extra)


def _content_headers(head) -> dict:
    got = {name: head.get(name) for name in CONTENT}
    got["Expires"] = head.get("ExpiresString")
    return got


EXPECTED_CONTENT = {**CONTENT, "Expires": EXPIRES_TEXT}


# ---------------------------------------------------------------------------------------
# mounted, SeaweedFS: the Content-* headers, Cache-Control and Expires

def _chmod(path):
    os.chmod(path, 0o600)
    return "d/f.txt", lambda head, data: int(head["Metadata"]["mode"]) == stat.S_IFREG | 0o600


def _chown(path):
    os.chown(path, 1234, 5678)
    return "d/f.txt", lambda head, data: (head["Metadata"]["uid"], head["Metadata"]["gid"]) == ("1234", "5678")


def _utime(path):
    subprocess.run(["touch", "-m", "-d", "2001-02-03 04:05:06 UTC", str(path)], check=True)
    return "d/f.txt", lambda head, data: head["Metadata"]["mtime"].split(".")[0] == "981173106"


def _append(path):
    with open(path, "ab") as f:
        f.write(b"appended\n")
    return "d/f.txt", lambda head, data: data == b"original body\nappended\n"


def _rewrite(path):
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, b"new body")
    finally:
        os.close(fd)
    return "d/f.txt", lambda head, data: data == b"new body"


def _rewrite_large(path):
    """12 MiB with multipart_size=5: parts stream up while written (streaming.py)."""
    block = bytes(range(256)) * 4096            # 1 MiB
    with open(path, "r+b") as f:
        f.truncate(0)
        for _ in range(12):
            f.write(block)
    return "d/f.txt", lambda head, data: data == block * 12 and head["ETag"].strip('"').endswith("-3")


def _rename_file(path):
    os.rename(path, path.with_name("renamed.bin"))     # another extension: Content-Type stays
    return "d/renamed.bin", lambda head, data: data == b"original body\n"


def _rename_dir(path):
    os.rename(path.parent, path.parent.with_name("e"))
    return "e/f.txt", lambda head, data: data == b"original body\n"


def _rename_file_with_unsaved_data(path):
    with open(path, "ab") as f:
        f.write(b"appended\n")
        f.flush()                                   # in the staging file, not yet uploaded
        os.rename(path, path.with_name("moved.txt"))
    return "d/moved.txt", lambda head, data: data == b"original body\nappended\n"


def _rename_dir_with_unsaved_data(path):
    with open(path, "ab") as f:
        f.write(b"appended\n")
        f.flush()
        os.rename(path.parent, path.parent.with_name("e"))
    return "e/f.txt", lambda head, data: data == b"original body\nappended\n"


MOUNTED_CASES = {
    "chmod": _chmod, "chown": _chown, "utime": _utime, "append": _append, "rewrite": _rewrite,
    "rewrite_large": _rewrite_large, "rename_file": _rename_file, "rename_dir": _rename_dir,
    "rename_file_with_unsaved_data": _rename_file_with_unsaved_data,
    "rename_dir_with_unsaved_data": _rename_dir_with_unsaved_data,
}


@pytest.mark.parametrize("case", list(MOUNTED_CASES))
def test_system_headers_survive(case, s3, bucket, mount):
    _put(s3, bucket, "d/f.txt")
    assert _content_headers(s3.head_object(Bucket=bucket, Key="d/f.txt")) == EXPECTED_CONTENT
    m = mount(bucket, "multipart_size=5")
    key, done = MOUNTED_CASES[case](m.path / "d" / "f.txt")
    head = s3.head_object(Bucket=bucket, Key=key)
    data = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    assert done(head, data), (case, head["Metadata"], data[:40])      # the operation took effect
    assert _content_headers(head) == EXPECTED_CONTENT, case
    if key != "d/f.txt":
        assert "Contents" not in s3.list_objects_v2(Bucket=bucket, Prefix="d/f.txt")


def test_new_files_get_a_content_type_from_their_name(s3, bucket, mount):
    s3.put_object(Bucket=bucket, Key="old.html", Body=b"<p>", ContentType="text/plain")
    m = mount(bucket)
    for name in ("x.html", "x.json", "noext", "data.json"):
        (m.path / name).write_bytes(b"{}")
    subprocess.run(["touch", str(m.path / "empty.css")], check=True)
    (m.path / "sub").mkdir()
    # a rename keeps the type (SeaweedFS itself gives an application/octet-stream object
    # copied to a name with an extension that extension's type, so that case is not shown)
    os.rename(m.path / "data.json", m.path / "data.txt")
    with open(m.path / "old.html", "ab") as f:               # an existing object keeps its type
        f.write(b"</p>")
    types = {key: s3.head_object(Bucket=bucket, Key=key)["ContentType"]
             for key in ("x.html", "x.json", "noext", "data.txt", "empty.css", "old.html", "sub/")}
    assert types == {"x.html": "text/html", "x.json": "application/json",
                     "noext": "application/octet-stream", "data.txt": "application/json",
                     "empty.css": "text/css", "old.html": "text/plain", "sub/": "application/x-directory"}


# ---------------------------------------------------------------------------------------
# core on moto: storage class and SSE-KMS key id, and the mount's options winning

@pytest.fixture
def moto_bucket(moto_server):
    client = boto3.client("s3", endpoint_url=moto_server.endpoint, aws_access_key_id="test",
                          aws_secret_access_key="test", region_name="us-east-1")
    name = "headers-" + uuid.uuid4().hex[:12]
    client.create_bucket(Bucket=name)
    return client, name


@contextlib.asynccontextmanager
async def _core(moto_server, bucket, tmp_path, request_args=None):
    settings = ClientSettings(bucket=bucket, endpoint_url=moto_server.endpoint, path_style=True,
                              static_keys=StaticKeys("test", "test"), retries=2, connect_timeout=2,
                              read_timeout=10, request_timeout=30, request_args=request_args or {})
    async with open_client(settings) as client:
        config = Config(defaults=Defaults(uid=1000, gid=1000), staging_dir=str(tmp_path),
                        multipart_size=5 * MiB, stat_ttl=0)
        yield Filesystem(client, config)


async def _rewrite_via_core(fs, ino, data, flags):
    handle = await fs.open(ino, os.O_WRONLY | flags)
    offset = 0 if flags & os.O_TRUNC else (await fs.getattr(ino)).attrs.size
    await fs.write(handle.fh, offset, data)
    await fs.flush(handle.fh)
    await fs.release(handle.fh)


def _own_headers(head) -> dict:
    return {name: head.get(name) for name in OWN}


async def _chmod_core(fs, node, s3, bucket):
    await fs.setattr(node.ino, mode=0o600)
    return "d/f.txt", lambda head: int(head["Metadata"]["mode"]) == stat.S_IFREG | 0o600


async def _utime_core(fs, node, s3, bucket):
    await fs.setattr(node.ino, mtime_ns=981173106 * 10**9, atime_ns=981173106 * 10**9)
    return "d/f.txt", lambda head: head["Metadata"]["mtime"] == "981173106"


async def _append_core(fs, node, s3, bucket):
    await _rewrite_via_core(fs, node.ino, b"more", os.O_APPEND)
    return "d/f.txt", lambda head: head["ContentLength"] == len(b"original body\nmore")


async def _rewrite_large_core(fs, node, s3, bucket):
    await _rewrite_via_core(fs, node.ino, b"z" * (11 * MiB), os.O_TRUNC)     # multipart upload
    return "d/f.txt", lambda head: head["ETag"].strip('"').endswith("-3")


async def _rename_file_core(fs, node, s3, bucket):
    d = await fs.lookup(ROOT_INODE, "d")
    await fs.rename(d.ino, "f.txt", d.ino, "g.bin")
    return "d/g.bin", lambda head: head["ContentLength"] == len(b"original body\n")


async def _rename_dir_core(fs, node, s3, bucket):
    await fs.rename(ROOT_INODE, "d", ROOT_INODE, "e")
    return "e/f.txt", lambda head: head["ContentLength"] == len(b"original body\n")


CORE_CASES = {"chmod": _chmod_core, "utime": _utime_core, "append": _append_core,
              "rewrite_large": _rewrite_large_core, "rename_file": _rename_file_core,
              "rename_dir": _rename_dir_core}


@pytest.mark.trio
@pytest.mark.parametrize("case", list(CORE_CASES))
async def test_storage_class_and_kms_key_survive(case, moto_server, moto_bucket, tmp_path):
    s3, bucket = moto_bucket
    _put(s3, bucket, "d/f.txt", **OWN)
    assert _own_headers(s3.head_object(Bucket=bucket, Key="d/f.txt")) == OWN
    async with _core(moto_server, bucket, tmp_path) as fs:
        d = await fs.lookup(ROOT_INODE, "d")
        node = await fs.lookup(d.ino, "f.txt")
        key, done = await CORE_CASES[case](fs, node, s3, bucket)
    head = s3.head_object(Bucket=bucket, Key=key)
    assert done(head), (case, head["Metadata"])
    assert _own_headers(head) == OWN, case
    assert _content_headers(head) == EXPECTED_CONTENT, case


@pytest.mark.trio
async def test_multipart_copy_keeps_them_too(moto_server, moto_bucket, tmp_path, monkeypatch):
    from s3pyfs import s3client
    monkeypatch.setattr(s3client, "MAX_SINGLE_COPY", 5 * MiB)      # stands in for 5 GiB
    monkeypatch.setattr(s3client, "COPY_PART_SIZE", 5 * MiB)
    s3, bucket = moto_bucket
    _put(s3, bucket, "d/f.txt", data=os.urandom(11 * MiB), **OWN)
    async with _core(moto_server, bucket, tmp_path) as fs:
        d = await fs.lookup(ROOT_INODE, "d")
        node = await fs.lookup(d.ino, "f.txt")
        await fs.setattr(node.ino, mode=0o640)                    # copy in place, 3 parts
        await fs.rename(ROOT_INODE, "d", ROOT_INODE, "e")          # copy without metadata given
    head = s3.head_object(Bucket=bucket, Key="e/f.txt")
    assert head["ETag"].strip('"').endswith("-3") and int(head["Metadata"]["mode"]) == stat.S_IFREG | 0o640
    assert _own_headers(head) == OWN
    assert _content_headers(head) == EXPECTED_CONTENT


@pytest.mark.trio
@pytest.mark.parametrize("options, expected", [
    ({"StorageClass": "ONEZONE_IA"}, {**OWN, "StorageClass": "ONEZONE_IA"}),
    ({"ServerSideEncryption": "AES256"},
     {"StorageClass": "STANDARD_IA", "ServerSideEncryption": "AES256", "SSEKMSKeyId": None}),
    ({"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": "mount-key"}, {**OWN, "SSEKMSKeyId": "mount-key"}),
], ids=["storage_class", "sse_s3", "sse_kms"])
async def test_the_mounts_options_win(options, expected, moto_server, moto_bucket, tmp_path):
    s3, bucket = moto_bucket
    _put(s3, bucket, "d/f.txt", **OWN)
    async with _core(moto_server, bucket, tmp_path, request_args=options) as fs:
        d = await fs.lookup(ROOT_INODE, "d")
        node = await fs.lookup(d.ino, "f.txt")
        await fs.setattr(node.ino, mode=0o600)
        await _rewrite_via_core(fs, node.ino, b"more", os.O_APPEND)
        await fs.rename(d.ino, "f.txt", d.ino, "g.txt")
    head = s3.head_object(Bucket=bucket, Key="d/g.txt")
    assert head["ContentLength"] == len(b"original body\nmore")
    assert int(head["Metadata"]["mode"]) == stat.S_IFREG | 0o600
    assert _own_headers(head) == expected
    assert _content_headers(head) == EXPECTED_CONTENT


class _Recorder:
    """Stands in for the aiobotocore client: records each call's arguments."""

    def __init__(self):
        self.meta = boto3.client("s3", region_name="us-east-1", aws_access_key_id="x",
                                 aws_secret_access_key="x").meta
        self.calls: list[tuple[str, dict]] = []

    async def copy_object(self, **kwargs):
        self.calls.append(("CopyObject", kwargs))
        return {}

    async def put_object(self, **kwargs):
        self.calls.append(("PutObject", kwargs))
        return {}


@pytest.mark.trio
async def test_no_kms_key_is_sent_beside_sse_c():
    recorder = _Recorder()
    key = os.urandom(32)
    client = _WithRequestArgs(recorder, {"SSECustomerAlgorithm": "AES256", "SSECustomerKey": key,
                                         "CopySourceSSECustomerAlgorithm": "AES256",
                                         "CopySourceSSECustomerKey": key, "StorageClass": "GLACIER_IR"})
    own = {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": "k1", "StorageClass": "STANDARD_IA",
           "CacheControl": "no-cache"}
    await client.copy_object(Bucket="b", Key="k", CopySource={"Bucket": "b", "Key": "k"}, **own)
    await client.put_object(Bucket="b", Key="k", Body=b"", **own)
    for op, sent in recorder.calls:
        assert "SSEKMSKeyId" not in sent and "ServerSideEncryption" not in sent, op
        assert sent["SSECustomerKey"] == key and sent["StorageClass"] == "GLACIER_IR", op
        assert sent["CacheControl"] == "no-cache", op


@pytest.mark.trio
async def test_fast_head_and_put_carry_the_headers(moto_server, moto_bucket):
    """HEAD answers parsed by s3fast.py carry the same kept headers as botocore's; a small
    PUT with plain headers goes the fast way, one with a storage class through botocore."""
    s3, bucket = moto_bucket
    _put(s3, bucket, "f", **OWN)
    settings = ClientSettings(bucket=bucket, endpoint_url=moto_server.endpoint, path_style=True,
                              static_keys=StaticKeys("test", "test"), retries=2, request_timeout=30)
    expected = {**CONTENT, "Expires": EXPIRES_TEXT, **OWN}
    async with open_client(settings) as client:
        first = await client.head("f")                 # botocore's path, teaches the URL
        assert client._fast._base is not None
        second = await client.head("f")                # s3fast.py
        assert first.headers == expected and second.headers == expected

        sent = []
        session = client._fast._client._endpoint.http_session
        original = session.send

        async def spy(request):
            sent.append(request.url)
            return await original(request)
        session.send = spy
        try:
            await client.put("small", b"tiny", {"mode": str(FILE_MODE)},
                             headers={**CONTENT, "Expires": EXPIRES_TEXT})
            assert len(sent) == 1                      # one request: the fast PUT
            await client.put("small-ia", b"tiny", {}, headers={"StorageClass": "STANDARD_IA"})
        finally:
            session.send = original
    head = s3.head_object(Bucket=bucket, Key="small")
    assert _content_headers(head) == EXPECTED_CONTENT
    assert s3.head_object(Bucket=bucket, Key="small-ia")["StorageClass"] == "STANDARD_IA"


def test_content_type_table():
    from s3pyfs.content_types import content_type_for
    assert [content_type_for(n) for n in ("x.html", "X.JSON", "noext", "page.html.orig", ".hidden")] == \
        ["text/html", "application/json", "application/octet-stream", "text/html", "application/octet-stream"]
