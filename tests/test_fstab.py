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

from s3pyfs import selinux

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


# An s3fs command line and fstab line as node guides write them (IBM Cloud Object Storage's
# tuning advice, OpenShift's SELinux context); only `s3fs` becomes `s3pyfs`.
GUIDE_COMMAND = ("s3fs {bucket} {point} -o url={url} -o passwd_file={pw} -o use_path_request_style "
                 "-o cipher_suites=AESGCM -o kernel_cache -o max_background=1000 -o max_stat_cache_size=100000 "
                 "-o multipart_size=52 -o parallel_count=30 -o multireq_max=30 -o dbglevel=warn -o retries=5 "
                 "-o allow_other -o mp_umask=002 -o umask=002 -o uid=1000 -o gid=1000 -o complement_stat "
                 "-o endpoint=us-east-1 -o context=system_u:object_r:container_file_t:s0")
GUIDE_FSTAB = ("{bucket} {point} fuse.s3fs _netdev,allow_other,nofail,use_path_request_style,url={url},"
               "passwd_file={pw},umask=0022,uid=0,gid=0,max_stat_cache_size=100000,use_xattr,"
               'context="system_u:object_r:container_file_t:s0:c1,c2",x-systemd.automount 0 0\n')


def test_s3fs_lines_from_a_node_guide_work_with_s3pyfs(installed, seaweed, s3, bucket, tmp_path):
    import shlex
    point = tmp_path / "mnt"
    point.mkdir()
    pw = tmp_path / "passwd-s3fs"
    fd = os.open(pw, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, f"{seaweed.access_key}:{seaweed.secret_key}\n".encode())
    os.close(fd)
    values = dict(bucket=bucket, point=point, url=seaweed.endpoint, pw=pw)
    argv = shlex.split(GUIDE_COMMAND.format(**values))
    assert argv[0] == "s3fs"
    try:
        result = run_bare(installed, *argv[1:])
        assert result.returncode == 0, result.stderr
        assert "SELinux is not enabled" in result.stderr            # this host: dropped, with one line
        st = os.stat(point)
        assert (st.st_mode & 0o777, st.st_uid, st.st_gid) == (0o775, 1000, 1000)
        (point / "from-command-line").write_text("x")
        assert run_bare("umount", str(point)).returncode == 0

        fstab = tmp_path / "fstab"
        fstab.write_text(GUIDE_FSTAB.format(**values).replace(" fuse.s3fs ", " fuse.s3pyfs "))
        mounted = run_bare("mount", "-T", str(fstab), str(point))
        assert mounted.returncode == 0, mounted.stderr
        assert sorted(os.listdir(point)) == ["from-command-line"]
        assert run_bare("mount", "-a", "-T", str(fstab)).returncode == 0 and len(entries(point)) == 1
        assert run_bare("umount", str(point)).returncode == 0
    finally:
        support.force_unmount(point)


def checkout_helper(tmp_path) -> Path:
    """A program that runs this checkout's s3pyfs, for the old `fuse` type's `PROGRAM#SOURCE` form:
    mount(8) and mount.fuse3 treat its options exactly as for `fuse.s3pyfs` (libmount's SELinux
    handling does not look at the type), and it runs the code under test whatever
    /usr/local/bin/s3pyfs points at."""
    helper = tmp_path / "s3pyfs-checkout"
    root = Path(__file__).resolve().parent.parent
    helper.write_text(f"#!/bin/sh\nPYTHONPATH='{root}' exec '{sys.executable}' -m s3pyfs \"$@\"\n")
    helper.chmod(0o755)
    return helper


# On this host SELinux is off; mount(8) (libmount) then removes context=, fscontext=, defcontext=,
# rootcontext= (and seclabel) before it runs the helper, and never passes x-* options to helpers.
MCS = '"system_u:object_r:container_file_t:s0:c1,c2"'


@pytest.mark.parametrize("spelling, strict, outcome", [
    ("context", False, "silent"),                  # dropped by mount(8): s3pyfs never sees it
    ("context", True, "silent"),                   # ... so strict_selinux cannot act either
    ("s3pyfs.context", False, "warning"),          # reaches s3pyfs: dropped with one warning line
    ("s3pyfs.context", True, "refused"),           # strict_selinux: exit 5, nothing mounted
])
def test_fstab_context_spellings_without_selinux(seaweed, bucket, tmp_path, spelling, strict, outcome):
    if selinux.selinux_enabled():
        pytest.fail("this test describes a host without SELinux")
    point = tmp_path / "mnt"
    point.mkdir()
    pw = tmp_path / "passwd-s3fs"
    fd = os.open(pw, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, f"{seaweed.access_key}:{seaweed.secret_key}\n".encode())
    os.close(fd)
    options = (f"_netdev,url={seaweed.endpoint},use_path_request_style,passwd_file={pw},{spelling}={MCS}"
               + (",strict_selinux" if strict else ""))
    fstab = tmp_path / "fstab"
    fstab.write_text(f"{checkout_helper(tmp_path)}#{bucket} {point} fuse {options} 0 0\n")
    try:
        result = run_bare("mount", "-T", str(fstab), str(point))
        warning = ("s3pyfs: warning: SELinux is not enabled on this host: ignoring context= "
                   "(add strict_selinux to fail instead)")
        if outcome == "refused":
            assert result.returncode == 5 and entries(point) == []          # mount(8) passes the helper's code on
            assert result.stderr.splitlines()[0] == (
                "s3pyfs: SELinux is not enabled on this host, so context= cannot be applied "
                "(strict_selinux is set; remove it to mount without the contexts)")
        else:
            assert result.returncode == 0, result.stderr
            assert len(entries(point)) == 1
            assert result.stderr.splitlines() == ([warning] if outcome == "warning" else [])
            assert run_bare("umount", str(point)).returncode == 0
    finally:
        support.force_unmount(point)
