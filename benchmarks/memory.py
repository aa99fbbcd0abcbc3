#!/usr/bin/env python3
"""Peak RSS of the mount process under many concurrent readers and writers.

    .venv/bin/python benchmarks/memory.py [--readers 16] [--writers 32] [--write-size-mib 64]
        [--targets s3pyfs,s3fs] [--s3pyfs-options max_memory=256]

Starts a private SeaweedFS (as benchmarks/run.py does), puts `--readers`
objects of 64 MiB and up in a bucket, then for each target (s3pyfs from this
tree; s3fs-fuse when `s3fs` is installed) mounts the bucket in the foreground
and runs, each on a fresh mount:

  readers   one thread per object reading it sequentially with 1 MiB reads,
            pausing 3 s after 24 MiB (tests/memory_load.py)
  writers   `--writers` threads each writing its own file of `--write-size-mib`
            MiB with 1 MiB writes, then close()

and prints the mounter's idle RSS after mounting, its peak RSS (VmHWM, reset
after mounting) and the wall time of each workload.  Needs root and FUSE.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

import memory_load  # noqa: E402  (tests/memory_load.py)
from bench_mounts import Mounter  # noqa: E402
from bench_server import BenchSeaweed  # noqa: E402

MiB = 1 << 20
BUCKET = "s3pyfs-memory"


def rss_mib(pid: int, field: str) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def run_one(mounter: Mounter, workload, label: str) -> dict:
    mounter.mount()
    try:
        pid = mounter.proc.pid
        time.sleep(1.0)                      # let start-up settle
        idle = rss_mib(pid, "VmRSS")
        memory_load.reset_peak_rss(pid)
        started = time.monotonic()
        workload(mounter.path)
        wall = time.monotonic() - started
        peak = memory_load.peak_rss_mib(pid)
    finally:
        mounter.unmount()
    return {"target": mounter.kind, "workload": label, "idle": idle, "peak": peak, "wall": wall}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readers", type=int, default=16)
    parser.add_argument("--writers", type=int, default=32)
    parser.add_argument("--write-size-mib", type=int, default=64)
    parser.add_argument("--targets", default="s3pyfs,s3fs")
    parser.add_argument("--s3pyfs-options", default="")
    parser.add_argument("--workloads", default="readers,writers")
    args = parser.parse_args()
    targets = [t for t in args.targets.split(",") if t]
    if "s3fs" in targets and not shutil.which("s3fs"):
        print("s3fs is not installed: measuring s3pyfs only", file=sys.stderr)
        targets.remove("s3fs")
    tmp = Path(tempfile.mkdtemp(prefix="s3pyfs-memory-"))
    server = BenchSeaweed(tmp / "seaweed")
    server.start()
    results = []
    try:
        client = server.client()
        client.create_bucket(Bucket=BUCKET)
        passwd = tmp / "passwd"
        passwd.write_text(f"{server.access_key}:{server.secret_key}\n")
        passwd.chmod(0o600)
        workloads = args.workloads.split(",")
        if "readers" in workloads:
            sizes, data = memory_load.put_reader_objects(client, BUCKET, args.readers)
        for kind in targets:
            extra = args.s3pyfs_options if kind == "s3pyfs" else ""
            mounter = Mounter(kind, BUCKET, server.endpoint, passwd, tmp / kind, extra_options=extra)
            if "readers" in workloads:
                results.append(run_one(mounter, lambda root: memory_load.read_concurrently(root, sizes, data),
                                       f"{args.readers} readers x 64-{63 + args.readers} MiB"))
            if "writers" in workloads:
                size = args.write_size_mib * MiB
                results.append(run_one(
                    mounter, lambda root: memory_load.write_concurrently(root / f"w-{kind}", args.writers, size),
                    f"{args.writers} writers x {args.write_size_mib} MiB"))
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{'target':<8} {'workload':<28} {'idle RSS':>9} {'peak RSS':>9} {'wall':>7}")
    for r in results:
        print(f"{r['target']:<8} {r['workload']:<28} {r['idle']:>5.0f} MiB {r['peak']:>5.0f} MiB {r['wall']:>6.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
