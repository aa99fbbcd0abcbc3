"""Mounted through FUSE against SeaweedFS on loopback: what a user of the mount sees.

Every test checks the result twice: through the mount (os calls, real programs) and
out of band with a plain boto3 client (keys, bodies, x-amz-meta-* headers).
"""

from __future__ import annotations

import base64
import errno
import json
import os
import stat
import subprocess
import time
import urllib.parse

import pytest
import support

pytestmark = pytest.mark.mounted

MiB = 1024 * 1024


def obj_body(s3, bucket, key):
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()


def obj_meta(s3, bucket, key):
    return s3.head_object(Bucket=bucket, Key=key)["Metadata"]


def all_keys(s3, bucket, prefix=""):
    out = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        out += [o["Key"] for o in page.get("Contents", [])]
    return sorted(out)


def test_write_read_and_object_with_headers(s3, bucket, mount):
    m = mount(bucket)
    path = m.path / "hello.txt"
    path.write_bytes(b"hello through fuse\n")
    os.chmod(path, 0o640)
    assert path.read_bytes() == b"hello through fuse\n"
    assert obj_body(s3, bucket, "hello.txt") == b"hello through fuse\n"
    meta = obj_meta(s3, bucket, "hello.txt")
    assert int(meta["mode"]) == stat.S_IFREG | 0o640
    assert meta["uid"] == str(os.getuid())


def test_prefix_mount_maps_keys_one_to_one(s3, bucket, mount):
    s3.put_object(Bucket=bucket, Key="team/a/b/c.txt", Body=b"deep")
    m = mount(bucket, prefix="team")
    assert (m.path / "a" / "b" / "c.txt").read_bytes() == b"deep"
    (m.path / "a" / "new.txt").write_text("new")
    assert obj_body(s3, bucket, "team/a/new.txt") == b"new"


def test_directories_markers_implicit_and_rmdir(s3, bucket, mount):
    s3.put_object(Bucket=bucket, Key="implicit/child", Body=b"x")
    m = mount(bucket)
    os.mkdir(m.path / "made", 0o750)
    assert "made/" in all_keys(s3, bucket)
    assert stat.S_ISDIR(os.stat(m.path / "implicit").st_mode)
    assert stat.S_IMODE(os.stat(m.path / "implicit").st_mode) == 0o755   # never d---------
    with pytest.raises(OSError) as info:
        os.rmdir(m.path / "implicit")
    assert info.value.errno == errno.ENOTEMPTY
    os.rmdir(m.path / "made")
    assert not (m.path / "made").exists()
    assert "made/" not in all_keys(s3, bucket)


def test_listing_past_1000_entries_without_duplicates(s3, bucket, mount):
    for i in range(1050):
        s3.put_object(Bucket=bucket, Key=f"big/f{i:05d}", Body=b"")
    s3.put_object(Bucket=bucket, Key="big/sub/x", Body=b"")
    m = mount(bucket)
    names = os.listdir(m.path / "big")
    assert len(names) == len(set(names)) == 1051


def test_random_writes_append_sparse_truncate(s3, bucket, mount):
    m = mount(bucket)
    path = m.path / "rw.bin"
    reference = bytearray(os.urandom(3 * MiB))
    path.write_bytes(reference)
    with open(path, "r+b") as f:
        for offset in (5, 1_048_570, 2_500_000):
            f.seek(offset)
            f.write(b"PATCH")
            reference[offset:offset + 5] = b"PATCH"
    with open(path, "ab") as f:
        f.write(b"APPENDED")
    reference += b"APPENDED"
    with open(path, "r+b") as f:
        f.seek(len(reference) + 4096)
        f.write(b"SPARSE")
    reference += b"\0" * 4096 + b"SPARSE"
    assert path.read_bytes() == bytes(reference)
    assert obj_body(s3, bucket, "rw.bin") == bytes(reference)
    os.truncate(path, 100)
    assert obj_body(s3, bucket, "rw.bin") == bytes(reference[:100])
    os.truncate(path, 200)
    assert path.read_bytes() == bytes(reference[:100]) + b"\0" * 100
    assert obj_body(s3, bucket, "rw.bin") == bytes(reference[:100]) + b"\0" * 100


def test_read_your_writes_on_another_handle_before_close(bucket, mount):
    m = mount(bucket)
    path = m.path / "shared.txt"
    path.write_bytes(b"0123456789")
    writer = os.open(path, os.O_WRONLY)
    reader = os.open(path, os.O_RDONLY)
    try:
        os.pwrite(writer, b"AB", 3)
        assert os.pread(reader, 10, 0) == b"012AB56789"
    finally:
        os.close(writer)
        os.close(reader)


