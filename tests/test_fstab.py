"""fstab lines of type fuse.s3pyfs through mount(8) and mount.fuse3, with no PATH at all.

mount(8) runs /sbin/mount.fuse3, which runs `s3pyfs SOURCE MOUNTPOINT -o ...`
through /bin/sh; with an empty environment /bin/sh finds s3pyfs only through
its default PATH, i.e. the /usr/local/bin/s3pyfs link scripts/bootstrap.sh makes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import support

pytestmark = pytest.mark.mounted

SH_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@pytest.fixture(scope="module")
def installed():
    """s3pyfs as /bin/sh finds it without PATH must be this checkout's."""
    found = subprocess.run(["env", "-i", "/bin/sh", "-c", "command -v s3pyfs"], capture_output=True, text=True)
    ours = Path(sys.executable).parent / "s3pyfs"
    assert found.returncode == 0, "s3pyfs is not on /bin/sh's default PATH: run scripts/bootstrap.sh"
    assert os.path.realpath(found.stdout.strip()) == os.path.realpath(ours), \
        f"{found.stdout.strip()} is not {ours}: run scripts/bootstrap.sh"
    for tool in ("mount", "umount", "mount.fuse3"):
        assert shutil.which(tool, path=SH_DEFAULT_PATH), f"{tool} missing (apt-get install mount fuse3)"
    return found.stdout.strip()


def run_bare(*argv):
    """A command with an empty environment, as early boot or a minimal unit would run it."""
    return subprocess.run(["env", "-i", *argv], capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)


def entries(point):
    return [e for e in support.mountinfo() if e["mountpoint"] == str(point)]


def daemon_pids(point):
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if any(b"s3pyfs" in arg for arg in cmdline) and str(point).encode() in cmdline:
                pids.append(int(entry.name))
    return pids


@pytest.mark.parametrize("prefix", ["", ":/sub/dir"])
def test_fstab_line_mount_mount_a_twice_umount(installed, seaweed, s3, bucket, tmp_path, prefix):
    point = tmp_path / "mnt"
    point.mkdir()
    pw = tmp_path / "passwd-s3fs"
    fd = os.open(pw, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, f"{seaweed.access_key}:{seaweed.secret_key}\n".encode())
    os.close(fd)
    source = bucket + prefix
    fstab = tmp_path / "fstab"
    fstab.write_text(f"# test fstab\n{source} {point} fuse.s3pyfs _netdev,allow_other,url={seaweed.endpoint},"
                     f"use_path_request_style,passwd_file={pw} 0 0\n")
    try:
        first = run_bare("mount", "-T", str(fstab), str(point))
        assert first.returncode == 0, first.stderr
        [entry] = entries(point)
        assert (entry["source"], entry["fstype"]) == (source, "fuse.s3pyfs")
        assert "allow_other" in entry["line"]
        (point / "via-fstab.txt").write_text("mounted by mount(8)")
        for _ in range(2):
            again = run_bare("mount", "-a", "-T", str(fstab))
            assert again.returncode == 0, again.stderr
            assert len(entries(point)) == 1, "mount -a stacked a second mount"
        [pid] = daemon_pids(point)
        gone = run_bare("umount", str(point))
        assert gone.returncode == 0, gone.stderr
        assert entries(point) == []
        assert support.wait_until(lambda: not os.path.exists(f"/proc/{pid}"), 30), "s3pyfs did not exit after umount"
    finally:
        support.force_unmount(point)
    key = (prefix.lstrip(":/") + "/" if prefix else "") + "via-fstab.txt"
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == b"mounted by mount(8)"


def test_fstab_mount_failure_is_reported_by_mount(installed, seaweed, bucket, tmp_path):
    point = tmp_path / "mnt"
    point.mkdir()
    fstab = tmp_path / "fstab"
    fstab.write_text(f"{bucket} {point} fuse.s3pyfs _netdev,url={seaweed.endpoint},use_path_request_style,"
                     f"passwd_file={tmp_path}/missing 0 0\n")
    started = time.monotonic()
    result = run_bare("mount", "-T", str(fstab), str(point))
    assert result.returncode != 0 and entries(point) == []
    assert f"s3pyfs: cannot read passwd file {tmp_path}/missing" in result.stderr
    assert time.monotonic() - started < 30
