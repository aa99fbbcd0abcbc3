"""Name limits, link counts and ctime, seen through a real mount (SeaweedFS behind it).

SeaweedFS keeps at most 255 bytes per path component and about 1024 bytes per key
(it answers KeyTooLongError beyond).  A name the mount cannot store must fail
with ENAMETOOLONG when it is named (lookup, create, mkdir, symlink, mknod, link,
rename), before any data is accepted; data the store still refuses at close goes
to lost+found, never away.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import time

import pytest


def keys(s3, bucket) -> set[str]:
    return {o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])}


def errno_of(call, *args) -> int:
    with pytest.raises(OSError) as info:
        call(*args)
    return info.value.errno


def refused_everywhere(base, name: str, existing_file, existing_dir) -> None:
    """Every way of naming `name` in `base` answers ENAMETOOLONG and makes nothing."""
    path = base / name
    assert errno_of(os.stat, path) == errno.ENAMETOOLONG
    assert errno_of(os.lstat, path) == errno.ENAMETOOLONG
    assert errno_of(os.open, path, os.O_CREAT | os.O_WRONLY, 0o644) == errno.ENAMETOOLONG
    assert errno_of(os.mkdir, path) == errno.ENAMETOOLONG
    assert errno_of(os.symlink, "target", path) == errno.ENAMETOOLONG
    assert errno_of(os.mkfifo, path) == errno.ENAMETOOLONG
    assert errno_of(os.link, existing_file, path) == errno.ENAMETOOLONG
    assert errno_of(os.rename, existing_file, path) == errno.ENAMETOOLONG
    assert errno_of(os.rename, existing_dir, path) == errno.ENAMETOOLONG
    assert errno_of(os.stat, path) == errno.ENAMETOOLONG        # still nothing there
    assert name not in os.listdir(base)


def test_a_too_long_name_is_refused_wherever_it_is_named(s3, bucket, mount):
    m = mount(bucket)
    (m.path / "kept").write_bytes(b"kept")
    os.mkdir(m.path / "dir")
    longest = "n" * 255
    (m.path / longest).write_bytes(b"fits")
    assert (m.path / longest).read_bytes() == b"fits"
    for size in (256, 300, 1024):
        refused_everywhere(m.path, "y" * size, m.path / "kept", m.path / "dir")
    # a lookup past the limit is not ENOENT, even for multi-byte characters (bytes count)
    refused_everywhere(m.path / "dir", "é" * 128, m.path / "kept", m.path / "dir")
    assert os.statvfs(m.path).f_namemax == 255
    assert (m.path / "kept").read_bytes() == b"kept"
    assert keys(s3, bucket) == {"kept", "dir/", longest}


def test_a_key_longer_than_key_max_is_refused_in_deep_directories(s3, bucket, mount):
    m = mount(bucket)
    deep = m.path
    for level in range(4):                          # 4 levels of 200 bytes: 803 bytes of key
        deep = deep / (str(level) * 200)
        os.mkdir(deep)
    (m.path / "kept").write_bytes(b"kept")
    os.mkdir(m.path / "other")
    # a key plus the '/' a directory marker adds must fit in 1024 bytes
    (deep / ("f" * 219)).write_bytes(b"deepest")    # key of 1023 bytes
    assert (deep / ("f" * 219)).read_bytes() == b"deepest"
    refused_everywhere(deep, "g" * 220, m.path / "kept", m.path / "other")
    stored = keys(s3, bucket)
    assert max(len(k.encode()) for k in stored) == 1023
    assert not [k for k in stored if "g" * 220 in k]


def test_key_max_option_counts_the_prefix_and_bounds_directory_renames(s3, bucket, mount):
    m = mount(bucket, "key_max=300", prefix="pre")     # keys start with "pre/"
    # statfs: the longest name the mount root takes (4 bytes of prefix, 1 of a marker's '/')
    assert os.statvfs(m.path).f_namemax == 255
    os.makedirs(m.path / "a" / "b")
    inner = "i" * 200
    (m.path / "a" / "b" / inner).write_bytes(b"inner")     # pre/a/b/<200>: 208 bytes
    (m.path / "kept").write_bytes(b"kept")
    # renaming a/ to a longer name would move that file to a key past key_max: refused whole
    longer = "a" * 100                                      # pre/<100>/b/<200>: 307 bytes
    assert errno_of(os.rename, m.path / "a", m.path / longer) == errno.ENAMETOOLONG
    assert (m.path / "a" / "b" / inner).read_bytes() == b"inner"
    assert not (m.path / longer).exists()
    assert keys(s3, bucket) == {"pre/a/", "pre/a/b/", f"pre/a/b/{inner}", "pre/kept"}
    os.rename(m.path / "a", m.path / ("a" * 90))            # pre/<90>/b/<200>: 297 bytes
    assert (m.path / ("a" * 90) / "b" / inner).read_bytes() == b"inner"
    # a new name is measured with the whole key: 4 + 90 + 1 + 1 + 1 + name + 1 <= 300
    fits, too_long = "x" * 202, "x" * 203
    (m.path / ("a" * 90) / "b" / fits).write_bytes(b"fits")
    assert errno_of(os.open, m.path / ("a" * 90) / "b" / too_long, os.O_CREAT | os.O_WRONLY) == errno.ENAMETOOLONG


def test_data_the_store_refuses_at_close_goes_to_lost_and_found(s3, bucket, mount, tmp_path):
    stage = tmp_path / "stage"
    stage.mkdir()
    # name_max above what SeaweedFS keeps (255): the store refuses the key at upload
    m = mount(bucket, "name_max=300", f"tmpdir={stage}")
    name = "e" * 280
    path = m.path / name
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o644)
    assert os.write(fd, b"hello") == 5
    assert errno_of(os.close, fd) == errno.ENAMETOOLONG
    # right after close answered, the name is gone from the kernel's cache too
    assert errno_of(os.stat, path) == errno.ENOENT
    assert name not in os.listdir(m.path)
    assert keys(s3, bucket) == set()
    records = sorted(stage.rglob("lost+found/*/record.json"))
    assert len(records) == 1, records
    record = json.loads(records[0].read_text())
    assert record["key"] == name and "refuses" in record["reason"]
    assert (records[0].parent / "data").read_bytes() == b"hello"
    assert f"not uploading {name}" in m.log_text()
    assert m.unmount() == 0                     # nothing left dirty: the data is not "lost"


def test_link_counts(bucket, mount):
    m = mount(bucket)
    os.makedirs(m.path / "top" / "sub" / "leaf")
    (m.path / "top" / "file").write_bytes(b"x")
    (m.path / "top" / "sub" / "leaf" / "deep").write_bytes(b"y")
    # directories: 1 = "unknown" (as btrfs), never a count that could be wrong
    for directory in (m.path, m.path / "top", m.path / "top" / "sub", m.path / "top" / "sub" / "leaf"):
        assert os.stat(directory).st_nlink == 1, directory
    assert os.stat(m.path / "top" / "file").st_nlink == 1
    found = subprocess.run(["find", str(m.path), "-type", "f"], check=True, capture_output=True, text=True)
    assert sorted(found.stdout.split()) == sorted([str(m.path / "top" / "file"),
                                                   str(m.path / "top" / "sub" / "leaf" / "deep")])
    # an unlinked file still open has no name left: st_nlink 0
    fd = os.open(m.path / "top" / "file", os.O_RDWR)
    try:
        os.unlink(m.path / "top" / "file")
        st = os.fstat(fd)
        assert st.st_nlink == 0 and stat.S_ISREG(st.st_mode)
    finally:
        os.close(fd)
    # a directory removed while open: 0 as well
    fd = os.open(m.path / "top" / "sub" / "leaf", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.unlink(m.path / "top" / "sub" / "leaf" / "deep")
        os.rmdir(m.path / "top" / "sub" / "leaf")
        assert os.fstat(fd).st_nlink == 0
    finally:
        os.close(fd)


def test_chown_and_chmod_to_the_same_values_update_ctime(s3, bucket, mount):
    m = mount(bucket)
    path = m.path / "f"
    path.write_bytes(b"data")
    os.mkdir(m.path / "d")
    for target in (path, m.path / "d"):
        before = os.stat(target)
        time.sleep(1.1)
        os.chown(target, before.st_uid, before.st_gid)
        after_chown = os.stat(target)
        assert after_chown.st_ctime_ns > before.st_ctime_ns, target
        assert (after_chown.st_uid, after_chown.st_gid, after_chown.st_mode) == \
            (before.st_uid, before.st_gid, before.st_mode)
        time.sleep(1.1)
        os.chmod(target, stat.S_IMODE(before.st_mode))
        after_chmod = os.stat(target)
        assert after_chmod.st_ctime_ns > after_chown.st_ctime_ns, target
    # stored with the file, so another mount (or this one, later) sees it too
    stored = float(s3.head_object(Bucket=bucket, Key="f")["Metadata"]["ctime"])
    assert stored * 1e9 >= os.stat(path).st_ctime_ns - 1e6
