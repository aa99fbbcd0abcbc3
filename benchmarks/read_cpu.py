"""Mounter CPU and wall time of a cold sequential read, A/B between s3pyfs trees.

    python benchmarks/read_cpu.py [--size-mib 1024] [--reps 2] TREE [TREE ...]

Starts a private SeaweedFS (tests/support.py), puts one object of random bytes,
then for every repetition and every TREE (a directory holding the s3pyfs package,
e.g. /work/main and a worktree; interleaved so that load hits both alike):
drops the page cache, mounts it in the foreground, reads the file with 1 MiB
reads checking its SHA-256, and prints the mounter's user+sys CPU seconds
(/proc/PID/stat) per GiB and the wall time.  Root only (FUSE, drop_caches).
Also: `--random SECONDS` reads 4 KiB blocks at random offsets (O_DIRECT) for
that long and prints IOPS and the bytes S3 sent per byte read.
"""

from __future__ import annotations

import argparse
import hashlib
import mmap
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import support  # noqa: E402

MiB = 1024 * 1024


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def mount(tree: str, seaweed, bucket: str, workdir: Path, opts: list[str]) -> support.Mount:
    workdir.mkdir(parents=True, exist_ok=True)
    passwd = workdir / "passwd"
    passwd.write_text(f"{seaweed.access_key}:{seaweed.secret_key}\n")
    os.chmod(passwd, 0o600)
    mnt = workdir / "mnt"
    options = [f"url={seaweed.endpoint}", "use_path_request_style", f"passwd_file={passwd}", *opts]
    cmd = [sys.executable, "-m", "s3pyfs", bucket, str(mnt), "-f", "-o", ",".join(options)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(PYTHONPATH=tree, AWS_EC2_METADATA_DISABLED="true", AWS_CONFIG_FILE=os.devnull,
               AWS_SHARED_CREDENTIALS_FILE=os.devnull)
    m = support.Mount(mnt, cmd, env, workdir / "s3pyfs.log")
    m.start()
    m.wait_mounted(30)
    return m


def sequential(path: Path, digest: str) -> float:
    started = time.perf_counter()
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(MiB)
        while n := f.readinto(buf):
            h.update(memoryview(buf)[:n])
    if h.hexdigest() != digest:
        raise SystemExit(f"{path}: wrong bytes")
    return time.perf_counter() - started


def random_reads(path: Path, size: int, seconds: float) -> list[int]:
    """Reads done in each second."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    buf = mmap.mmap(-1, 4096)
    rng = random.Random(1)
    counts = [0] * int(seconds)
    started = time.perf_counter()
    try:
        while (second := int(time.perf_counter() - started)) < len(counts):
            os.preadv(fd, [buf], rng.randrange(size // 4096) * 4096)
            counts[second] += 1
    finally:
        os.close(fd)
    return counts


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("trees", nargs="+")
    p.add_argument("--size-mib", type=int, default=1024)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--random", type=int, default=0, metavar="SECONDS")
    p.add_argument("--profile", metavar="PREFIX", help="py-spy raw profiles to PREFIX.REP.TREE.txt")
    p.add_argument("-o", dest="opts", default="", help="extra -o options for every mount")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="read-cpu-") as tmp:
        seaweed = support.SeaweedServer(Path(tmp) / "weed")
        seaweed.start()
        try:
            client = seaweed.client()
            bucket = "readcpu"
            client.create_bucket(Bucket=bucket)
            data = os.urandom(args.size_mib * MiB)
            digest = hashlib.sha256(data).hexdigest()
            client.upload_file  # noqa: B018
            import io

            from boto3.s3.transfer import TransferConfig
            client.upload_fileobj(io.BytesIO(data), bucket, "seq.bin",
                                  Config=TransferConfig(multipart_chunksize=64 * MiB))
            del data
            opts = [o for o in args.opts.split(",") if o]
            for rep in range(args.reps):
                for i, tree in enumerate(args.trees):
                    drop_caches()
                    m = mount(tree, seaweed, bucket, Path(tmp) / f"m{rep}-{i}", opts)
                    try:
                        spy = None
                        if args.profile:
                            import subprocess
                            spy = subprocess.Popen(["py-spy", "record", "-p", str(m.proc.pid), "-f", "raw", "-o",
                                                    f"{args.profile}.{rep}.{i}.txt", "-r", "200"],
                                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                        before = cpu_seconds(m.proc.pid)
                        if args.random:
                            counts = random_reads(m.path / "seq.bin", args.size_mib * MiB, args.random)
                            cpu = cpu_seconds(m.proc.pid) - before
                            print(f"rep {rep} {tree}: random 4 KiB: {sum(counts) / len(counts):.0f} IOPS, "
                                  f"{cpu / sum(counts) * 1e6:.0f} us CPU per read; per second: {counts}", flush=True)
                        else:
                            wall = sequential(m.path / "seq.bin", digest)
                            cpu = cpu_seconds(m.proc.pid) - before
                            gib = args.size_mib / 1024
                            print(f"rep {rep} {tree}: {cpu / gib:.2f} s CPU/GiB, {wall:.2f} s wall, "
                                  f"{args.size_mib / wall:.0f} MiB/s", flush=True)
                    finally:
                        if spy is not None:
                            spy.send_signal(2)
                            spy.wait(30)
                        problems = m.close()
                        if problems:
                            print("\n".join(problems), file=sys.stderr)
        finally:
            seaweed.stop()


if __name__ == "__main__":
    main()
