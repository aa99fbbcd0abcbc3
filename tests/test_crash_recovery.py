"""Dirty data survives the death of the mount, outages and shutdown.

Everything runs for real: s3pyfs mounted through FUSE on SeaweedFS, killed
with SIGKILL, endpoint taken away with the TCP proxy, and the results read
back out of band with boto3, byte for byte.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import support

pytestmark = pytest.mark.mounted

FAST_FAIL = "retries=2,connect_timeout=1,readwrite_timeout=2,request_timeout=4"


def payload(size: int, seed: int) -> bytes:
    block = hashlib.sha256(str(seed).encode()).digest() * 32       # 1 KiB, differs per seed
    return (block * (size // len(block) + 1))[:size]


def kill_mount(m) -> None:
    """SIGKILL the mount process (what a crash or the OOM killer does) and detach the mount."""
    m.expect_clean_exit = False
    m.proc.send_signal(signal.SIGKILL)
    m.proc.wait(10)
    support.force_unmount(m.path)


def close_quietly(*fds: int) -> None:
    """Close descriptors into a mount that died (the kernel answers with an error)."""
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def object_bytes(s3, bucket: str, key: str) -> bytes | None:
    try:
        return s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except s3.exceptions.NoSuchKey:
        return None


def pending_records(stage: Path) -> list[Path]:
    return [p for p in stage.rglob("*.json") if "lost+found" not in p.parts]


def test_sigkill_before_close_then_next_mount_uploads_the_data(s3, bucket, mount, tmp_path):
    stage = tmp_path / "stage"
    stage.mkdir()
    original = payload(6 * 1024 * 1024, 1)
    s3.put_object(Bucket=bucket, Key="big.bin", Body=original)
    m = mount(bucket, f"tmpdir={stage}", "multipart_size=5")
    new_data = payload(3 * 1024 * 1024 + 17, 2)
    patch = b"P" * 5000
    fd_new = os.open(m.path / "new.bin", os.O_WRONLY | os.O_CREAT, 0o640)
    os.write(fd_new, new_data)
    os.chmod(m.path / "new.bin", 0o604)                               # metadata changed while dirty
    fd_big = os.open(m.path / "big.bin", os.O_WRONLY)
    os.pwrite(fd_big, patch, 2 * 1024 * 1024 - 100)                  # straddles a block boundary
    kill_mount(m)
    close_quietly(fd_new, fd_big)
    assert object_bytes(s3, bucket, "new.bin") is None                 # never closed: not uploaded
    assert pending_records(stage), "the dead mount left no journal records"

    m2 = mount(bucket, f"tmpdir={stage}", "multipart_size=5")
    assert object_bytes(s3, bucket, "new.bin") == new_data
    expected = bytearray(original)
    expected[2 * 1024 * 1024 - 100:2 * 1024 * 1024 - 100 + len(patch)] = patch
    assert object_bytes(s3, bucket, "big.bin") == bytes(expected)
    assert s3.head_object(Bucket=bucket, Key="new.bin")["Metadata"]["mode"] == str(0o100604)
    assert not pending_records(stage)
    assert "uploaded new.bin" in m2.log_text()
    assert (m2.path / "new.bin").read_bytes() == new_data


def test_sigkill_during_upload_never_leaves_a_partial_object(s3, bucket, mount, proxy, tmp_path):
    stage = tmp_path / "stage"
    stage.mkdir()
    old = payload(1024 * 1024, 3)
    s3.put_object(Bucket=bucket, Key="video.bin", Body=old)
    proxy.forward()
    m = mount(bucket, f"url={proxy.url}", f"tmpdir={stage}", "multipart_size=5",
              "retries=2,connect_timeout=1,readwrite_timeout=60,request_timeout=60")
    new = payload(23 * 1024 * 1024, 4)
    first = 12 * 1024 * 1024
    # a writer in another process: it will be stuck in close() when the mount dies
    writer = subprocess.Popen([sys.executable, "-c", (
        "import sys\n"
        "f = open(sys.argv[1], 'wb')\n"
        "f.write(sys.stdin.buffer.read(int(sys.argv[2])))\n"
        "f.flush()\n"
        "print('half', flush=True)\n"
        "f.write(sys.stdin.buffer.read())\n"
        "print('written', flush=True)\n"
        "f.close()\n"), str(m.path / "video.bin"), str(first)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    sent_before = proxy.bytes_up
    writer.stdin.write(new[:first])
    writer.stdin.flush()
    assert writer.stdout.readline().strip() == b"half"
    # the streaming upload has started: a part is on the server
    assert support.wait_until(lambda: proxy.bytes_up - sent_before > 5 * 1024 * 1024, timeout=30)
    proxy.stall()                       # everything from here on hangs
    writer.stdin.write(new[first:])
    writer.stdin.close()
    assert writer.stdout.readline().strip() == b"written"
    time.sleep(1)                       # close() is now waiting for the multipart upload
    assert writer.poll() is None
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads"), "no multipart upload was started"
    kill_mount(m)
    writer.wait(10)
    assert object_bytes(s3, bucket, "video.bin") == old                # the good version is untouched
    proxy.forward()

    # journals belong to (endpoint, bucket): the next mount uses the same endpoint URL
    mount(bucket, f"url={proxy.url}", f"tmpdir={stage}", "multipart_size=5")
    assert object_bytes(s3, bucket, "video.bin") == new
    uploads = s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert uploads == [], uploads                                      # the dead mount's upload was aborted
    assert not pending_records(stage)


def test_recovery_never_overwrites_an_object_changed_meanwhile(s3, bucket, mount, tmp_path):
    stage = tmp_path / "stage"
    stage.mkdir()
    s3.put_object(Bucket=bucket, Key="doc.txt", Body=b"version 1")
    m = mount(bucket, f"tmpdir={stage}")
    fd = os.open(m.path / "doc.txt", os.O_WRONLY | os.O_TRUNC)
    os.write(fd, b"local edit that never reached S3")
    kill_mount(m)
    close_quietly(fd)
    s3.put_object(Bucket=bucket, Key="doc.txt", Body=b"version 2 from another node")

    m2 = mount(bucket, f"tmpdir={stage}")
    assert object_bytes(s3, bucket, "doc.txt") == b"version 2 from another node"
    kept = [p.parent for p in stage.rglob("record.json")]
    assert len(kept) == 1
    assert (kept[0] / "data").read_bytes() == b"local edit that never reached S3"
    record = json.loads((kept[0] / "record.json").read_text())
    assert record["key"] == "doc.txt" and "replaced" in record["reason"]
    assert str(kept[0]) in m2.log_text()
    assert not pending_records(stage)


def test_write_during_outage_fails_then_uploads_in_background(s3, bucket, mount, proxy, tmp_path):
    proxy.forward()
    m = mount(bucket, f"url={proxy.url}", f"tmpdir={tmp_path}", FAST_FAIL)
    (m.path / "warmup").write_bytes(b"ok")
    data = payload(200_000, 5)
    f = open(m.path / "during-outage.bin", "wb")
    f.write(data)
    proxy.refuse()                      # the endpoint goes away before the file is closed
    started = time.monotonic()
    with pytest.raises(OSError) as failure:
        f.close()
    assert failure.value.errno == errno.EIO
    assert time.monotonic() - started < 30
    assert object_bytes(s3, bucket, "during-outage.bin") is None
    proxy.forward()
    # no further access to the file: the mount uploads it by itself
    assert support.wait_until(lambda: object_bytes(s3, bucket, "during-outage.bin") == data, timeout=60), \
        m.describe("the data written during the outage never reached S3")
    assert "whose earlier upload had failed" in m.log_text()
    assert (m.path / "during-outage.bin").read_bytes() == data


def test_sigterm_with_endpoint_down_exits_in_bounded_time_and_keeps_data(s3, bucket, mount, proxy, tmp_path):
    stage = tmp_path / "stage"
    stage.mkdir()
    proxy.forward()
    m = mount(bucket, f"url={proxy.url}", f"tmpdir={stage}", FAST_FAIL, "drain_timeout=6")
    data = payload(300_000, 6)
    f = open(m.path / "unsaved.bin", "wb")
    f.write(data)
    proxy.refuse()
    with pytest.raises(OSError):
        f.close()
    started = time.monotonic()
    m.proc.send_signal(signal.SIGTERM)
    code = m.proc.wait(60)
    took = time.monotonic() - started
    m.expect_clean_exit = False
    support.force_unmount(m.path)
    assert code == 6, m.log_text()                                   # EXIT_DIRTY
    assert took < 6 + 15, took                                        # drain_timeout + one request + slack
    log = m.log_text()
    assert "unsaved.bin" in log and str(stage) in log
    assert pending_records(stage)
    proxy.forward()

    mount(bucket, f"url={proxy.url}", f"tmpdir={stage}")
    assert object_bytes(s3, bucket, "unsaved.bin") == data
    assert not pending_records(stage)


def test_unlinked_or_renamed_dirty_files_are_not_resurrected(s3, bucket, mount, tmp_path):
    stage = tmp_path / "stage"
    stage.mkdir()
    m = mount(bucket, f"tmpdir={stage}")
    fd_gone = os.open(m.path / "gone.bin", os.O_WRONLY | os.O_CREAT)
    os.write(fd_gone, b"deleted while open")
    os.unlink(m.path / "gone.bin")
    with open(m.path / "first-name", "wb") as f:
        f.write(b"renamed")
    fd_moved = os.open(m.path / "first-name", os.O_WRONLY | os.O_APPEND)
    os.write(fd_moved, b" and appended")
    os.rename(m.path / "first-name", m.path / "second-name")
    os.write(fd_moved, b" after the rename")
    kill_mount(m)
    close_quietly(fd_gone, fd_moved)

    mount(bucket, f"tmpdir={stage}")
    assert object_bytes(s3, bucket, "gone.bin") is None
    assert object_bytes(s3, bucket, "first-name") is None
    assert object_bytes(s3, bucket, "second-name") == b"renamed and appended after the rename"
    assert not list(stage.rglob("record.json"))