def test_created_files_without_data_exist_as_empty_objects(s3, bucket, mount):
    m = mount(bucket)
    os.close(os.open(m.path / "creat_rdonly", os.O_CREAT | os.O_RDONLY, 0o644))
    subprocess.run(["touch", str(m.path / "touched")], check=True)
    os.mknod(m.path / "fifo", stat.S_IFIFO | 0o600)
    for key in ("creat_rdonly", "touched", "fifo"):
        assert obj_body(s3, bucket, key) == b""
    assert stat.S_ISFIFO(int(obj_meta(s3, bucket, "fifo")["mode"]))
    assert stat.S_ISFIFO(os.stat(m.path / "fifo").st_mode)


def test_fsync_means_in_s3(s3, bucket, mount):
    m = mount(bucket)
    fd = os.open(m.path / "synced", os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        os.write(fd, b"durable")
        os.fsync(fd)
        assert obj_body(s3, bucket, "synced") == b"durable"     # before close
    finally:
        os.close(fd)


def test_large_file_goes_up_as_multipart(s3, bucket, mount):
    m = mount(bucket, "multipart_size=5")
    data = os.urandom(12 * MiB + 7)
    (m.path / "large").write_bytes(data)
    head = s3.head_object(Bucket=bucket, Key="large")
    assert head["ContentLength"] == len(data)
    assert "-" in head["ETag"]
    assert obj_body(s3, bucket, "large") == data
    assert (m.path / "large").read_bytes() == data


def test_chmod_chown_utime_persist_and_directories_do_not_fail(s3, bucket, mount):
    s3.put_object(Bucket=bucket, Key="implicitdir/f", Body=b"")
    m = mount(bucket)
    path = m.path / "meta.txt"
    path.write_text("x")
    os.chmod(path, 0o600)
    os.chown(path, 1234, 5678)
    os.utime(path, ns=(1_500_000_000_000_000_000, 1_600_000_000_250_000_000))
    meta = obj_meta(s3, bucket, "meta.txt")
    assert int(meta["mode"]) == stat.S_IFREG | 0o600
    assert (meta["uid"], meta["gid"]) == ("1234", "5678")
    assert meta["mtime"] == "1600000000.250000000"
    assert os.stat(path).st_mtime_ns == 1_600_000_000_250_000_000
    # SeaweedFS drops metadata on dir/ keys: these must still succeed (s3fs fails with ENOENT)
    os.mkdir(m.path / "d")
    os.chmod(m.path / "d", 0o700)
    os.utime(m.path / "d", (1_000_000_000, 1_000_000_000))
    os.chown(m.path / "d", 1234, 5678)
    st = os.stat(m.path / "d")
    assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_mtime == 1_000_000_000 and st.st_uid == 1234
    os.chmod(m.path / "implicitdir", 0o711)          # no marker yet: one is created
    assert stat.S_IMODE(os.stat(m.path / "implicitdir").st_mode) == 0o711


def test_rename_file_and_directory(s3, bucket, mount):
    m = mount(bucket)
    (m.path / "a.txt").write_text("A")
    os.rename(m.path / "a.txt", m.path / "b.txt")
    assert (m.path / "b.txt").read_text() == "A"
    assert "a.txt" not in all_keys(s3, bucket) and obj_body(s3, bucket, "b.txt") == b"A"
    tree = m.path / "tree"
    for i in range(120):
        sub = tree / f"d{i % 4}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"f{i}").write_text(str(i))
    os.rename(tree, m.path / "moved")
    assert not tree.exists()
    assert all_keys(s3, bucket, "tree") == []
    assert sorted(p.name for p in (m.path / "moved").iterdir()) == ["d0", "d1", "d2", "d3"]
    assert (m.path / "moved" / "d3" / "f119").read_text() == "119"
    assert obj_body(s3, bucket, "moved/d3/f119") == b"119"


def test_rename_replaces_per_posix(bucket, mount):
    m = mount(bucket)
    (m.path / "src").write_text("new")
    (m.path / "dst").write_text("old")
    os.rename(m.path / "src", m.path / "dst")
    assert (m.path / "dst").read_text() == "new"
    os.mkdir(m.path / "dir")
    (m.path / "file").write_text("f")
    with pytest.raises(OSError) as info:
        os.rename(m.path / "file", m.path / "dir")
    assert info.value.errno == errno.EISDIR
    os.mkdir(m.path / "full")
    (m.path / "full" / "x").write_text("x")
    with pytest.raises(OSError) as info:
        os.rename(m.path / "dir", m.path / "full")
    assert info.value.errno in (errno.ENOTEMPTY, errno.EEXIST)


def test_symlink_in_s3fs_format_and_hard_link_refused(s3, bucket, mount):
    m = mount(bucket)
    (m.path / "target").write_text("t")
    os.symlink("target", m.path / "link")
    assert os.readlink(m.path / "link") == "target"
    assert (m.path / "link").read_text() == "t"
    assert obj_body(s3, bucket, "link") == b"target"
    assert stat.S_ISLNK(int(obj_meta(s3, bucket, "link")["mode"]))
    with pytest.raises(OSError) as info:
        os.link(m.path / "target", m.path / "hard")
    assert info.value.errno == errno.EPERM


def test_user_xattrs_persist_in_s3fs_encoding(s3, bucket, mount):
    m = mount(bucket, "use_xattr")
    path = m.path / "x"
    path.write_text("x")
    os.setxattr(path, "user.tag", b"v\x00\xfe")
    assert os.getxattr(path, "user.tag") == b"v\x00\xfe"
    assert "user.tag" in os.listxattr(path)
    raw = obj_meta(s3, bucket, "x")["xattr"]
    assert base64.b64decode(json.loads(urllib.parse.unquote(raw))["user.tag"]) == b"v\x00\xfe"
    os.removexattr(path, "user.tag")
    with pytest.raises(OSError) as info:
        os.getxattr(path, "user.tag")
    assert info.value.errno == errno.ENODATA
    # XATTR_CREATE / XATTR_REPLACE (checked by pyfuse3 before s3pyfs sees the call)
    os.setxattr(path, "user.once", b"1", os.XATTR_CREATE)
    with pytest.raises(OSError) as info:
        os.setxattr(path, "user.once", b"2", os.XATTR_CREATE)
    assert info.value.errno == errno.EEXIST
    with pytest.raises(OSError) as info:
        os.setxattr(path, "user.never", b"2", os.XATTR_REPLACE)
    assert info.value.errno == errno.ENODATA
    os.setxattr(path, "user.once", b"3", os.XATTR_REPLACE)
    assert os.getxattr(path, "user.once") == b"3"


def test_statfs_is_large_and_stable(bucket, mount):
    m = mount(bucket)
    first, second = os.statvfs(m.path), os.statvfs(m.path)
    assert first.f_bavail * first.f_frsize >= 2**40
    assert first.f_bavail == second.f_bavail


def test_awkward_names(s3, bucket, mount):
    m = mount(bucket)
    names = ["with space", "per%cent", "plus+sign", "ünïcødé-日本", "x" * 255]   # SeaweedFS: <= 255 bytes
    for name in names:
        (m.path / name).write_text(name)
    for name in names:
        assert (m.path / name).read_text() == name
        assert obj_body(s3, bucket, name) == name.encode()
    assert set(names) <= set(os.listdir(m.path))
    # longer than the store takes: refused when named (lookup, then create), before any data is
    # accepted, so no close fails for the name and no kernel entry of it is left to invalidate
    for too_long in ("y" * 256, "y" * 300):
        for attempt in (lambda: os.stat(m.path / too_long),
                        lambda: os.open(m.path / too_long, os.O_CREAT | os.O_WRONLY, 0o644),
                        lambda: os.mkdir(m.path / too_long),
                        lambda: os.rename(m.path / names[0], m.path / too_long),
                        lambda: os.stat(m.path / too_long)):       # nothing exists after the tries
            with pytest.raises(OSError) as info:
                attempt()
            assert info.value.errno == errno.ENAMETOOLONG
        assert too_long not in os.listdir(m.path)
    assert os.statvfs(m.path).f_namemax == 255
    assert {o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]} == set(names)


