"""The filesystem core driven directly (no FUSE) against moto's S3 server on loopback.

Each test checks what a user or another S3 tool would see: object keys, bodies
and x-amz-meta-* headers out of band with boto3, and results through the core.
"""

from __future__ import annotations

import base64
import errno
import json
import os
import stat
import time
import urllib.parse
import uuid

import boto3
import pytest
import trio

from s3pyfs.core import Config
from s3pyfs.errors import FSError
from s3pyfs.filesystem import RENAME_NOREPLACE, Filesystem
from s3pyfs.inodes import ROOT_INODE
from s3pyfs.metadata import Defaults
from s3pyfs.s3client import ClientSettings, open_client

pytestmark = pytest.mark.trio

MiB = 1024 * 1024


@pytest.fixture
def moto_bucket(moto_server):
    client = boto3.client("s3", endpoint_url=moto_server.endpoint, aws_access_key_id="test",
                          aws_secret_access_key="test", region_name="us-east-1")
    name = "core-" + uuid.uuid4().hex[:12]
    client.create_bucket(Bucket=name)
    return client, name


@pytest.fixture
async def core(moto_server, moto_bucket, tmp_path):
    """(Filesystem, boto3 client, bucket) with a 5 MiB multipart threshold."""
    s3, bucket = moto_bucket
    settings = ClientSettings(bucket=bucket, endpoint_url=moto_server.endpoint, path_style=True,
                              static_keys=_keys(), retries=2, connect_timeout=2, read_timeout=10,
                              request_timeout=30)
    async with open_client(settings) as client:
        config = Config(defaults=Defaults(uid=1000, gid=1000), staging_dir=str(tmp_path),
                        multipart_size=5 * MiB, stat_ttl=0)
        yield Filesystem(client, config), s3, bucket


def _keys():
    from s3pyfs.credentials import StaticKeys
    return StaticKeys("test", "test")


async def write_file(fs, parent, name, data, mode=0o644):
    handle, node = await fs.create(parent, name, mode, os.O_WRONLY | os.O_CREAT, 1000, 1000)
    if data:
        await fs.write(handle.fh, 0, data)
    await fs.flush(handle.fh)
    await fs.release(handle.fh)
    return node


async def read_file(fs, ino):
    handle = await fs.open(ino, os.O_RDONLY)
    chunks, offset = [], 0
    while True:
        chunk = await fs.read(handle.fh, offset, 128 * 1024)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    await fs.release(handle.fh)
    return b"".join(chunks)


def body(s3, bucket, key):
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()


def keys(s3, bucket, prefix=""):
    out = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        out += [o["Key"] for o in page.get("Contents", [])]
    return sorted(out)


async def test_created_file_is_an_object_with_s3fs_headers(core):
    fs, s3, bucket = core
    before = time.time()
    await write_file(fs, ROOT_INODE, "hello.txt", b"hello world", mode=0o640)
    assert body(s3, bucket, "hello.txt") == b"hello world"
    meta = s3.head_object(Bucket=bucket, Key="hello.txt")["Metadata"]
    assert int(meta["mode"]) == stat.S_IFREG | 0o640
    assert meta["uid"] == "1000" and meta["gid"] == "1000"
    assert before - 1 <= float(meta["mtime"]) <= time.time() + 1


async def test_empty_created_file_exists_after_close(core):
    fs, s3, bucket = core
    handle, node = await fs.create(ROOT_INODE, "empty", 0o644, os.O_RDONLY | os.O_CREAT, 0, 0)
    assert "empty" not in keys(s3, bucket)          # not before close ...
    await fs.flush(handle.fh)
    await fs.release(handle.fh)
    assert body(s3, bucket, "empty") == b""        # ... but after it


