"""Where a cold sequential read's wall time goes: s3pyfs trees vs s3fs-fuse vs direct S3.

    python benchmarks/read_wall.py [--size-mib 256] [--readers 1] [--reps 3] \
        [--targets direct,s3fs,s3pyfs] [--tree A=/work/main --tree B=/work/wt/x] [-o OPTS]

Starts a private SeaweedFS (tests/support.py), puts `readers` objects of
`size-mib` MiB each (random bytes), then per repetition, for every target in
turn (interleaved so that outside load hits all alike): drops the page cache,
(re)mounts, reads every object with 1 MiB `readv`s, one thread per object, and
prints per target:
  * wall seconds and the ratio of direct S3's wall time in the same repetition,
  * mounter CPU (user+sys of its process, /proc/PID/stat), SeaweedFS CPU, and
    whole-machine busy CPU seconds (/proc/stat: all but idle and iowait), each
    per GiB read,
  * with s3pyfs, the FUSE read requests the mount saw and their mean size
    (statistics file) when available.
Direct S3 is boto3 with 8 ranged GETs of 8 MiB in flight (benchmarks/bench_direct.py).
The bytes are compared with the object's SHA-256 once per target and repetition
after the timed read (not inside it: hashing would add client CPU to the machine's).
Root only (FUSE, drop_caches).  Medians at the end.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_direct  # noqa: E402
import bench_fsops  # noqa: E402
import bench_mounts  # noqa: E402  (puts tests/ on sys.path)
import support  # noqa: E402

MiB = 1 << 20
GiB = 1 << 30


def machine_busy() -> float:
    """Busy CPU seconds of the whole machine so far (all CPUs)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int | None) -> float:
    if pid is None:
        return 0.0
    try:
        return bench_mounts.proc_cpu_seconds(pid) or 0.0
    except OSError:
        return 0.0


def run_delay(pid: int | None) -> float:
    """Seconds the threads of `pid` spent runnable but waiting for a CPU (schedstat)."""
    if pid is None:
        return 0.0
    total = 0
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                total += int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[1])
            except (OSError, IndexError, ValueError):
                continue
    except OSError:
        return 0.0
    return total / 1e9


