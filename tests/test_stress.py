"""Bounded concurrent stress run on one mount, checked byte for byte, with an RSS soak check.

Responsibility: many processes work on one s3pyfs mount (FUSE on SeaweedFS) at
once for a fixed time, and nothing they wrote is lost or mixed up:
  * each worker owns a directory and keeps an exact model of its files while it
    rewrites, appends, pwrites at random offsets, truncates, creates, renames
    (within and across its directories), unlinks, reads and lists them;
  * all workers also replace shared files, only in a whole-file atomic way
    (write a private temporary file, close, rename it over the shared name), and
    read them: every successful read must be exactly one version some worker
    wrote (each version's bytes follow from its header), never a mix;
  * at the end the mount is unmounted (exit 0), every object in S3 is compared
    with the models out of band (boto3, sha256), and a fresh mount re-reads and
    lists everything through FUSE;
  * the s3pyfs process's RSS, sampled during the run, must not keep growing.
A companion test pins down one case the stress run found: a handle reading a
file that another file is renamed over (same mount) ends its reads with the old
bytes or an error, and never blocks.

Reproducible: each worker's random choices come from a fixed seed; only the
interleaving depends on the machine.  Duration: STRESS_SECONDS of operations
(default 70 s; S3PYFS_STRESS_SECONDS overrides) plus setup and verification.
"""

from __future__ import annotations

import errno
import hashlib
import multiprocessing
import os
import random
import statistics
import struct
import subprocess
import sys
import time
import traceback

import pytest
from support import env_float

pytestmark = pytest.mark.mounted

KiB, MiB = 1024, 1024 * 1024
WORKERS = 8
STRESS_SECONDS = env_float("S3PYFS_STRESS_SECONDS", 70.0)
HANG_GRACE = 120.0        # a worker still busy this long after the run is blocked for good
OWN_NAMES = ("f0", "f1", "f2", "f3", "sub/f4", "sub/f5")
SHARED = ("s0", "s1", "s2")
SHARED_HEADER = struct.Struct("<4sIII")   # magic, worker, sequence, length
MAGIC = b"SHRD"
# Errors a read of a shared file may end with when another worker replaced the
# file under it: S3 keeps no old version to finish such a read from.  A
# refused read is counted and reported; a read that returns bytes must be whole.
# ENOENT only counts before the worker has seen the name exist.
REPLACED_ERRNOS = (errno.ESTALE, errno.EIO, errno.ENOENT)


def shared_version(worker: int, seq: int, length: int) -> bytes:
    """The bytes of one shared version: a header naming it, then bytes that follow from it."""
    head = SHARED_HEADER.pack(MAGIC, worker, seq, length)
    body = random.Random(worker * 1_000_003 + seq).randbytes(max(0, length - len(head)))
    return (head + body)[:max(length, len(head))]


def identify_shared(data: bytes) -> tuple[int, int] | None:
    """(worker, seq) when `data` is exactly one shared version, else None."""
    if len(data) < SHARED_HEADER.size:
        return None
    magic, worker, seq, length = SHARED_HEADER.unpack_from(data)
    if magic != MAGIC or len(data) != max(length, SHARED_HEADER.size):
        return None
    return (worker, seq) if data == shared_version(worker, seq, length) else None