async def test_random_writes_and_read_your_writes_on_two_handles(core):
    fs, s3, bucket = core
    original = os.urandom(3 * MiB + 123)
    s3.put_object(Bucket=bucket, Key="data.bin", Body=original)
    node = await fs.lookup(ROOT_INODE, "data.bin")
    writer = await fs.open(node.ino, os.O_RDWR)
    reader = await fs.open(node.ino, os.O_RDONLY)
    await fs.write(writer.fh, 1_500_000, b"MIDDLE")
    await fs.write(writer.fh, len(original) + 1000, b"TAIL")      # sparse extension
    expected = bytearray(original)
    expected[1_500_000:1_500_006] = b"MIDDLE"
    expected += b"\0" * 1000 + b"TAIL"
    assert await fs.read(reader.fh, 1_499_990, 30) == bytes(expected[1_499_990:1_500_020])
    assert await fs.read(reader.fh, len(original), 2000) == bytes(expected[len(original):])
    await fs.flush(writer.fh)
    assert body(s3, bucket, "data.bin") == bytes(expected)
    await fs.release(writer.fh)
    await fs.release(reader.fh)


async def test_truncate_down_and_up_persists(core):
    fs, s3, bucket = core
    node = await write_file(fs, ROOT_INODE, "t", b"abcdefghij")
    await fs.setattr(node.ino, size=4)
    assert body(s3, bucket, "t") == b"abcd"
    await fs.setattr(node.ino, size=8)
    assert body(s3, bucket, "t") == b"abcd\0\0\0\0"


async def test_append_to_large_object_uses_multipart_and_keeps_content(core):
    fs, s3, bucket = core
    original = os.urandom(6 * MiB)
    s3.put_object(Bucket=bucket, Key="big", Body=original)
    node = await fs.lookup(ROOT_INODE, "big")
    handle = await fs.open(node.ino, os.O_WRONLY | os.O_APPEND)
    await fs.write(handle.fh, len(original), b"appended")
    await fs.fsync(handle.fh)
    head = s3.head_object(Bucket=bucket, Key="big")
    assert head["ETag"].strip('"').endswith("-2")        # two parts of >= 5 MiB
    assert body(s3, bucket, "big") == original + b"appended"
    await fs.release(handle.fh)


async def test_mkdir_marker_rmdir_rules(core):
    fs, s3, bucket = core
    d = await fs.mkdir(ROOT_INODE, "dir", 0o750, 1000, 1000)
    meta = s3.head_object(Bucket=bucket, Key="dir/")["Metadata"]
    assert int(meta["mode"]) == stat.S_IFDIR | 0o750
    await write_file(fs, d.ino, "f", b"x")
    with pytest.raises(FSError) as info:
        await fs.rmdir(ROOT_INODE, "dir")
    assert info.value.errno == errno.ENOTEMPTY
    await fs.unlink(d.ino, "f")
    await fs.rmdir(ROOT_INODE, "dir")
    assert keys(s3, bucket) == []


async def test_readdir_pages_past_1000_and_merges_without_duplicates(core):
    fs, s3, bucket = core
    for i in range(1100):
        s3.put_object(Bucket=bucket, Key=f"many/f{i:04d}", Body=b"")
    s3.put_object(Bucket=bucket, Key="many/sub/", Body=b"")          # marker ...
    s3.put_object(Bucket=bucket, Key="many/sub/inner", Body=b"")     # ... and a child
    s3.put_object(Bucket=bucket, Key="many/implicit/x", Body=b"")    # no marker
    s3.put_object(Bucket=bucket, Key="many//bad", Body=b"")          # not a path
    s3.put_object(Bucket=bucket, Key="many/../escape", Body=b"")     # not a path
    many = await fs.lookup(ROOT_INODE, "many")
    handle = await fs.opendir(many.ino)
    names = [name for name, _ in await fs.readdir(handle.fh)]
    await fs.releasedir(handle.fh)
    assert len(names) == len(set(names)) == 1102
    assert {"sub", "implicit", "f0000", "f1099"} <= set(names)
    assert ".." not in names and "" not in names