def proc_sys(pid: int | None) -> float:
    """System (kernel) CPU seconds of a process."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return int(fields[12]) / os.sysconf("SC_CLK_TCK")


def self_cpu() -> float:
    t = os.times()
    return t.user + t.system


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 * MiB):
            h.update(chunk)
    return h.hexdigest()


def fuse_reads(mnt: Path, tree: str) -> str:
    """FUSE READ requests and their mean size, from the mount's statistics file
    (rewritten every 2 s, so read after a pause)."""
    import json
    sys.path.insert(0, tree)
    try:
        from s3pyfs.metrics import stats_paths
    finally:
        sys.path.pop(0)
    time.sleep(2.5)
    for path in stats_paths(str(mnt)):
        try:
            fuse = json.loads(Path(path).read_text())["fuse"]
        except (OSError, ValueError, KeyError):
            continue
        reads = fuse.get("operations", {}).get("read", 0)
        if reads:
            return f"FUSE reads {reads}, mean {fuse.get('read_bytes', 0) / reads / 1024:.0f} KiB"
    return ""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--readers", type=int, default=1)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--targets", default="direct,s3fs,s3pyfs")
    ap.add_argument("--tree", action="append", default=[], metavar="NAME=DIR",
                    help="an s3pyfs tree to mount (default: this repository); NAME=DIR@OPTS adds -o OPTS")
    ap.add_argument("--tree-env", action="append", default=[], metavar="NAME:K=V",
                    help="an environment variable for the mounts of tree NAME")
    ap.add_argument("-o", dest="opts", default="", help="extra -o options for s3pyfs mounts")
    ap.add_argument("--perf", metavar="PREFIX", help="perf record -g of the whole machine during each read")
    ap.add_argument("--profile", metavar="PREFIX",
                    help="py-spy raw profile of each s3pyfs read (idle frames too) to PREFIX.NAME.REP.txt")
    args = ap.parse_args()
    trees = dict(t.split("=", 1) for t in args.tree) or {"s3pyfs": str(Path(__file__).resolve().parent.parent)}
    tree_opts = {name: tree.partition("@")[2] for name, tree in trees.items()}     # NAME=DIR@OPTS
    trees = {name: tree.partition("@")[0] for name, tree in trees.items()}
    targets: list[str] = []
    for t in args.targets.split(","):
        targets.extend(trees if t == "s3pyfs" else [t])
    size = args.size_mib * MiB
    total_gib = size * args.readers / GiB
    rows: dict[str, list[tuple[float, ...]]] = {t: [] for t in targets}
    with tempfile.TemporaryDirectory(prefix="read-wall-") as tmp_name:
        tmp = Path(tmp_name)
        seaweed = support.SeaweedServer(tmp / "weed")
        seaweed.start()
        try:
            bucket = "readwall"
            client = seaweed.client()
            client.create_bucket(Bucket=bucket)
            keys, digests = [], []
            from boto3.s3.transfer import TransferConfig
            for i in range(args.readers):
                data = os.urandom(size)
                digests.append(hashlib.sha256(data).hexdigest())
                keys.append(f"obj-{i}.bin")
                client.upload_fileobj(io.BytesIO(data), bucket, keys[-1],
                                      Config=TransferConfig(multipart_chunksize=64 * MiB))
                del data
            passwd = tmp / "passwd"
            passwd.write_text(f"{seaweed.access_key}:{seaweed.secret_key}\n")
            os.chmod(passwd, 0o600)
            direct = bench_direct.Direct(bench_direct.make_client(seaweed.endpoint, seaweed.access_key,
                                                                  seaweed.secret_key), bucket)
            weed_pid = seaweed.proc.pid if seaweed.proc else None
            for rep in range(args.reps):
                for target in targets:
                    drop_caches()
                    m = None
                    spy = None
                    pyspy = str(Path(sys.executable).with_name("py-spy"))
                    if target != "direct":
                        kind = "s3fs" if target == "s3fs" else "s3pyfs"
                        m = bench_mounts.Mounter(kind, bucket, seaweed.endpoint, passwd,
                                                 tmp / f"{target}-{rep}",
                                                 extra_options=",".join(o for o in (args.opts, tree_opts.get(target, "")) if o)
                                                 if kind == "s3pyfs" else "",
                                                 source_dir=Path(trees[target]) if kind == "s3pyfs" else None)
                        for item in args.tree_env:
                            name, _, kv = item.partition(":")
                            if name == target:
                                k, _, v = kv.partition("=")
                                base_env = m.env
                                m.env = lambda base_env=base_env, k=k, v=v: {**base_env(), k: v}
                        m.mount()
                        if args.profile and kind == "s3pyfs":
                            import subprocess
                            spy = subprocess.Popen([pyspy, "record", "-p", str(m.proc.pid), "-f", "raw",
                                                    "--idle", "--threads", "-r", "250", "-o",
                                                    f"{args.profile}.{target}.{rep}.txt"],
                                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                            time.sleep(1.0)
                    try:
                        pid = m.proc.pid if m is not None else None
                        q0 = machine_busy()
                        time.sleep(1.0)         # the machine's busy rate without this read (outside load)
                        base_rate = machine_busy() - q0
                        s0, d0, k0 = self_cpu(), run_delay(pid), proc_sys(pid)
                        perf = None
                        if args.perf:
                            import subprocess
                            perf = subprocess.Popen(["perf", "record", "-a", "-F", "499", "-o",
                                                     f"{args.perf}.{target}.{rep}.data"],
                                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                            time.sleep(0.5)
                        c0, w0, b0, t0 = proc_cpu(pid), proc_cpu(weed_pid), machine_busy(), time.perf_counter()
                        if m is None:
                            direct.download([(k, size) for k in keys])
                        else:
                            got = bench_fsops.read_files([str(m.path / k) for k in keys])["bytes"]
                            if got != size * args.readers:
                                raise SystemExit(f"{target}: read {got} bytes")
                        wall = time.perf_counter() - t0
                        c1, w1, b1 = proc_cpu(pid), proc_cpu(weed_pid), machine_busy()
                        s1, d1, k1 = self_cpu(), run_delay(pid), proc_sys(pid)
                        if perf is not None:
                            perf.send_signal(2)
                            perf.wait(60)
                        if spy is not None:
                            spy.send_signal(2)
                            spy.wait(60)
                        extra = ""
                        if m is not None:
                            extra = fuse_reads(m.path, trees[target]) if m.kind == "s3pyfs" else ""
                            if sha256_of(m.path / keys[0]) != digests[0]:
                                raise SystemExit(f"{target}: wrong bytes")
                    finally:
                        if m is not None:
                            m.unmount()
                    row = (wall, (c1 - c0) / total_gib, (w1 - w0) / total_gib, (b1 - b0) / total_gib,
                           (s1 - s0) / total_gib, base_rate * wall / total_gib, (d1 - d0) / total_gib, (k1 - k0) / total_gib)
                    rows[target].append(row)
                    print(f"rep {rep} {target:>8}: {wall:6.2f} s wall, {size * args.readers / MiB / wall:5.0f} MiB/s; "
                          f"per GiB CPU: mounter {row[1]:.2f} s (sys {row[7]:.2f}), weed {row[2]:.2f} s, machine {row[3]:.2f} s "
                          f"({row[3] * total_gib / wall:.2f} cores busy), reader/client {row[4]:.2f} s, "
                          f"outside load ~{row[5]:.2f} s CPU, mounter runnable-not-running {row[6]:.2f} s "
                          f"{extra}", flush=True)
        finally:
            seaweed.stop()
    print(f"\nmedians ({args.reps} reps, {args.readers} x {args.size_mib} MiB):")
    base = statistics.median(r[0] for r in rows["direct"]) if rows.get("direct") else None
    for target, rs in rows.items():
        med = [statistics.median(r[k] for r in rs) for k in range(8)]
        ratio = f" {base / med[0]:.2f}x direct," if base else ""
        print(f"  {target:>8}: {med[0]:.2f} s,{ratio} CPU s/GiB: mounter {med[1]:.2f} (sys {med[7]:.2f}) "
              f"weed {med[2]:.2f} machine {med[3]:.2f} reader/client {med[4]:.2f}; "
              f"mounter waited for a CPU {med[6]:.2f} s/GiB")

if __name__ == "__main__":
    main()