def describe_mix(data: bytes) -> str:
    """What a read that is not one whole version holds, for the failure message."""
    if len(data) >= SHARED_HEADER.size:
        magic, worker, seq, length = SHARED_HEADER.unpack_from(data)
        if magic == MAGIC:
            full = shared_version(worker, seq, length)
            if full.startswith(data):
                return (f"{len(data)} bytes: the first {len(data)} of version (worker {worker}, "
                        f"seq {seq}) of {len(full)} bytes, cut at a stale size")
            first = next(i for i, (x, y) in enumerate(zip(data, full, strict=False)) if x != y) \
                if data[:len(full)] != full[:len(data)] else min(len(data), len(full))
            return (f"{len(data)} bytes: version (worker {worker}, seq {seq}) of {len(full)} "
                    f"bytes up to offset {first}, other bytes after")
    return f"{len(data)} bytes without a version header (starts {data[:16].hex()})"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_all(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


# --------------------------------------------------------------------------
# Worker (runs in a child process)

class Worker:
    def __init__(self, index: int, root: str, deadline: float):
        self.i = index
        self.rng = random.Random(20261121 + index)
        self.root = root
        self.own = os.path.join(root, f"w{index}")
        self.shared = os.path.join(root, "shared")
        self.deadline = deadline
        self.files: dict[str, bytearray] = {}          # own files: exact content
        self.ops: dict[str, int] = {}
        self.placed: list[tuple[str, int, int]] = []   # (shared name, worker, seq) renamed in
        self.shared_reads = 0
        self.mixes: list[str] = []                      # shared reads that were not one version
        self.seen_shared: set[str] = set()              # shared names known to exist
        self.refused: dict[str, int] = {}
        self.seq = 0

    def p(self, name: str) -> str:
        return os.path.join(self.own, name)

    def some_size(self) -> int:
        r = self.rng.random()
        if r < 0.6:
            return self.rng.randrange(0, 8 * KiB)
        if r < 0.95:
            return self.rng.randrange(8 * KiB, 300 * KiB)
        return self.rng.randrange(MiB, 2 * MiB + 5000)   # crosses 1 MiB staging blocks

    # -- own files --------------------------------------------------------------
    def rewrite(self):
        name = self.rng.choice(OWN_NAMES)
        data = self.rng.randbytes(self.some_size())
        with open(self.p(name), "wb") as f:
            f.write(data)
        self.files[name] = bytearray(data)

    def append(self):
        name = self.rng.choice(OWN_NAMES)
        data = self.rng.randbytes(self.rng.randrange(1, 20 * KiB))
        with open(self.p(name), "ab") as f:
            f.write(data)
        self.files.setdefault(name, bytearray()).extend(data)

    def pwrite(self):
        name = self.rng.choice(OWN_NAMES)
        content = self.files.setdefault(name, bytearray())
        offset = self.rng.randrange(0, len(content) + 64 * KiB)
        data = self.rng.randbytes(self.rng.randrange(1, 40 * KiB))
        fd = os.open(self.p(name), os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            assert os.pwrite(fd, data, offset) == len(data)
        finally:
            os.close(fd)
        if offset > len(content):
            content.extend(bytes(offset - len(content)))
        content[offset:offset + len(data)] = data

    def truncate(self):
        name = self.rng.choice([n for n in OWN_NAMES if n in self.files] or OWN_NAMES)
        if name not in self.files:
            return
        content = self.files[name]
        size = self.rng.randrange(0, len(content) + 128 * KiB)
        os.truncate(self.p(name), size)
        if size < len(content):
            del content[size:]
        else:
            content.extend(bytes(size - len(content)))

    def rename(self):
        src, dst = self.rng.sample(OWN_NAMES, 2)
        if src not in self.files:
            return
        os.rename(self.p(src), self.p(dst))
        self.files[dst] = self.files.pop(src)

    def unlink(self):
        name = self.rng.choice(OWN_NAMES)
        if name not in self.files:
            return
        os.unlink(self.p(name))
        del self.files[name]

    def check_read(self):
        name = self.rng.choice(OWN_NAMES)
        if name not in self.files:
            try:
                os.stat(self.p(name))
            except FileNotFoundError:
                return
            raise AssertionError(f"{name} exists, the model says it was removed")
        data = read_all(self.p(name))
        want = bytes(self.files[name])
        if data != want:
            raise AssertionError(f"{self.p(name)}: read {len(data)} bytes sha {sha(data)[:12]}, "
                                 f"model {len(want)} sha {sha(want)[:12]}")

    def check_stat(self):
        name = self.rng.choice([n for n in OWN_NAMES if n in self.files] or OWN_NAMES)
        if name in self.files:
            size = os.stat(self.p(name)).st_size
            assert size == len(self.files[name]), f"{self.p(name)}: size {size}, model {len(self.files[name])}"

    def check_listing(self):
        for sub in ("", "sub"):
            got = sorted(n for n in os.listdir(os.path.join(self.own, sub)) if n != "sub")
            want = sorted(n.rpartition("/")[2] for n in self.files if n.rpartition("/")[0] == sub)
            assert got == want, f"listing of {self.own}/{sub}: {got}, model {want}"

    # -- shared files ---------------------------------------------------------------
    def replace_shared(self):
        self.seq += 1
        name = self.rng.choice(SHARED)
        length = self.some_size() + SHARED_HEADER.size
        tmp = os.path.join(self.shared, f".tmp-w{self.i}")
        with open(tmp, "wb") as f:
            f.write(shared_version(self.i, self.seq, length))
        os.rename(tmp, os.path.join(self.shared, name))
        self.placed.append((name, self.i, self.seq))
        self.seen_shared.add(name)

    def read_shared(self):
        name = self.rng.choice(SHARED)
        self.shared_reads += 1
        try:
            data = read_all(os.path.join(self.shared, name))
        except OSError as exc:
            if exc.errno not in REPLACED_ERRNOS:
                raise
            if exc.errno == errno.ENOENT and name in self.seen_shared:
                # once placed, a shared name is only ever replaced by rename(2),
                # which never leaves the name missing
                self.mixes.append(f"shared/{name}: ENOENT after it existed")
                return
            key = errno.errorcode[exc.errno]
            self.refused[key] = self.refused.get(key, 0) + 1
            return
        self.seen_shared.add(name)
        if identify_shared(data) is None:
            # Not fatal for the worker: the run goes on so that the end-of-run
            # checks still happen; the test fails on it after them.
            self.mixes.append(f"shared/{name}: {describe_mix(data)}")

    OPS = (("rewrite", 8), ("append", 6), ("pwrite", 8), ("truncate", 4), ("rename", 4),
           ("unlink", 2), ("check_read", 14), ("check_stat", 5), ("check_listing", 2),
           ("replace_shared", 5), ("read_shared", 10))

    def run(self) -> dict:
        os.makedirs(os.path.join(self.own, "sub"))
        names, weights = zip(*self.OPS, strict=True)
        error = None
        while time.time() < self.deadline:
            op = self.rng.choices(names, weights)[0]
            try:
                getattr(self, op)()
            except BaseException:    # noqa: BLE001 - the parent reports it
                error = f"worker {self.i}, operation {op} #{sum(self.ops.values())}:\n{traceback.format_exc()}"
                break
            self.ops[op] = self.ops.get(op, 0) + 1
        return {"worker": self.i, "error": error, "ops": self.ops,
                "files": {name: sha(bytes(c)) for name, c in self.files.items()},
                "sizes": {name: len(c) for name, c in self.files.items()},
                "placed": self.placed, "shared_reads": self.shared_reads, "refused": self.refused,
                "mixes": self.mixes}


def run_worker(args) -> dict:
    index, root, deadline = args
    return Worker(index, root, deadline).run()


def describe_blocked(children, root: str) -> str:
    """Where each still-running worker waits, and which files below `root` it has open."""
    lines = []
    for child in children:
        try:
            with open(f"/proc/{child.pid}/wchan") as f:
                wchan = f.read().strip()
            fd_dir = f"/proc/{child.pid}/fd"
            files = [os.readlink(os.path.join(fd_dir, fd)) for fd in os.listdir(fd_dir)]
        except OSError:
            continue
        open_below = [f for f in files if f.startswith(root)]
        lines.append(f"  pid {child.pid}: waits in {wchan or '-'}, open: {open_below or 'nothing below the mount'}")
    return "\n".join(lines) or "  (no worker process left)"


# --------------------------------------------------------------------------
# RSS

def rss_bytes(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


# --------------------------------------------------------------------------
# The test

def test_concurrent_workers_lose_nothing_and_memory_stays_flat(s3, bucket, mount):
    m = mount(bucket)
    root = str(m.path)
    os.mkdir(os.path.join(root, "shared"))
    pid = m.proc.pid
    start = time.time()
    deadline = start + STRESS_SECONDS
    ctx = multiprocessing.get_context("spawn")
    samples: list[tuple[float, int]] = []
    pool = ctx.Pool(WORKERS)
    try:
        pending = pool.map_async(run_worker, [(i, root, deadline) for i in range(WORKERS)])
        while not pending.ready():
            rss = rss_bytes(pid)
            if rss is not None:
                samples.append((time.time() - start, rss))
            if time.time() > deadline + HANG_GRACE:
                stuck = describe_blocked(ctx.active_children(), root)
                # A worker blocked in a FUSE request never returns by itself:
                # killing s3pyfs makes the kernel abort its requests.
                m.expect_clean_exit = False
                m.proc.kill()
                pytest.fail(f"workers still blocked {HANG_GRACE:.0f} s after the end of the run:\n"
                            f"{stuck}\n{m.describe('s3pyfs killed to release them')}", pytrace=False)
            pending.wait(1.0)
        results = pending.get()
    finally:
        pool.terminate()
        pool.join()

    errors = [r["error"] for r in results if r["error"]]
    assert not errors, "\n\n".join(errors)
    total_ops = sum(sum(r["ops"].values()) for r in results)
    print(f"\nstress: {total_ops} operations by {WORKERS} workers in {STRESS_SECONDS:.0f} s")
    for r in results:
        print(f"  worker {r['worker']}: {sum(r['ops'].values())} ops, {r['shared_reads']} shared reads, "
              f"refused {r['refused'] or 0}, not one version {len(r['mixes'])}")
    assert all(r["ops"].get("check_read", 0) > 0 and r["ops"].get("rewrite", 0) > 0 for r in results), \
        "a worker did not get to run its operations"

    # Soak: RSS must not keep growing.  Samples after a 10 s warm-up; the median
    # of the last third must stay within 64 MiB of the median of the first third.
    # Why 64 MiB: a sequential reader may hold a read-ahead window of up to 6
    # parts of 8 MiB plus one behind, and glibc/pymalloc keep freed arenas, so a
    # healthy process's RSS moves by tens of MiB with what happens to be in
    # flight; a leak of the data passing through (GiBs over the run) or of
    # per-operation state (tens of thousands of operations) exceeds that bound
    # by far.  Medians, not extremes, so one busy moment does not decide.
    steady = [rss for t, rss in samples if t >= 10.0]
    assert len(steady) >= 15, f"too few RSS samples: {len(steady)}"
    third = len(steady) // 3
    first, last = statistics.median(steady[:third]), statistics.median(steady[-third:])
    print(f"  s3pyfs RSS: first third median {first / MiB:.1f} MiB, last third median "
          f"{last / MiB:.1f} MiB, peak {max(steady) / MiB:.1f} MiB ({len(steady)} samples)")
    assert last - first <= 64 * MiB, \
        f"s3pyfs RSS grew from {first / MiB:.1f} MiB to {last / MiB:.1f} MiB (median of thirds)"

    # The expected final state: own files exactly; shared files one placed version.
    expected = {}
    for r in results:
        for name, digest in r["files"].items():
            expected[f"w{r['worker']}/{name}"] = (digest, r["sizes"][name])
    placed = {}
    for r in results:
        for name, worker, seq in r["placed"]:
            placed.setdefault(name, set()).add((worker, seq))

    assert m.unmount() == 0, m.describe("s3pyfs did not exit 0 after unmount")

    objects = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            if not obj["Key"].endswith("/"):
                objects[obj["Key"]] = obj["Size"]
    shared_keys = {k for k in objects if k.startswith("shared/")}
    assert shared_keys == {f"shared/{n}" for n in placed}, "shared objects (no temporary files left)"
    assert sorted(set(objects) - shared_keys) == sorted(expected), "keys of the workers' files"
    for key, (digest, size) in expected.items():
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        assert (len(body), sha(body)) == (size, digest), f"object {key} differs from the model"
    for name, versions in placed.items():
        body = s3.get_object(Bucket=bucket, Key=f"shared/{name}")["Body"].read()
        assert identify_shared(body) in versions, f"shared/{name} is not a version placed there"

    # A fresh mount reads the same through FUSE.
    m2 = mount(bucket)
    for key, (digest, size) in expected.items():
        data = read_all(os.path.join(m2.path, key))
        assert (len(data), sha(data)) == (size, digest), f"{key} read through a fresh mount"
    for name, versions in placed.items():
        assert identify_shared(read_all(os.path.join(m2.path, "shared", name))) in versions
    for i in range(WORKERS):
        listed = sorted(os.listdir(os.path.join(m2.path, f"w{i}")))
        want = sorted({k.split("/")[1] for k in expected if k.startswith(f"w{i}/")} | {"sub"})
        assert listed == want, f"listing of w{i} on a fresh mount"

    # Last, so that the checks above ran too: no read of a shared file returned
    # anything but one whole version, and no shared name went missing.
    mixes = [f"worker {r['worker']}: {mix}" for r in results for mix in r["mixes"]]
    assert not mixes, f"{len(mixes)} reads of shared files were not one whole version:\n" + \
        "\n".join(mixes[:10])


# A reader of a 40 MiB file: 4 MiB sequentially (read-ahead parts start), then a
# small file is renamed over it in the same mount, then the reader goes on.
READ_ON_AFTER_REPLACE = r"""
import os, sys
mnt = sys.argv[1]
big, tmp = os.path.join(mnt, "big"), os.path.join(mnt, "tmp")
fd = os.open(big, os.O_RDONLY)
for off in range(0, 4 << 20, 128 << 10):
    assert os.pread(fd, 128 << 10, off) == b"C" * (128 << 10)
with open(tmp, "wb") as f:
    f.write(b"D" * 100)
os.rename(tmp, big)
seen = set()
try:
    for off in range(4 << 20, 40 << 20, 128 << 10):
        seen |= set(os.pread(fd, 128 << 10, off))
    print("read", sorted(seen))
except OSError as exc:
    print("error", exc.errno, sorted(seen))
"""


def test_reader_of_a_file_replaced_by_rename_ends_without_new_bytes(s3, bucket, mount):
    m = mount(bucket)
    with open(m.path / "big", "wb") as f:
        f.write(b"C" * (40 * MiB))
    reader = subprocess.Popen([sys.executable, "-c", READ_ON_AFTER_REPLACE, str(m.path)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = reader.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        m.expect_clean_exit = False
        m.proc.kill()                      # aborts the FUSE connection: frees the reader
        reader.communicate()
        pytest.fail(m.describe("a read of the replaced file blocked for 90 s (s3pyfs killed)"),
                    pytrace=False)
    kind, *rest = out.strip().split(maxsplit=1)
    assert kind in ("read", "error"), out
    if kind == "read":
        assert rest == [str([ord("C")])], f"the old handle read other bytes than the old file's: {out}"
    else:
        code, seen = rest[0].split(maxsplit=1)
        assert int(code) in (errno.ESTALE, errno.EIO), out
        assert seen in ("[]", str([ord("C")])), f"bytes of the new file through the old handle: {out}"
    assert (m.path / "big").read_bytes() == b"D" * 100
    assert s3.get_object(Bucket=bucket, Key="big")["Body"].read() == b"D" * 100