async def test_objects_from_other_tools_get_sane_defaults(core):
    fs, s3, bucket = core
    s3.put_object(Bucket=bucket, Key="plain/file.txt", Body=b"abc")
    d = await fs.lookup(ROOT_INODE, "plain")
    f = await fs.lookup(d.ino, "file.txt")
    assert stat.S_IMODE(d.attrs.mode) == 0o755 and d.is_dir
    assert stat.S_IMODE(f.attrs.mode) == 0o644 and stat.S_ISREG(f.attrs.mode)
    assert f.attrs.uid == 1000 and f.attrs.size == 3
    last_modified = s3.head_object(Bucket=bucket, Key="plain/file.txt")["LastModified"].timestamp()
    assert abs(f.attrs.mtime_ns / 1e9 - last_modified) < 1


async def test_chmod_chown_utimens_persist_in_headers(core):
    fs, s3, bucket = core
    node = await write_file(fs, ROOT_INODE, "m", b"data")
    await fs.setattr(node.ino, mode=0o600, uid=42, gid=43, mtime_ns=1_600_000_000_500_000_000)
    meta = s3.head_object(Bucket=bucket, Key="m")["Metadata"]
    assert int(meta["mode"]) == stat.S_IFREG | 0o600
    assert (meta["uid"], meta["gid"]) == ("42", "43")
    assert meta["mtime"] == "1600000000.500000000"
    assert body(s3, bucket, "m") == b"data"


async def test_symlink_in_s3fs_format(core):
    fs, s3, bucket = core
    node = await fs.symlink(ROOT_INODE, "link", "target/file", 0, 0)
    assert body(s3, bucket, "link") == b"target/file"
    assert stat.S_ISLNK(int(s3.head_object(Bucket=bucket, Key="link")["Metadata"]["mode"]))
    fs.inodes.detach(ROOT_INODE, "link")    # forget it locally: read back from S3
    again = await fs.lookup(ROOT_INODE, "link")
    assert again.ino != node.ino
    assert await fs.readlink(again.ino) == "target/file"


async def test_xattrs_use_s3fs_encoding(core):
    fs, s3, bucket = core
    node = await write_file(fs, ROOT_INODE, "x", b"1")
    await fs.setxattr(node.ino, "user.color", b"blue\x00\xff")
    raw = s3.head_object(Bucket=bucket, Key="x")["Metadata"]["xattr"]
    decoded = json.loads(urllib.parse.unquote(raw))
    assert base64.b64decode(decoded["user.color"]) == b"blue\x00\xff"
    assert await fs.getxattr(node.ino, "user.color") == b"blue\x00\xff"
    with pytest.raises(FSError) as info:
        await fs.setxattr(node.ino, "trusted.x", b"1")
    assert info.value.errno == errno.ENOTSUP
    await fs.removexattr(node.ino, "user.color")
    assert "xattr" not in s3.head_object(Bucket=bucket, Key="x")["Metadata"]


async def test_rename_directory_with_many_children(core):
    fs, s3, bucket = core
    for i in range(1050):
        s3.put_object(Bucket=bucket, Key=f"src/d{i % 3}/f{i}", Body=str(i).encode())
    s3.put_object(Bucket=bucket, Key="src/", Body=b"")
    await fs.lookup(ROOT_INODE, "src")
    await fs.rename(ROOT_INODE, "src", ROOT_INODE, "dst")
    assert keys(s3, bucket, "src") == []
    moved = keys(s3, bucket, "dst/")
    assert len([k for k in moved if not k.endswith("/")]) == 1050
    assert body(s3, bucket, "dst/d2/f1049") == b"1049"


