#!/usr/bin/env python3
"""Latency of lookups and listings while the mounter's local disk is stalled (issue 13).

    .venv/bin/python benchmarks/stall.py [--stall-seconds 15] [--stats 8] [--write-mib 48]
        [--s3pyfs-rev REV] [--targets s3pyfs,s3pyfs-rev,s3fs,s3fs-cache] [--keep]

Starts a private SeaweedFS on 127.0.0.1 (as benchmarks/run.py does) and, for
each target, on a fresh mount:

1. mounts benchmarks/stall_disk.py (tests/stall_fs.py, a pass-through FUSE
   filesystem whose reads, writes and fsyncs wait while CONTROL/pause exists,
   plus the link() and unlinked-file attributes s3fs-fuse needs) and the
   bucket with its local state directory on it:
     s3pyfs       this tree, `-o tmpdir=STALLDISK`
     s3pyfs-rev   the same at git revision `--s3pyfs-rev` (git archive; only
                  when that option is given)
     s3fs         s3fs-fuse with `-o tmpdir=STALLDISK`: without a cache,
                  s3fs keeps the data of a file being written in an unlinked
                  temporary file made in tmpdir
     s3fs-cache   s3fs-fuse with `-o use_cache=STALLDISK/s3fs-cache`: with a
                  cache, s3fs writes the file's data into the cache directory
                  (tmpdir is then not used for it)
   The "write blocked" column shows whether the write really reached the
   stalled disk, so the s3fs rows say which option put the data there.
2. starts a `--write-mib` MiB sequential write of a new file (1 MiB writes,
   in a child process), pauses the stall disk as soon as the write has
   begun, and waits until a request of the mounter waits on it;
3. during the stall, each in its own thread and all at once: `stat` of
   `--stats` existing files that were never looked up on this mount, and one
   listing (readdir, what `ls` does) of a directory never listed;
4. keeps the disk paused for `--stall-seconds` from the moment the stall
   caught a request; a call still not returned then is counted as blocked
   for the whole stall (shown as ">=S");
5. unpauses, waits for the write to finish (bounded), checks the object in
   S3 (full size, every byte), unmounts (bounded; a hung mounter is aborted
   and killed) and unmounts the stall disk.

Prints one row per target: median and max latency of the stats, the
listing's latency, how many calls were still blocked when the disk came
back, whether the write was still blocked throughout the stall, the total
time of the write (open to close, stall included) and the S3 check.
Needs root, FUSE and the `weed` binary of the test extras; s3fs-fuse rows
are skipped when `s3fs` is not installed.  Stops by itself: every wait is
bounded.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

import support  # noqa: E402  (tests/support.py)
from bench_mounts import Mounter, MountFailed, force_unmount, mount_entry  # noqa: E402
from bench_server import BenchSeaweed  # noqa: E402

MiB = 1 << 20
BUCKET = "s3pyfs-stall"
LISTED_ENTRIES = 20

# The writer: 1 MiB writes of a pattern the check below can recompute.
WRITER = """
import sys, time
path, count = sys.argv[1], int(sys.argv[2])
started = time.monotonic()
with open(path, "wb") as f:
    for i in range(count):
        f.write(bytes([i % 251]) * (1024 * 1024))
        f.flush()
        if i == 1:
            print("started", flush=True)
