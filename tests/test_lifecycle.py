"""Daemon life on a live mount: SIGHUP reopens logfile=, exit 6 when data cannot be uploaded,
log options, who may access the mount (allow_other, allow_root, default_permissions, mp_umask),
auto_unmount."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import support

pytestmark = pytest.mark.mounted

NOBODY = 65534


# ---------------------------------------------------------------- log file
def test_sighup_reopens_the_log_file_after_rotation(bucket, mount, tmp_path):
    logfile = tmp_path / "s3pyfs.log"
    m = mount(bucket, f"logfile={logfile}", "dbglevel=info")
    assert support.wait_until(lambda: "mounted" in logfile.read_text(), 10)
    rotated = tmp_path / "s3pyfs.log.1"
    os.rename(logfile, rotated)                        # what logrotate does
    m.proc.send_signal(signal.SIGHUP)
    assert support.wait_until(logfile.exists, 10), "SIGHUP did not reopen the log file"
    (m.path / "after-rotation").write_text("x")
    assert m.unmount() == 0
    new, old = logfile.read_text(), rotated.read_text()
    assert "reopened log file" in new and "cleanly" in new
    assert "mounted" in old and "cleanly" not in old
    assert m.proc.returncode == 0


def test_log_options_shape_every_line(bucket, mount, tmp_path):
    logfile = tmp_path / "s3pyfs.log"
    m = mount(bucket, f"logfile={logfile}", "dbglevel=info", "instance_name=node7", "no_time_stamp_msg")
    m.unmount()
    lines = logfile.read_text().splitlines()
    assert lines and all(line.startswith("[node7] ") for line in lines), lines
    assert any(line.startswith("[node7] INFO s3pyfs") for line in lines)
    quiet = tmp_path / "quiet.log"
    m = mount(bucket, f"logfile={quiet}", "dbglevel=err")
    m.unmount()
    assert quiet.read_text() == ""                     # nothing at error level in a clean run


# ---------------------------------------------------------------- exit 6
@pytest.mark.parametrize("how", ["umount", "sigterm"])
def test_data_that_cannot_be_uploaded_gives_exit_6_naming_the_file(s3, bucket, mount, proxy, how):
    m = mount(bucket, f"url={proxy.url}", "retries=1,connect_timeout=1,readwrite_timeout=2,request_timeout=3")
    m.expect_clean_exit = False
    (m.path / "uploaded.txt").write_text("while the endpoint was up")
    if how == "umount":
        proxy.refuse()
        with pytest.raises(OSError) as failed:
            (m.path / "pending.txt").write_text("staged, never uploaded")
        assert failed.value.errno == errno.EIO
        code = m.unmount(timeout=60)
    else:
        fd = os.open(m.path / "pending.txt", os.O_CREAT | os.O_WRONLY, 0o644)
        os.write(fd, b"staged, never uploaded")
        proxy.refuse()
        m.proc.send_signal(signal.SIGTERM)
        code = m.proc.wait(60)
        try:
            os.close(fd)
        except OSError:
            pass
    assert code == 6, support.tail(m.log_path)
    assert "not uploaded" in m.log_text() and "pending.txt" in m.log_text()
    proxy.forward()
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])}
    assert keys == {"uploaded.txt"}


# ---------------------------------------------------------------- who may access
@pytest.fixture
def open_point():
    """A mount point other users can reach (pytest's tmp dirs are 0700)."""
    path = Path(tempfile.mkdtemp(prefix="s3pyfs-access-", dir="/tmp"))
    os.chmod(path, 0o755)
    (path / "mnt").mkdir()
    os.chmod(path / "mnt", 0o755)
    yield path / "mnt"
    support.force_unmount(path / "mnt")
    shutil.rmtree(path, ignore_errors=True)


def start(seaweed, bucket, point, *options, log):
    pw = point.parent / "passwd"
    fd = os.open(pw, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(fd, f"{seaweed.access_key}:{seaweed.secret_key}\n".encode())
    os.close(fd)
    cmd = [sys.executable, "-m", "s3pyfs", bucket, str(point), "-f", "-o",
           ",".join([f"url={seaweed.endpoint}", "use_path_request_style", f"passwd_file={pw}", *options])]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    m = support.Mount(point, cmd, env, log).start()
    m.wait_mounted(30)
    return m


def as_nobody(*argv):
    return subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *argv],
                          capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("option, nobody_may_enter", [(None, False), ("allow_other", True), ("allow_root", False)])
def test_who_may_enter_the_mount(seaweed, s3, bucket, open_point, tmp_path, option, nobody_may_enter):
    s3.put_object(Bucket=bucket, Key="readable.txt", Body=b"for everyone")
    m = start(seaweed, bucket, open_point, *([option] if option else []), log=tmp_path / "log")
    try:
        entry = support.mount_entry(open_point)
        assert ("allow_other" in entry["line"]) == (option is not None)     # allow_root: libfuse filters
        assert "default_permissions" in entry["line"]
        listing = as_nobody("ls", str(open_point))
        assert (listing.returncode == 0) == nobody_may_enter, listing.stderr
        if nobody_may_enter:
            assert as_nobody("cat", str(open_point / "readable.txt")).stdout == "for everyone"
            # default_permissions: the kernel checks modes; readable.txt is 0644 and root's
            denied = as_nobody("sh", "-c", f"echo x >> {open_point}/readable.txt")
            assert denied.returncode != 0 and "Permission denied" in denied.stderr
        assert os.listdir(open_point) == ["readable.txt"]                 # the owner (root) always may
    finally:
        assert m.unmount() == 0
        assert not m.close()


@pytest.mark.parametrize("options, mode", [
    ((), 0o755), (("umask=077",), 0o700), (("mp_umask=027",), 0o750),
    (("umask=077", "mp_umask=002"), 0o775),      # s3fs: only mp_umask applies to the mount point
])
def test_mp_umask_sets_the_mount_point_mode(bucket, mount, options, mode):
    m = mount(bucket, *options)
    assert stat.S_IMODE(os.stat(m.path).st_mode) == mode


# ---------------------------------------------------------------- auto_unmount
def test_auto_unmount_removes_the_mount_when_s3pyfs_dies(bucket, mount):
    m = mount(bucket, "auto_unmount")
    m.expect_clean_exit = False
    assert os.listdir(m.path) == []
    m.proc.kill()
    m.proc.wait(10)
    assert support.wait_until(lambda: not m.mounted, 10), "the dead mount stayed"
    time.sleep(0.2)
    assert not os.path.ismount(m.path)


# ---------------------------------------------------------------- how the mount shows
def test_notify_socket_gets_ready_and_fsname_names_the_source(bucket, mount, tmp_path):
    import socket
    address = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(address)
        sock.settimeout(30)
        m = mount(bucket, "fsname=my-data", env={"NOTIFY_SOCKET": address})
        assert sock.recv(64) == b"READY=1"
    entry = support.mount_entry(m.path)
    assert (entry["source"], entry["fstype"]) == ("my-data", "fuse.s3pyfs")