async def test_rename_posix_replacement_rules(core):
    fs, s3, bucket = core
    await write_file(fs, ROOT_INODE, "a", b"A")
    await write_file(fs, ROOT_INODE, "b", b"B")
    d = await fs.mkdir(ROOT_INODE, "d", 0o755, 0, 0)
    full = await fs.mkdir(ROOT_INODE, "full", 0o755, 0, 0)
    await write_file(fs, full.ino, "inside", b"i")
    with pytest.raises(FSError) as info:
        await fs.rename(ROOT_INODE, "a", ROOT_INODE, "b", RENAME_NOREPLACE)
    assert info.value.errno == errno.EEXIST
    with pytest.raises(FSError) as info:
        await fs.rename(ROOT_INODE, "a", ROOT_INODE, "d")
    assert info.value.errno == errno.EISDIR
    with pytest.raises(FSError) as info:
        await fs.rename(ROOT_INODE, "d", ROOT_INODE, "a")
    assert info.value.errno == errno.ENOTDIR
    with pytest.raises(FSError) as info:
        await fs.rename(ROOT_INODE, "d", ROOT_INODE, "full")
    assert info.value.errno == errno.ENOTEMPTY
    with pytest.raises(FSError) as info:
        await fs.rename(ROOT_INODE, "d", d.ino, "inner")
    assert info.value.errno == errno.EINVAL
    await fs.rename(ROOT_INODE, "a", ROOT_INODE, "b")          # replaces the file
    assert body(s3, bucket, "b") == b"A" and "a" not in keys(s3, bucket)


async def test_rename_of_unflushed_file_uploads_to_new_name(core):
    fs, s3, bucket = core
    handle, node = await fs.create(ROOT_INODE, "draft", 0o644, os.O_WRONLY | os.O_CREAT, 0, 0)
    await fs.write(handle.fh, 0, b"contents")
    await fs.rename(ROOT_INODE, "draft", ROOT_INODE, "final")
    await fs.release(handle.fh)
    assert body(s3, bucket, "final") == b"contents"
    assert "draft" not in keys(s3, bucket)


async def test_hard_links_refused_with_eperm(core):
    fs, _, _ = core
    node = await write_file(fs, ROOT_INODE, "f", b"")
    with pytest.raises(FSError) as info:
        await fs.link(node.ino, ROOT_INODE, "g")
    assert info.value.errno == errno.EPERM


async def test_mknod_fifo_stored_with_mode(core):
    fs, s3, bucket = core
    await fs.mknod(ROOT_INODE, "pipe", stat.S_IFIFO | 0o600, 0, 0, 0)
    assert stat.S_ISFIFO(int(s3.head_object(Bucket=bucket, Key="pipe")["Metadata"]["mode"]))


async def test_unlinked_open_file_stays_readable_and_is_not_uploaded(core):
    fs, s3, bucket = core
    handle, node = await fs.create(ROOT_INODE, "tmpfile", 0o600, os.O_RDWR | os.O_CREAT, 0, 0)
    await fs.write(handle.fh, 0, b"scratch")
    await fs.unlink(ROOT_INODE, "tmpfile")
    assert await fs.read(handle.fh, 0, 100) == b"scratch"
    await fs.flush(handle.fh)
    await fs.release(handle.fh)
    assert "tmpfile" not in keys(s3, bucket)


async def test_statfs_reports_large_free_space(core):
    fs, _, _ = core
    info = fs.statfs()
    assert info["f_bavail"] * info["f_frsize"] >= 2**40


async def test_dead_endpoint_fails_with_eio_in_bounded_time(tmp_path):
    with socket_on_free_port() as port:
        pass   # closed again: nothing listens there now
    settings = ClientSettings(bucket="nobucket", endpoint_url=f"http://127.0.0.1:{port}", path_style=True,
                              static_keys=_keys(), retries=2, connect_timeout=1, read_timeout=1,
                              request_timeout=5)
    async with open_client(settings) as client:
        fs = Filesystem(client, Config(defaults=Defaults(0, 0), staging_dir=str(tmp_path)))
        started = trio.current_time()
        with pytest.raises(FSError) as info:
            await fs.lookup(ROOT_INODE, "anything")
        assert info.value.errno == errno.EIO
        assert trio.current_time() - started < 10