print("closed %.3f" % (time.monotonic() - started), flush=True)
"""


def log(msg: str) -> None:
    print(f"[stall] {msg}", file=sys.stderr, flush=True)


def expected_digest(mib: int) -> str:
    h = hashlib.sha256()
    for i in range(mib):
        h.update(bytes([i % 251]) * MiB)
    return h.hexdigest()


def export_rev(rev: str, dest: Path) -> Path:
    """s3pyfs/ of git revision ``rev`` extracted into ``dest`` (with a REVISION file)."""
    repo = str(HERE.parent)
    short = subprocess.run(["git", "-C", repo, "rev-parse", "--short", rev], check=True,
                           capture_output=True, text=True, timeout=30).stdout.strip()
    archive = subprocess.run(["git", "-C", repo, "archive", short, "s3pyfs"], check=True,
                             capture_output=True, timeout=60).stdout
    dest.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True, timeout=60)
    (dest / "REVISION").write_text(short + "\n")
    return dest


class StallDisk:
    """tests/stall_fs.py mounted at WORKDIR/disk; pause()/resume() stall its data I/O."""

    def __init__(self, workdir: Path):
        self.source = workdir / "disk-src"
        self.path = Path(os.path.realpath(workdir)) / "disk"
        self.control = workdir / "disk-ctl"
        self.log_path = workdir / "stall_fs.log"
        self.proc: subprocess.Popen | None = None

    @property
    def pause_file(self) -> Path:
        return self.control / "pause"

    def start(self, timeout: float = 30.0) -> None:
        for d in (self.source, self.path, self.control):
            d.mkdir(parents=True, mode=0o700)
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, str(HERE / "stall_disk.py"),
                 str(self.source), str(self.path), str(self.control)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        if not support.wait_until(lambda: (self.control / "ready").exists()
                                  and mount_entry(self.path) is not None, timeout):
            self.stop()
            raise MountFailed(f"stall_fs did not mount:\n{support.tail(self.log_path)}")

    def pause(self) -> None:
        (self.control / "blocked").unlink(missing_ok=True)
        self.pause_file.touch()

    def caught_something(self) -> bool:
        return (self.control / "blocked").exists()

    def resume(self) -> None:
        self.pause_file.unlink(missing_ok=True)

    def stop(self) -> None:
        self.resume()
        if mount_entry(self.path) is not None:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                subprocess.run(["fusermount3", "-u", str(self.path)], capture_output=True,
                               stdin=subprocess.DEVNULL, timeout=30)
        if self.proc is not None:
            support.stop_process(self.proc, grace=10)
            self.proc = None
        force_unmount(self.path)


class Probe(threading.Thread):
    """One call in its own daemon thread (a call on a hung mount may never return)."""

    def __init__(self, name: str, fn):
        super().__init__(name=name, daemon=True)
        self.fn = fn
        self.started = self.ended = None
        self.result = self.error = None

    def run(self) -> None:
        self.started = time.monotonic()
        try:
            self.result = self.fn()
        except OSError as exc:
            self.error = exc
        self.ended = time.monotonic()

    def latency(self) -> float | None:
        """Seconds the call took, None while it has not returned."""
        ended = self.ended
        return None if ended is None else ended - self.started


def put_objects(client, prefix: str, stats: int) -> None:
    for i in range(stats):
        client.put_object(Bucket=BUCKET, Key=f"{prefix}/others/f{i}", Body=b"x" * (i + 1))
    for i in range(LISTED_ENTRIES):
        client.put_object(Bucket=BUCKET, Key=f"{prefix}/listed/e{i:02d}", Body=b"y")


def run_target(label: str, mounter: Mounter, disk: StallDisk, client, prefix: str,
               args, digest: str) -> dict:
    row = {"target": label, "version": mounter.version(), "note": ""}
    root = mounter.path / prefix
    writer = None
    try:
        mounter.mount()
        writer_started = time.monotonic()
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(root / "big"), str(args.write_mib)],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        line = [b""]
        reader = threading.Thread(target=lambda: line.__setitem__(0, writer.stdout.readline()), daemon=True)
        reader.start()
        reader.join(60)
        if line[0].strip() != b"started":
            with contextlib.suppress(subprocess.TimeoutExpired):
                writer.wait(5)
            err = writer.stderr.read().decode(errors="replace")[-300:] if writer.poll() is not None else ""
            raise MountFailed(f"the writer did not start: {line[0]!r} {err}")
        disk.pause()
        caught = support.wait_until(disk.caught_something, 30)
        stalled_at = time.monotonic()
        row["caught"] = caught
        if not caught:
            row["note"] = "the write never reached the stall disk within 30 s"
        probes = [Probe(f"stat f{i}", lambda i=i: os.stat(root / "others" / f"f{i}").st_size)
                  for i in range(args.stats)]
        listing = Probe("ls listed", lambda: sorted(e.name for e in os.scandir(root / "listed")))
        for p in probes + [listing]:
            p.start()
        end = stalled_at + args.stall_seconds
        for p in probes + [listing]:
            p.join(max(0.0, end - time.monotonic()))
        # the timeout guard: whatever has not returned by now was blocked for the whole stall
        lat_stats = [p.latency() for p in probes]
        lat_ls = listing.latency()
        row["write_blocked"] = caught and writer.poll() is None and disk.pause_file.exists()
        while time.monotonic() < end:          # keep the stall for its full length
            time.sleep(0.1)
        disk.resume()
        row["stat_lat"] = lat_stats
        row["ls_lat"] = lat_ls
        row["stat_ok"] = all(p.error is None and p.result == i + 1 for i, p in enumerate(probes)
                             if p.ended is not None)
        row["ls_ok"] = listing.ended is None or (listing.error is None and listing.result
                                                 == [f"e{i:02d}" for i in range(LISTED_ENTRIES)])
        try:
            out, err = writer.communicate(timeout=args.write_timeout)
        except subprocess.TimeoutExpired:
            row["note"] += f" write not finished {args.write_timeout:.0f}s after the stall;"
            raise MountFailed("write hung") from None
        row["write_total"] = time.monotonic() - writer_started
        rest = (line[0] + out).split()
        if writer.returncode != 0 or b"closed" not in rest:
            row["note"] += f" writer failed ({writer.returncode}): {err.decode(errors='replace')[-300:]};"
        if not row["stat_ok"] or not row["ls_ok"]:
            row["note"] += " a stat or the listing returned a wrong answer or an error;"
        # the object in S3: whole and right
        body = client.get_object(Bucket=BUCKET, Key=f"{prefix}/big")["Body"].read()
        row["s3_ok"] = len(body) == args.write_mib * MiB and hashlib.sha256(body).hexdigest() == digest
        if not row["s3_ok"]:
            row["note"] += f" object in S3 has {len(body)} bytes / wrong content;"
        # every probe that was blocked has returned by now (or the mount is broken)
        for p in probes + [listing]:
            p.join(30)
    except (MountFailed, OSError, subprocess.SubprocessError) as exc:
        row["note"] += f" {exc};"
    finally:
        disk.resume()
        if writer is not None and writer.poll() is None:
            mounter.kill()                     # aborts the FUSE connection: the writer gets an error
            with contextlib.suppress(ProcessLookupError):
                writer.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                writer.wait(30)
        if mounter.proc is not None:
            try:
                mounter.unmount(timeout=60)
            except MountFailed as exc:
                row["note"] += f" {exc};"
        if mounter.mounted:
            mounter.kill()
        disk.stop()
    return row


def fmt(value: float | None, stall: float) -> str:
    return f">={stall:.0f}" if value is None else f"{value:.3f}"


def table(rows: list[dict], stall: float) -> str:
    lines = [f"{'target':<11} {'stat median':>11} {'stat max':>9} {'ls':>7} {'blocked':>8} "
             f"{'write blocked':>13} {'write total':>11} {'S3 check':>8}"]
    for r in rows:
        lat = r.get("stat_lat")
        if lat is None:
            lines.append(f"{r['target']:<11} failed:{r['note']}")
            continue
        # an unanswered call counts as the whole stall (a lower bound) for the median
        as_numbers = [stall if v is None else v for v in lat]
        med = statistics.median(as_numbers)
        med_s = f">={med:.0f}" if sum(v is None for v in lat) > len(lat) // 2 else f"{med:.3f}"
        mx = fmt(None if None in lat else max(lat), stall)
        blocked = sum(v is None for v in lat) + (r["ls_lat"] is None)
        total = f"{r['write_total']:.1f}s" if "write_total" in r else "-"
        ok = "ok" if r.get("s3_ok") else "FAILED"
        lines.append(f"{r['target']:<11} {med_s:>11} {mx:>9} {fmt(r['ls_lat'], stall):>7} "
                     f"{blocked:>4}/{len(lat) + 1:<3} {'yes' if r.get('write_blocked') else 'no':>13} "
                     f"{total:>11} {ok:>8}")
    notes = [f"  {r['target']}: {r['note'].strip()}" for r in rows if r["note"].strip()]
    if notes:
        lines += ["notes:"] + notes
    lines += ["versions:"] + [f"  {r['target']}: {r['version']}" for r in rows]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stall-seconds", type=float, default=15.0)
    parser.add_argument("--stats", type=int, default=8, help="files to stat during the stall")
    parser.add_argument("--write-mib", type=int, default=48)
    parser.add_argument("--write-timeout", type=float, default=180.0,
                        help="seconds the write may take after the stall")
    parser.add_argument("--s3pyfs-rev", metavar="REV", default=None,
                        help="also measure s3pyfs at this git revision")
    parser.add_argument("--targets", default="s3pyfs,s3pyfs-rev,s3fs,s3fs-cache")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    args = parser.parse_args()
    targets = [t for t in args.targets.split(",") if t]
    if not args.s3pyfs_rev and "s3pyfs-rev" in targets:
        targets.remove("s3pyfs-rev")
    if not shutil.which("s3fs"):
        for t in ("s3fs", "s3fs-cache"):
            if t in targets:
                log(f"s3fs is not installed: no {t} row")
                targets.remove(t)
    tmp = Path(tempfile.mkdtemp(prefix="s3pyfs-stall-"))
    digest = expected_digest(args.write_mib)
    server = BenchSeaweed(tmp / "seaweed")
    rows = []
    try:
        server.start()
        client = server.client()
        client.create_bucket(Bucket=BUCKET)
        passwd = tmp / "passwd"
        passwd.write_text(f"{server.access_key}:{server.secret_key}\n")
        passwd.chmod(0o600)
        for n, label in enumerate(targets):
            work = tmp / label
            work.mkdir()
            disk = StallDisk(work)
            disk.start()
            if label == "s3fs-cache":
                mounter = Mounter("s3fs-cache", BUCKET, server.endpoint, passwd, work)
                mounter.cache_dir = disk.path / "s3fs-cache"
            elif label == "s3fs":
                mounter = Mounter("s3fs", BUCKET, server.endpoint, passwd, work,
                                  extra_options=f"tmpdir={disk.path}")
            else:
                source = export_rev(args.s3pyfs_rev, work / "src") if label == "s3pyfs-rev" else None
                mounter = Mounter("s3pyfs", BUCKET, server.endpoint, passwd, work,
                                  extra_options=f"tmpdir={disk.path}", source_dir=source)
            prefix = f"t{n}"
            put_objects(client, prefix, args.stats)
            log(f"{label}: mounting with {mounter.options()}")
            rows.append(run_target(label, mounter, disk, client, prefix, args, digest))
            log(f"{label}: done {rows[-1].get('note', '')}")
    finally:
        server.stop()
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"stall of {args.stall_seconds:.0f}s during a {args.write_mib} MiB write; "
          f"{args.stats} stats + 1 ls, latencies in seconds")
    print(table(rows, args.stall_seconds))
    return 0 if all(r.get("s3_ok") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