def test_objects_written_by_s3fs_and_other_tools(s3, bucket, mount):
    s3.put_object(Bucket=bucket, Key="s3fs-file", Body=b"run",
                  Metadata={"mode": str(stat.S_IFREG | 0o750), "uid": "33", "gid": "44", "mtime": "1400000000"})
    s3.put_object(Bucket=bucket, Key="s3fs-link", Body=b"s3fs-file", Metadata={"mode": str(stat.S_IFLNK | 0o777)})
    s3.put_object(Bucket=bucket, Key="foreign.csv", Body=b"a,b\n")
    m = mount(bucket)
    st = os.stat(m.path / "s3fs-file")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime) == (0o750, 33, 44, 1_400_000_000)
    assert os.readlink(m.path / "s3fs-link") == "s3fs-file"
    st = os.stat(m.path / "foreign.csv")
    assert stat.S_IMODE(st.st_mode) == 0o644 and st.st_uid == os.getuid()


def test_uid_gid_umask_options_apply_to_every_file(s3, bucket, mount):
    s3.put_object(Bucket=bucket, Key="f", Body=b"", Metadata={"mode": str(stat.S_IFREG | 0o666), "uid": "1"})
    m = mount(bucket, "uid=4321,gid=8765,umask=027")
    st = os.stat(m.path / "f")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (4321, 8765, 0o640)