def socket_on_free_port():
    import contextlib
    import socket

    @contextlib.contextmanager
    def bound():
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        try:
            yield sock.getsockname()[1]
        finally:
            sock.close()
    return bound()


async def test_rename_of_object_over_copy_limit_uses_multipart_copy(core, monkeypatch):
    from s3pyfs import s3client
    monkeypatch.setattr(s3client, "MAX_SINGLE_COPY", 5 * MiB)      # stands in for 5 GiB
    monkeypatch.setattr(s3client, "COPY_PART_SIZE", 5 * MiB)
    fs, s3, bucket = core
    data = os.urandom(11 * MiB)
    s3.put_object(Bucket=bucket, Key="huge", Body=data, Metadata={"mode": str(stat.S_IFREG | 0o600)})
    await fs.lookup(ROOT_INODE, "huge")
    await fs.rename(ROOT_INODE, "huge", ROOT_INODE, "moved")
    head = s3.head_object(Bucket=bucket, Key="moved")
    assert head["ETag"].strip('"').endswith("-3")
    assert head["Metadata"]["mode"] == str(stat.S_IFREG | 0o600)
    assert body(s3, bucket, "moved") == data
    assert "huge" not in keys(s3, bucket)


def _heads() -> int:
    from s3pyfs import metrics
    return sum(n for (op, _outcome), n in metrics.counters.s3_requests.items() if op == "HEAD")


async def test_relisting_revalidates_unchanged_files_without_heads_and_sees_changes(
        moto_server, moto_bucket, tmp_path):
    """`ls -l` again after the stat TTL: files the new listing shows unchanged keep their
    headers without one HEAD each; a chmod or a rewrite by another client is seen."""
    s3, bucket = moto_bucket
    for i in range(20):
        s3.put_object(Bucket=bucket, Key=f"d/f{i:02d}", Body=b"x" * i,
                      Metadata={"mode": str(stat.S_IFREG | 0o640), "uid": "7", "gid": "8"})
    settings = ClientSettings(bucket=bucket, endpoint_url=moto_server.endpoint, path_style=True,
                              static_keys=_keys(), retries=2, request_timeout=30)
    async with open_client(settings) as client:
        fs = Filesystem(client, Config(defaults=Defaults(uid=1000, gid=1000),
                                       staging_dir=str(tmp_path), stat_ttl=0.5))

        async def ls_l(directory) -> dict:
            handle = await fs.opendir(directory.ino)
            entries = await fs.readdir(handle.fh)
            result = {}
            for name, _node in entries:
                node = await fs.lookup(directory.ino, name)      # what the kernel does per stat
                result[name] = (stat.S_IMODE(node.attrs.mode), node.attrs.uid, node.attrs.size)
            await fs.releasedir(handle.fh)
            return result

        await trio.sleep(2.1)                 # Last-Modified settled: the version can be pinned
        d = await fs.lookup(ROOT_INODE, "d")
        first = await ls_l(d)
        assert first["f03"] == (0o640, 7, 3) and len(first) == 20
        await trio.sleep(0.6)                 # every entry is stale now
        before = _heads()
        assert await ls_l(d) == first
        assert _heads() == before             # one LIST revalidated all 20

        s3.copy_object(Bucket=bucket, Key="d/f03", CopySource={"Bucket": bucket, "Key": "d/f03"},
                       Metadata={"mode": str(stat.S_IFREG | 0o600), "uid": "9", "gid": "8"},
                       MetadataDirective="REPLACE")          # chmod + chown by another client
        s3.put_object(Bucket=bucket, Key="d/f04", Body=b"rewritten")
        await trio.sleep(0.6)
        third = await ls_l(d)
        assert third["f03"] == (0o600, 9, 3)
        assert third["f04"] == (0o644, 1000, 9)
        assert {k: v for k, v in third.items() if k not in ("f03", "f04")} == \
            {k: v for k, v in first.items() if k not in ("f03", "f04")}
