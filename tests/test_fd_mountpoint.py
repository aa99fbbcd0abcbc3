"""`/dev/fd/N` as the mount point: an already-opened /dev/fuse descriptor that someone else
mounted (a CSI driver handing it to a mount pod, as libfuse allows).  The test does what such
a driver does: open /dev/fuse, mount(2) it itself with `fd=N`, pass the descriptor on."""

from __future__ import annotations

import ctypes
import os
import socket
import subprocess
import sys

import support

MS_NOSUID, MS_NODEV = 2, 4


def kernel_mount(fd: int, target: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    data = f"fd={fd},rootmode=40000,user_id=0,group_id=0,allow_other".encode()
    if libc.mount(b"s3pyfs-fd-test", target.encode(), b"fuse.s3pyfs", MS_NOSUID | MS_NODEV, data) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def start(bucket: str, fd: int, seaweed, tmp_path, log_name: str, notify: str | None = None
          ) -> tuple[subprocess.Popen, str]:
    passwd = tmp_path / "passwd"
    passwd.write_text(f"{seaweed.access_key}:{seaweed.secret_key}\n")
    passwd.chmod(0o600)
    log = tmp_path / log_name
    cmd = [sys.executable, "-m", "s3pyfs", bucket, f"/dev/fd/{fd}", "-f",
           "-o", f"url={seaweed.endpoint},use_path_request_style,passwd_file={passwd}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and k != "NOTIFY_SOCKET"}
    if notify:
        env["NOTIFY_SOCKET"] = notify            # READY=1 once the FUSE session is up (systemd's protocol)
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                pass_fds=(fd,), start_new_session=True)
    return proc, str(log)


def _ready(sock) -> bool:
    try:
        return sock.recv(64) == b"READY=1"
    except TimeoutError:
        return False


def test_serves_an_already_mounted_dev_fuse_descriptor(bucket, s3, seaweed, tmp_path, fuse_ready):
    target = tmp_path / "mnt"
    target.mkdir()
    fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    proc = None
    try:
        kernel_mount(fd, str(target))
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as ready:
            ready.bind(str(tmp_path / "notify"))
            ready.settimeout(0.5)
            proc, log = start(bucket, fd, seaweed, tmp_path, "fd.log", notify=str(tmp_path / "notify"))
            assert support.wait_until(lambda: _ready(ready) or proc.poll() is not None, 60), open(log).read()
        assert proc.poll() is None, open(log).read()
        (target / "via-fd.txt").write_bytes(b"served through /dev/fd/N")
        assert s3.get_object(Bucket=bucket, Key="via-fd.txt")["Body"].read() == b"served through /dev/fd/N"
        assert sorted(os.listdir(target)) == ["via-fd.txt"]
    finally:
        os.close(fd)
        support.force_unmount(target)        # the mounter unmounts; s3pyfs's loop then ends by itself
        if proc is not None:
            assert proc.wait(timeout=60) == 0, open(log).read()


def test_refuses_a_descriptor_that_is_not_dev_fuse(bucket, seaweed, tmp_path):
    fd = os.open(tmp_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        proc, log = start(bucket, fd, seaweed, tmp_path, "bad.log")
        assert proc.wait(timeout=60) == 5
    finally:
        os.close(fd)
    assert f"/dev/fd/{fd} is not an open /dev/fuse descriptor" in open(log).read()
