"""A stalled staging disk delays only the writes that need it, not the whole mount.

The mount's state directory (`tmpdir=`) lives on stall_fs.py, a pass-through FUSE
filesystem whose reads and writes the test pauses.  While a large write through the
mount waits on that disk, lookups and listings of other files must still answer:
they never touch the staging disk (issue 13).  On code that wrote staging files on
the trio thread the whole mount froze until the disk came back.
"""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import support

HERE = Path(__file__).resolve().parent
STALL_SECONDS = 20.0          # how long the disk stays stalled at most
ANSWER_BOUND = 5.0            # a generous bound for a stat/ls on a loaded 2-core machine
MiB = 1024 * 1024
WRITE_MIB = 48

WRITER = """
import sys
path, count = sys.argv[1], int(sys.argv[2])
with open(path, "wb") as f:
    for i in range(count):
        f.write(bytes([i % 251]) * (1024 * 1024))
        f.flush()
        if i == 1:
            print("started", flush=True)
print("closed", flush=True)
"""


@pytest.fixture
def stall_disk(tmp_path, fuse_ready):
    """(mount point of a pausable pass-through filesystem, its control directory)."""
    source, mnt, control = tmp_path / "stall-src", tmp_path / "stall-mnt", tmp_path / "stall-ctl"
    for d in (source, mnt, control):
        d.mkdir(mode=0o700)
    log = open(tmp_path / "stall_fs.log", "wb")
    proc = subprocess.Popen([sys.executable, str(HERE / "stall_fs.py"), str(source), str(mnt), str(control)],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        if not support.wait_until(lambda: (control / "ready").exists() and support.mount_entry(mnt) is not None,
                                  30):
            pytest.fail(f"stall_fs did not mount:\n{support.tail(tmp_path / 'stall_fs.log')}")
        yield mnt, control
    finally:
        (control / "pause").unlink(missing_ok=True)
        subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True)
        support.stop_process(proc, grace=10)
        if support.mount_entry(mnt) is not None:
            support.force_unmount(mnt)
        log.close()


def test_lookups_answer_while_a_write_waits_on_a_stalled_staging_disk(stall_disk, mount, bucket, s3):
    state_mnt, control = stall_disk
    for i in range(4):
        s3.put_object(Bucket=bucket, Key=f"others/f{i}", Body=b"x" * (i + 1))
    s3.put_object(Bucket=bucket, Key="listed/a", Body=b"a")
    s3.put_object(Bucket=bucket, Key="listed/b", Body=b"bb")
    m = mount(bucket, f"tmpdir={state_mnt}")
    # the staging files really live on the stallable disk
    assert (state_mnt / f"s3pyfs-{os.getuid()}").is_dir()

    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(m.path / "big"), str(WRITE_MIB)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    pause = control / "pause"
    answered: dict[str, float] = {}
    writer_blocked_throughout = False
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=8)
    try:
        assert writer.stdout.readline().strip() == b"started"
        pause.touch()
        assert support.wait_until(lambda: (control / "blocked").exists(), 30), \
            "the write never reached the stalled disk"
        stalled_at = time.monotonic()

        # cold names: every one of these needs the s3pyfs process (no kernel cache)
        probes = {f"stat others/f{i}": (lambda i=i: os.stat(m.path / "others" / f"f{i}").st_size)
                  for i in range(4)}
        probes["ls listed"] = lambda: sorted(os.listdir(m.path / "listed"))
        results = {}
        for what, probe in probes.items():
            future = pool.submit(probe)
            try:
                results[what] = future.result(timeout=max(0.1, stalled_at + ANSWER_BOUND - time.monotonic()))
                answered[what] = time.monotonic() - stalled_at
            except concurrent.futures.TimeoutError:
                break
        # the disk was stalled the whole time: the big write had not got through
        writer_blocked_throughout = writer.poll() is None and pause.exists()
        # keep the disk stalled for the rest of the stall period, so a frozen mount
        # cannot pass by catching up
        while time.monotonic() < stalled_at + STALL_SECONDS and len(answered) < len(probes):
            time.sleep(0.2)
    finally:
        pause.unlink(missing_ok=True)
        out, err = writer.communicate(timeout=120)
        pool.shutdown(wait=True)

    assert writer_blocked_throughout, "the write was not held up by the stalled disk (test did not stall)"
    assert set(answered) == set(probes), \
        f"while the staging disk stalled, only {sorted(answered)} answered within {ANSWER_BOUND}s " \
        f"(of {sorted(probes)})"
    assert [results[f"stat others/f{i}"] for i in range(4)] == [1, 2, 3, 4]
    assert results["ls listed"] == ["a", "b"]
    # once the disk is back the write completes whole
    assert writer.returncode == 0, err.decode(errors="replace")
    assert out.split() == [b"closed"]
    head = s3.head_object(Bucket=bucket, Key="big")
    assert head["ContentLength"] == WRITE_MIB * MiB
    body = s3.get_object(Bucket=bucket, Key="big", Range=f"bytes={5 * MiB}-{5 * MiB + 3}")["Body"].read()
    assert body == bytes([5]) * 4
