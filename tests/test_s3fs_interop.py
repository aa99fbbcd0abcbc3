"""s3pyfs and s3fs-fuse on the same bucket: each reads what the other wrote.

s3fs-fuse (Debian package `s3fs`) is mounted for real next to s3pyfs; both talk
to the same SeaweedFS bucket.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess

import pytest

pytestmark = pytest.mark.mounted


@pytest.fixture
def s3fs_mount(seaweed, tmp_path):
    mounted = []

    def do(bucket):
        s3fs = shutil.which("s3fs")
        assert s3fs, "s3fs-fuse is not installed (scripts/bootstrap.sh installs the Debian package s3fs)"
        passwd = tmp_path / "s3fs-passwd"
        passwd.write_text(f"{seaweed.access_key}:{seaweed.secret_key}\n")
        os.chmod(passwd, 0o600)
        point = tmp_path / "s3fs-mnt"
        point.mkdir()
        subprocess.run([s3fs, bucket, str(point), "-o",
                        f"url={seaweed.endpoint},use_path_request_style,passwd_file={passwd},"
                        "stat_cache_expire=1,enable_noobj_cache"], check=True, timeout=60)
        mounted.append(point)
        assert os.path.ismount(point)
        return point
    yield do
    for point in mounted:
        subprocess.run(["fusermount3", "-u", str(point)], check=False)


def test_s3fs_writes_s3pyfs_reads(bucket, mount, s3fs_mount):
    theirs = s3fs_mount(bucket)
    (theirs / "dir").mkdir()
    (theirs / "dir" / "script.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(theirs / "dir" / "script.sh", 0o751)
    os.symlink("dir/script.sh", theirs / "link")
    os.utime(theirs / "dir" / "script.sh", (1_300_000_000, 1_300_000_000))
    ours = mount(bucket).path
    st = os.stat(ours / "dir" / "script.sh")
    assert stat.S_IMODE(st.st_mode) == 0o751
    assert st.st_mtime == 1_300_000_000
    assert (ours / "dir" / "script.sh").read_text() == "#!/bin/sh\necho hi\n"
    assert os.readlink(ours / "link") == "dir/script.sh"
    assert os.path.isdir(ours / "dir")


def test_s3pyfs_writes_s3fs_reads(bucket, mount, s3fs_mount):
    ours = mount(bucket).path
    (ours / "tree" / "sub").mkdir(parents=True)
    (ours / "tree" / "sub" / "data.bin").write_bytes(b"\x00\x01" * 5000)
    os.chmod(ours / "tree" / "sub" / "data.bin", 0o604)
    os.utime(ours / "tree" / "sub" / "data.bin", (1_200_000_000, 1_200_000_000))
    os.symlink("sub/data.bin", ours / "tree" / "ln")
    os.mkfifo(ours / "tree" / "pipe")
    theirs = s3fs_mount(bucket)
    st = os.stat(theirs / "tree" / "sub" / "data.bin")
    assert stat.S_IMODE(st.st_mode) == 0o604 and st.st_mtime == 1_200_000_000
    assert (theirs / "tree" / "sub" / "data.bin").read_bytes() == b"\x00\x01" * 5000
    assert os.readlink(theirs / "tree" / "ln") == "sub/data.bin"
    assert stat.S_ISFIFO(os.lstat(theirs / "tree" / "pipe").st_mode)
    assert sorted(os.listdir(theirs / "tree")) == ["ln", "pipe", "sub"]