def test_read_only_mount_refuses_writes(s3, bucket, mount):
    s3.put_object(Bucket=bucket, Key="f", Body=b"data")
    m = mount(bucket, "ro")
    assert (m.path / "f").read_bytes() == b"data"
    with pytest.raises(OSError) as info:
        (m.path / "g").write_text("no")
    assert info.value.errno == errno.EROFS


# ---------------------------------------------------------------------------- real programs
def run(*cmd, cwd=None):
    return subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True, timeout=300)


def test_git_init_add_commit_status(bucket, mount):
    m = mount(bucket)
    repo = m.path / "repo"
    run("git", "init", "-q", str(repo))
    (repo / "README").write_text("hello\n")
    run("git", "add", "README", cwd=repo)
    run("git", "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "first", cwd=repo)
    assert run("git", "status", "--porcelain", cwd=repo).stdout == ""
    assert "first" in run("git", "log", "--oneline", cwd=repo).stdout
    assert run("git", "fsck", "--full", cwd=repo).returncode == 0


@pytest.fixture(scope="module")
def source_tree(tmp_path_factory):
    """A small real tree: Python's own json and email packages (text, nested dirs)."""
    import email
    import json as json_mod
    root = tmp_path_factory.mktemp("src")
    for pkg in (json_mod, email):
        src = os.path.dirname(pkg.__file__)
        run("cp", "-a", src, str(root / os.path.basename(src)))
    for cache in root.rglob("__pycache__"):
        run("rm", "-rf", str(cache))
    os.symlink("json/__init__.py", root / "link-to-json")
    return root


def test_tar_extract_then_diff(bucket, mount, source_tree, tmp_path):
    m = mount(bucket)
    archive = tmp_path / "src.tar"
    run("tar", "-C", str(source_tree), "-cf", str(archive), ".")
    (m.path / "x").mkdir()
    run("tar", "-C", str(m.path / "x"), "-xf", str(archive))
    run("diff", "-r", "--no-dereference", str(source_tree), str(m.path / "x"))


def test_rsync_then_nothing_to_do(bucket, mount, source_tree):
    m = mount(bucket)
    run("rsync", "-a", f"{source_tree}/", str(m.path / "r"))
    changes = run("rsync", "-anc", "--itemize-changes", f"{source_tree}/", str(m.path / "r")).stdout
    assert changes.strip() == ""


def test_sqlite_database(bucket, mount):
    import sqlite3
    m = mount(bucket)
    db = sqlite3.connect(m.path / "app.db")
    db.execute("create table t (id integer primary key, v text)")
    db.executemany("insert into t (v) values (?)", [(f"row {i}",) for i in range(2000)])
    db.commit()
    assert db.execute("pragma integrity_check").fetchone() == ("ok",)
    db.close()
    db = sqlite3.connect(m.path / "app.db")
    assert db.execute("select count(*) from t").fetchone() == (2000,)
    db.close()


def test_remount_sees_everything(s3, bucket, mount):
    m = mount(bucket)
    (m.path / "d").mkdir()
    (m.path / "d" / "f").write_bytes(b"persist")
    os.symlink("d/f", m.path / "l")
    m.unmount()
    again = mount(bucket)
    assert (again.path / "d" / "f").read_bytes() == b"persist"
    assert os.readlink(again.path / "l") == "d/f"


def test_names_created_elsewhere_appear_after_the_negative_ttl(s3, bucket, mount):
    m = mount(bucket, "stat_cache_expire=5,negative_cache_expire=1")
    assert not (m.path / "late").exists()          # cached as missing (listing of the root)
    s3.put_object(Bucket=bucket, Key="late", Body=b"arrived")
    deadline = time.monotonic() + 5
    while not (m.path / "late").exists():
        assert time.monotonic() < deadline, "a name created by another client stayed invisible"
        time.sleep(0.2)
    assert (m.path / "late").read_bytes() == b"arrived"


def test_large_sequential_write_streams_parts_before_close(s3, bucket, mount):
    m = mount(bucket, "multipart_size=5")
    part = 5 * MiB
    data = bytearray(os.urandom(7 * part + 12345))
    with open(m.path / "stream.bin", "wb") as f:
        f.write(data[:6 * part])
        f.flush()
        deadline = time.monotonic() + 20           # parts go up while the file is open
        while not s3.list_multipart_uploads(Bucket=bucket).get("Uploads"):
            assert time.monotonic() < deadline, "no multipart upload started before close"
            time.sleep(0.1)
        f.seek(part + 100)                         # rewrite inside a part already sent
        f.write(b"REWRITTEN")
        data[part + 100:part + 109] = b"REWRITTEN"
        f.seek(6 * part)
        f.write(data[6 * part:])
    assert obj_body(s3, bucket, "stream.bin") == bytes(data)
    head = s3.head_object(Bucket=bucket, Key="stream.bin")
    assert head["ETag"].strip('"').endswith("-8")
    assert not s3.list_multipart_uploads(Bucket=bucket).get("Uploads")
    assert int(head["Metadata"]["mode"]) & 0o777 == 0o644


def test_streamed_file_truncated_or_chmodded_before_close(s3, bucket, mount):
    m = mount(bucket, "multipart_size=5")
    data = os.urandom(16 * MiB)
    with open(m.path / "t.bin", "wb") as f:
        f.write(data)
        f.flush()
        os.fchmod(f.fileno(), 0o600)
        f.truncate(11 * MiB)
    assert obj_body(s3, bucket, "t.bin") == data[:11 * MiB]
    assert int(s3.head_object(Bucket=bucket, Key="t.bin")["Metadata"]["mode"]) & 0o777 == 0o600
    assert not s3.list_multipart_uploads(Bucket=bucket).get("Uploads")


def test_listing_shows_real_headers_of_large_and_small_objects(s3, bucket, mount):
    for i in range(40):
        s3.put_object(Bucket=bucket, Key=f"d/big{i}", Body=b"x" * 5000,
                      Metadata={"mode": str(stat.S_IFREG | 0o600), "uid": "77"})
    s3.put_object(Bucket=bucket, Key="d/link", Body=b"big0", Metadata={"mode": str(stat.S_IFLNK | 0o777)})
    m = mount(bucket)
    listing = run("ls", "-ln", str(m.path / "d")).stdout.splitlines()[1:]
    modes = {line.split()[-1]: (line.split()[0], line.split()[2]) for line in listing if "->" not in line}
    assert len(modes) == 40 and set(modes.values()) == {("-rw-------", "77")}
    assert any(line.startswith("l") and line.endswith("link -> big0") for line in listing)
    found = run("find", str(m.path / "d"), "-type", "l").stdout.split()
    assert found == [str(m.path / "d" / "link")]
    assert len(run("find", str(m.path / "d"), "-type", "f").stdout.split()) == 40


def test_find_and_du_over_a_tree_written_elsewhere(s3, bucket, mount):
    expected = set()
    for d in range(6):
        for f in range(15):
            key = f"tree/d{d}/sub{f % 3}/f{f}.txt"
            s3.put_object(Bucket=bucket, Key=key, Body=b"z" * (f * 700))
            expected.add(key)
    m = mount(bucket)
    found = run("find", str(m.path / "tree"), "-type", "f").stdout.split()
    assert {os.path.relpath(p, m.path) for p in found} == expected
    dirs = run("find", str(m.path / "tree"), "-type", "d").stdout.split()
    assert len(dirs) == 1 + 6 + 18
    total = int(run("du", "-s", "-B1", "--apparent-size", str(m.path / "tree")).stdout.split()[0])
    assert total == sum(f * 700 for f in range(15)) * 6


def test_streamed_file_of_whole_parts_sends_each_part_once(s3, bucket, mount, proxy):
    m = mount(bucket, "multipart_size=5", f"url={proxy.url}")
    data = os.urandom(20 * MiB)                     # exactly four 5 MiB parts
    before = proxy.bytes_up
    (m.path / "whole.bin").write_bytes(data)
    assert obj_body(s3, bucket, "whole.bin") == data
    assert proxy.bytes_up - before < len(data) + MiB    # no part sent twice


def test_read_ahead_of_the_mount_is_raised_for_sequential_readers(bucket, mount):
    """The kernel's FUSE default (128 KiB) splits sequential reads into small requests."""
    def read_ahead(m):
        device = os.stat(m.path).st_dev
        path = f"/sys/class/bdi/{os.major(device)}:{os.minor(device)}/read_ahead_kb"
        return int(open(path).read())
    default, custom = mount(bucket), mount(bucket, "read_ahead_kb=4096")
    assert support.wait_until(lambda: read_ahead(default) == 1024, timeout=10), read_ahead(default)
    assert support.wait_until(lambda: read_ahead(custom) == 4096, timeout=10), read_ahead(custom)
