"""Mounting by hand: daemon mode, exit codes and one-line errors, clean shutdown."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.mounted

S3PYFS = [sys.executable, "-m", "s3pyfs"]


def passwd_file(tmp_path, access, secret, mode=0o600):
    path = tmp_path / "passwd"
    path.write_text(f"{access}:{secret}\n")
    os.chmod(path, mode)
    return path


def run_s3pyfs(*args, timeout=60):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return subprocess.run([*S3PYFS, *args], capture_output=True, text=True, timeout=timeout, env=env)


def unmount(point):
    subprocess.run(["fusermount3", "-u", str(point)], check=False)


def wait_gone(pid_pattern_point, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = subprocess.run(["pgrep", "-f", f"s3pyfs .*{pid_pattern_point}"], capture_output=True)
        if found.returncode != 0:
            return True
        time.sleep(0.2)
    return False


def test_daemon_returns_once_mounted_and_detaches(seaweed, s3, bucket, tmp_path):
    point = tmp_path / "mnt"
    point.mkdir()
    pw = passwd_file(tmp_path, seaweed.access_key, seaweed.secret_key)
    # capture_output: this call would hang if the daemon kept our stdout/stderr open
    result = run_s3pyfs(bucket, str(point), "-o", f"url={seaweed.endpoint},use_path_request_style,passwd_file={pw}")
    try:
        assert result.returncode == 0, result.stderr
        assert os.path.ismount(point)
        (point / "daemon.txt").write_text("from the daemon")
    finally:
        unmount(point)
    assert wait_gone(point)
    assert s3().get_object(Bucket=bucket, Key="daemon.txt")["Body"].read() == b"from the daemon"


@pytest.mark.parametrize("case, code, words", [
    ("wrong-secret", 3, "credentials"),
    ("no-bucket", 4, "does not exist"),
    ("dead-endpoint", 4, "cannot reach"),
    ("loose-passwd", 3, "chmod 600"),
    ("missing-mountpoint", 5, "does not exist"),
    ("nonempty-mountpoint", 5, "not empty"),
])
def test_bad_input_gives_one_line_and_documented_exit_code(seaweed, bucket, tmp_path, case, code, words):
    point = tmp_path / "mnt"
    point.mkdir()
    secret = "sekrit-" + "x" * 16
    endpoint, target = seaweed.endpoint, bucket
    pw = passwd_file(tmp_path, seaweed.access_key, seaweed.secret_key)
    extra = ""
    if case == "wrong-secret":
        pw = passwd_file(tmp_path, seaweed.access_key, secret)
    elif case == "no-bucket":
        target = "no-such-bucket-here"
    elif case == "dead-endpoint":
        import socket
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            endpoint = f"http://127.0.0.1:{sock.getsockname()[1]}"
        extra = ",retries=1,connect_timeout=1"
    elif case == "loose-passwd":
        pw = passwd_file(tmp_path, seaweed.access_key, secret, mode=0o644)
    elif case == "missing-mountpoint":
        point = tmp_path / "nowhere"
    elif case == "nonempty-mountpoint":
        (point / "occupied").write_text("x")
    started = time.monotonic()
    result = run_s3pyfs(target, str(point), "-o", f"url={endpoint},use_path_request_style,passwd_file={pw}{extra}")
    if os.path.ismount(point):
        unmount(point)
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("s3pyfs: ") and words in lines[0], result.stderr
    assert secret not in result.stderr + result.stdout
    assert time.monotonic() - started < 30


def test_sigterm_uploads_open_dirty_file_then_exits_0(s3, bucket, mount):
    m = mount(bucket)
    fd = os.open(m.path / "pending", os.O_CREAT | os.O_WRONLY, 0o644)
    os.write(fd, b"written but not closed")
    m.proc.send_signal(signal.SIGTERM)
    assert m.proc.wait(timeout=30) == 0
    try:
        os.close(fd)
    except OSError:
        pass     # the mount is gone; the data must be in S3 regardless
    assert s3().get_object(Bucket=bucket, Key="pending")["Body"].read() == b"written but not closed"


def test_dead_mount_left_by_a_killed_process_is_named(seaweed, bucket, mount, tmp_path):
    m = mount(bucket)
    m.expect_clean_exit = False
    m.proc.kill()
    m.proc.wait(timeout=10)
    pw = passwd_file(tmp_path, seaweed.access_key, seaweed.secret_key)
    result = run_s3pyfs(bucket, str(m.path), "-o", f"url={seaweed.endpoint},use_path_request_style,passwd_file={pw}")
    assert result.returncode == 5
    assert "dead FUSE mount" in result.stderr and f"fusermount3 -u {m.path}" in result.stderr
