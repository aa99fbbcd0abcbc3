#!/usr/bin/env python3
"""s3pyfs benchmark: s3pyfs, s3fs-fuse and direct S3 calls, in one run.

    .venv/bin/python benchmarks/run.py [--quick] [--reps N] [--markdown FILE]
        [--targets LIST] [--workloads LIST] [--s3pyfs-rev REV] [--keep] ...

Starts a private SeaweedFS on free loopback ports, puts the read-only test
data in a bucket, then for each repetition runs every workload on every
target (the order of targets rotates from one repetition to the next):

  direct      boto3, 8 connections, 8 MiB parts (see bench_direct.py)
  s3pyfs      python -m s3pyfs BUCKET MNT -f -o url=...,use_path_request_style,passwd_file=...
  s3fs        s3fs BUCKET MNT -f -o url=...,use_path_request_style,passwd_file=...
  s3fs-cache  the same with use_cache=DIR (the cache directory is emptied at every mount)
  s3pyfs-cache  s3pyfs with use_cache=DIR the same way (hydration of randomly read objects
              needs the disk cache)

and prints the median of each value with its ratio to direct S3
(ratio = direct time / mounter time, or mounter IOPS / direct IOPS: above 1
means faster than direct S3).  Every step runs in a child process with a
time limit; a mounter that stops answering is torn down (FUSE connection
aborted, process killed) and the run goes on.  benchmarks/README.md explains
each workload.  Needs root (mounts, /proc/sys/vm/drop_caches), fio and s3fs.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_direct  # noqa: E402
import bench_tree  # noqa: E402
from bench_mounts import Mounter, MountFailed  # noqa: E402
from bench_server import BenchSeaweed, Metrics  # noqa: E402

MiB = 1 << 20
GiB = 1 << 30
BUCKET = "s3pyfs-bench"
TARGETS = ("direct", "s3pyfs", "s3fs", "s3fs-cache", "s3pyfs-cache")
FSOPS = str(HERE / "bench_fsops.py")

PROFILES = {
    "full": dict(reps=3, seq=GiB, reader=256 * MiB, readers=4, rand_seconds=10,
                 small_files=1000, small_size=4096, ls_entries=10000, tree_files=2000,
                 mv_file=100 * MiB, mv_children=1500),
    "quick": dict(reps=1, seq=64 * MiB, reader=32 * MiB, readers=4, rand_seconds=5,
                  small_files=100, small_size=4096, ls_entries=1000, tree_files=200,
                  mv_file=16 * MiB, mv_children=150),
}


def human(n: int) -> str:
    if n >= GiB and n % GiB == 0:
        return f"{n // GiB} GiB"
    if n >= MiB and n % MiB == 0:
        return f"{n // MiB} MiB"
    if n >= 1024 and n % 1024 == 0:
        return f"{n // 1024} KiB"
    return f"{n} B"


# Workloads in table order: (id, label, unit, kind).  kind "time": lower is
# better, ratio direct/mounter; "rate": higher is better, ratio
# mounter/direct; "info": no ratio.
def workloads(p: dict) -> list[tuple[str, str, str, str]]:
    return [
        ("write", f"sequential write {human(p['seq'])}", "s", "time"),
        ("cold_read", f"cold sequential read {human(p['seq'])}", "s", "time"),
        ("warm_read", "warm re-read (same mount)", "s", "time"),
        ("readers", f"{p['readers']} concurrent readers x {human(p['reader'])}", "s", "time"),
        ("randread", f"random 4 KiB reads qd1, {human(p['reader'])} file", "IOPS", "rate"),
        ("randread_amp", "  bytes fetched from S3 / bytes read", "x", "info"),
        ("create", f"create {p['small_files']} x {human(p['small_size'])} files", "s", "time"),
        ("ls_cold", f"ls -l of {p['ls_entries']} entries, fresh mount", "s", "time"),
        ("ls_warm", "ls -l again (same mount)", "s", "time"),
        ("untar", f"untar {p['tree_files']} files", "s", "time"),
        ("find", "find on a fresh mount", "s", "time"),
        ("du", "du -s on a fresh mount", "s", "time"),
        ("mv_file", f"mv of a {human(p['mv_file'])} file", "s", "time"),
        ("mv_dir", f"mv of a directory with {p['mv_children']} children", "s", "time"),
        ("rss_write", "peak RSS: sequential write session", "MiB", "info"),
        ("rss_read", "peak RSS: cold + warm read session", "MiB", "info"),
        ("rss_readers", "peak RSS: concurrent readers session", "MiB", "info"),
        ("rss_max", "peak RSS: any session", "MiB", "info"),
    ]


# --workloads groups -> workload ids (find and du need untar's tree).
GROUPS = {
    "write": ["write"], "read": ["cold_read", "warm_read"], "readers": ["readers"],
    "randread": ["randread", "randread_amp"], "create": ["create"],
    "untar": ["untar", "find", "du"], "mv": ["mv_file", "mv_dir"], "ls": ["ls_cold", "ls_warm"],
}


class StepAborted(Exception):
    """The mount was torn down; the rest of the session cannot run."""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def drop_caches() -> bool:
    try:
        subprocess.run(["sync"], timeout=120, check=False)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except (OSError, subprocess.TimeoutExpired):
        return False


class Bench:
    def __init__(self, args, profile: dict):
        self.args = args
        self.p = profile
        self.reps = profile["reps"]
        self.timeout_scale = args.timeout_scale
        self.values: dict[tuple[str, str], dict[int, float]] = {}
        self.errors: dict[tuple[str, str], dict[int, str]] = {}
        self.s3stats: dict[tuple[str, str], list[dict]] = {}
        self.cpu: dict[tuple[str, str], list[float]] = {}
        self.notes: list[str] = []
        self.targets = [t for t in args.targets]
        self.workload_ids = [w[0] for w in workloads(profile)]
        self.drop_ok: bool | None = None
        self.timeouts: dict[tuple[str, str], float] = {}
        self.selected = {w for g in args.workloads for w in GROUPS[g]}
        self.mounters: dict[str, Mounter] = {}
        self.facts: dict[str, str] = {}

    # -- recording ------------------------------------------------------------
    def record(self, w: str, target: str, rep: int, value: float,
               s3: dict | None = None, cpu: float | None = None) -> None:
        self.values.setdefault((w, target), {})[rep] = value
        if s3 is not None:
            self.s3stats.setdefault((w, target), []).append(s3)
        if cpu is not None:
            self.cpu.setdefault((w, target), []).append(cpu)

    def fail(self, w: str, target: str, rep: int, why: str) -> None:
        why = " ".join(why.split())[:300]
        self.errors.setdefault((w, target), {})[rep] = why
        log(f"    {w}: FAILED: {why}")

    def has(self, w: str, target: str, rep: int) -> bool:
        return rep in self.values.get((w, target), {}) or rep in self.errors.get((w, target), {})

    def timeout(self, items: int = 0, nbytes: int = 0, per_item: float = 0.05) -> float:
        # Generous: a healthy mounter is far below; a hung one is cut off.
        return self.timeout_scale * (60 + per_item * items + nbytes / (4 * MiB))

    def gave_up(self, w: str, target: str) -> bool:
        """A workload that timed out once is not tried again (keeps the run bounded)."""
        return (w, target) in self.timeouts

    # -- set-up ---------------------------------------------------------------
    def setup(self, tmp: Path) -> None:
        self.tmp = tmp
        log(f"work directory: {tmp}")
        self.tar_path = tmp / "tree.tar"
        self.tree = bench_tree.build_tar(self.tar_path, self.p["tree_files"])
        self.tree_files = bench_direct.tar_files(self.tar_path)
        log(f"source tree: {self.tree['files']} files, {self.tree['dirs']} directories, "
            f"{self.tree['bytes'] / MiB:.1f} MiB")
        if self.tree["files"] < self.p["tree_files"]:
            self.notes.append(f"only {self.tree['files']} files found for the source tree "
                              f"(wanted {self.p['tree_files']})")

        log("starting SeaweedFS")
        self.server = BenchSeaweed(tmp / "seaweed")
        self.server.start()
        log(f"SeaweedFS S3 on {self.server.endpoint}")
        client = bench_direct.make_client(self.server.endpoint, self.server.access_key,
                                          self.server.secret_key)
        client.create_bucket(Bucket=BUCKET)
        self.direct = bench_direct.Direct(client, BUCKET)
        self.metrics = Metrics(self.server.metrics_url, BUCKET)
        setup_client = bench_direct.make_client(self.server.endpoint, self.server.access_key,
                                                self.server.secret_key, connections=32)
        self.setup_direct = bench_direct.Direct(setup_client, BUCKET)

        self.passwd = tmp / "passwd"
        fd = os.open(self.passwd, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"{self.server.access_key}:{self.server.secret_key}\n")

        t0 = time.perf_counter()
        d = self.setup_direct
        d.make_dirs("data/ls", "scratch")
        d.upload("data/seq.bin", self.p["seq"])
        for i in range(self.p["readers"]):
            d.upload(f"data/reader-{i}.bin", self.p["reader"])
        meta = bench_direct.file_meta()
        d.put_parallel([(f"data/ls/e{i:05d}", b"x" * 64) for i in range(self.p["ls_entries"])],
                       meta=meta, workers=32)
        log(f"test data in place ({time.perf_counter() - t0:.1f} s)")

        for kind in self.targets:
            if kind == "direct":
                continue
            ours = kind.startswith("s3pyfs")
            extra = self.args.s3pyfs_options if ours else self.args.s3fs_options
            source = self.s3pyfs_source(tmp) if ours else None
            self.mounters[kind] = Mounter(kind, BUCKET, self.server.endpoint, self.passwd,
                                          tmp / kind, extra_options=extra, source_dir=source)

    def s3pyfs_source(self, tmp: Path) -> Path | None:
        """The exported revision both s3pyfs targets run (extracted once)."""
        if not hasattr(self, "_s3pyfs_source"):
            self._s3pyfs_source = self.export_s3pyfs(tmp)
        return self._s3pyfs_source

    def export_s3pyfs(self, tmp: Path) -> Path | None:
        """s3pyfs/ of --s3pyfs-rev, extracted with git archive (None: working tree)."""
        rev = self.args.s3pyfs_rev
        if not rev:
            return None
        dest = tmp / "s3pyfs-src"
        dest.mkdir()
        repo = str(HERE.parent)
        full = subprocess.run(["git", "-C", repo, "rev-parse", "--short", rev], check=True,
                              capture_output=True, text=True, timeout=30).stdout.strip()
        archive = subprocess.run(["git", "-C", repo, "archive", full, "s3pyfs"], check=True,
                                 capture_output=True, timeout=60).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True, timeout=60)
        (dest / "REVISION").write_text(full + "\n")
        log(f"s3pyfs from git revision {full} (extracted to {dest})")
        return dest

    def collect_facts(self) -> None:
        mem = "?"
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemTotal:"):
                    mem = f"{int(line.split()[1]) / (1 << 20):.1f} GiB"
        except OSError:
            pass
        cpu_model = "?"
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    cpu_model = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
        fio = "?"
        try:
            fio = subprocess.run(["fio", "--version"], capture_output=True, text=True,
                                 timeout=20).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            pass
        self.facts = {
            "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
            "nproc": str(os.cpu_count()),
            "cpu": cpu_model,
            "memory": mem,
            "kernel": platform.release(),
            "os": _os_release(),
            "python": platform.python_version(),
            "SeaweedFS": self.server.version(),
            "fio": fio,
        }
        for kind in ("s3pyfs", "s3fs"):
            m = self.mounters.get(kind) or self.mounters.get(kind + "-cache")
            if m is not None:
                self.facts[kind] = m.version()

    # -- per-target data ------------------------------------------------------
    def scratch(self, target: str, rep: int) -> str:
        return f"scratch/{target}-r{rep}/"

    def prepare_scratch(self, target: str, rep: int) -> None:
        """Objects the mv workloads move, and the directories the others write into."""
        base = self.scratch(target, rep)
        d = self.setup_direct
        d.make_dirs(base + "tree", base + "mvdir")
        d.upload(base + "mvsrc.bin", self.p["mv_file"])
        meta = bench_direct.file_meta()
        d.put_parallel([(f"{base}mvdir/c{i:05d}", b"y" * 4096)
                        for i in range(self.p["mv_children"])], meta=meta, workers=32)

    def cleanup_scratch(self, target: str, rep: int) -> None:
        try:
            self.setup_direct.delete_prefix(self.scratch(target, rep))
        except Exception as exc:   # noqa: BLE001  (cleanup is best effort)
            self.notes.append(f"cleanup of {self.scratch(target, rep)} failed: {exc}")
        self.server.vacuum()

    def count_keys(self, prefix: str) -> int:
        return sum(1 for obj in self.direct.list_keys(prefix) if not obj["Key"].endswith("/"))

    # -- direct S3 ------------------------------------------------------------
    def direct_step(self, w: str, rep: int, fn, check=None):
        if w not in self.selected:
            return None
        before = self.metrics.snapshot()
        try:
            result = fn()
        except Exception as exc:   # noqa: BLE001
            self.fail(w, "direct", rep, f"{type(exc).__name__}: {exc}")
            return None
        s3 = Metrics.delta(before, self.metrics_after())
        value = result if isinstance(result, (int, float)) else result[0]
        self.record(w, "direct", rep, value, s3)
        log(f"    {w}: {value:.3f}")
        if check is not None:
            problem = check()
            if problem:
                self.fail_check(w, "direct", rep, problem)
        return result

    def metrics_after(self) -> dict:
        # The server counts a request when its handler returns, which can be
        # just after the client has the last byte.
        time.sleep(0.2)
        return self.metrics.snapshot()

    def fail_check(self, w: str, target: str, rep: int, problem: str) -> None:
        self.notes.append(f"{target}, run {rep + 1}, {w}: check failed: {problem}")
        self.errors.setdefault((w, target), {})[rep] = "check: " + problem
        log(f"    {w}: CHECK FAILED: {problem}")

    def run_direct(self, rep: int) -> None:
        d, p = self.direct, self.p
        base = self.scratch("direct", rep)
        self.direct_step("write", rep, lambda: d.upload(base + "write.bin", p["seq"]),
                         check=lambda: _size_problem(d.size_of(base + "write.bin"), p["seq"]))
        if "cold_read" in self.selected:
            self.drop()   # cold at the server too, as for the mounters
        self.direct_step("cold_read", rep, lambda: d.download([("data/seq.bin", p["seq"])]))
        # Second download: the server has the data in its page cache now.
        self.direct_step("warm_read", rep, lambda: d.download([("data/seq.bin", p["seq"])]))
        if "readers" in self.selected:
            self.drop()
        readers = [(f"data/reader-{i}.bin", p["reader"]) for i in range(p["readers"])]
        self.direct_step("readers", rep, lambda: d.download(readers))
        if "randread" in self.selected:
            self.direct_randread(rep)
        body = os.urandom(p["small_size"])
        files = [(f"{base}files/f{i:05d}", body) for i in range(p["small_files"])]
        self.direct_step("create", rep, lambda: d.put_sequential(files),
                         check=lambda: _count_problem(self.count_keys(base + "files/"),
                                                      p["small_files"]))
        # Direct S3 has no cache: a second listing costs the same as the first,
        # so one measurement serves as the baseline of both ls rows.
        if self.direct_step("ls_cold", rep, lambda: d.list_dir_with_heads("data/ls/")) is not None:
            self.values.setdefault(("ls_warm", "direct"), {})[rep] = \
                self.values[("ls_cold", "direct")][rep]
        tree = [(f"{base}tree/{name}", data) for name, data in self.tree_files]
        self.direct_step("untar", rep, lambda: d.put_sequential(tree),
                         check=lambda: _count_problem(self.count_keys(base + "tree/"),
                                                      self.tree["files"]))
        self.direct_step("find", rep, lambda: d.list_recursive(base + "tree/"))
        self.direct_step("du", rep, lambda: d.list_recursive(base + "tree/"))
        self.direct_step("mv_file", rep, lambda: d.move_object(base + "mvsrc.bin",
                                                               base + "mvdst.bin"),
                         check=lambda: _size_problem(d.size_of(base + "mvdst.bin"),
                                                     p["mv_file"]))
        self.direct_step("mv_dir", rep, lambda: d.move_prefix(base + "mvdir/", base + "mvdir2/"),
                         check=lambda: _count_problem(self.count_keys(base + "mvdir2/"),
                                                      p["mv_children"]))

    def direct_randread(self, rep: int) -> None:
        p = self.p
        self.drop()
        before = self.metrics.snapshot()
        try:
            rr = self.direct.random_reads("data/reader-0.bin", p["reader"], p["rand_seconds"])
        except Exception as exc:   # noqa: BLE001
            self.fail("randread", "direct", rep, f"{type(exc).__name__}: {exc}")
        else:
            s3 = Metrics.delta(before, self.metrics_after())
            self.record("randread", "direct", rep, rr["iops"], s3)
            if s3.get("sent"):
                self.record("randread_amp", "direct", rep, s3["sent"] / (rr["ios"] * 4096))
            log(f"    randread: {rr['iops']:.0f} IOPS")

    def drop(self) -> None:
        ok = drop_caches()
        if self.drop_ok is None:
            self.drop_ok = ok
            if not ok:
                self.notes.append("could not write /proc/sys/vm/drop_caches: 'cold' reads rely on "
                                  "a fresh mount only (the server's files may be in page cache)")

    # -- mounted targets --------------------------------------------------------
    def fs_step(self, m: Mounter, target: str, rep: int, w: str, argv: list[str], timeout: float,
                parse=None, check=None, record=True):
        """Run ``argv`` in a child process against the mount, time it, record it.

        Returns (value, stdout) or None after a failure.  A timeout tears the
        mount down and raises StepAborted.
        """
        if w not in self.selected:
            return None
        if self.gave_up(w, target):
            self.fail(w, target, rep, "skipped: timed out in an earlier run")
            return None
        before = self.metrics.snapshot()
        cpu0 = m.cpu_seconds()
        if self.args.stall == w and m.proc is not None:
            os.kill(m.proc.pid, signal.SIGSTOP)   # self-test of the time limits
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True, text=True,
                                env={**os.environ, "LC_ALL": "C"})
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            m.kill()
            try:
                proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                pass
            self.timeouts[(w, target)] = timeout
            self.fail(w, target, rep, f"timed out after {timeout:.0f}s ({' '.join(argv[:3])} ...); "
                      "mount torn down")
            raise StepAborted() from None
        elapsed = time.perf_counter() - start
        cpu1 = m.cpu_seconds()
        s3 = Metrics.delta(before, self.metrics_after())
        if proc.returncode != 0:
            self.fail(w, target, rep, f"exit {proc.returncode}: {err.strip()[-300:]}")
            if m.proc is None or m.proc.poll() is not None:
                m.kill()
                raise StepAborted()
            return None
        try:
            value = parse(out, elapsed) if parse else elapsed
        except (ValueError, KeyError, IndexError) as exc:
            self.fail(w, target, rep, f"unexpected output ({exc}): {out[-200:]!r}")
            return None
        cpu = cpu1 - cpu0 if cpu0 is not None and cpu1 is not None else None
        if record:
            self.record(w, target, rep, value, s3, cpu)
            log(f"    {w}: {value:.3f}" + (f"  (mounter CPU {cpu:.2f} s)" if cpu is not None else ""))
        if check is not None:
            problem = check(out)
            if problem:
                self.fail_check(w, target, rep, problem)
        return value, out, s3

    def session(self, m: Mounter, target: str, rep: int, ws: list[str], body,
                drop: bool = False, rss: str | None = None) -> None:
        """Mount, run ``body(mount path)``, unmount, record the peak RSS."""
        if not self.selected & set(ws):
            return
        if all(self.gave_up(w, target) for w in ws):
            for w in ws:
                self.fail(w, target, rep, "skipped: timed out in an earlier run")
            return
        if drop:
            self.drop()
        try:
            m.mount(timeout=self.timeout_scale * 60)
        except MountFailed as exc:
            for w in ws:
                if w in self.selected:
                    self.fail(w, target, rep, f"mount failed: {exc}")
            return
        try:
            body(m.path)
        except StepAborted:
            pass
        except Exception as exc:   # noqa: BLE001  (a bug in a check must not stop the run)
            self.notes.append(f"{target}, run {rep + 1}: {type(exc).__name__}: {exc}")
            log(f"    error: {type(exc).__name__}: {exc}")
        finally:
            peak = m.peak_rss_kib()
            try:
                m.unmount(timeout=self.timeout_scale * 120)
            except MountFailed as exc:
                self.notes.append(f"{target}, run {rep + 1}: {exc}")
                m.kill()
            if peak is not None:
                mib = peak / 1024
                if rss:
                    self.record(rss, target, rep, mib)
                old = self.values.get(("rss_max", target), {}).get(rep, 0)
                self.values.setdefault(("rss_max", target), {})[rep] = max(old, mib)
            for w in ws:
                if w in self.selected and not self.has(w, target, rep):
                    self.fail(w, target, rep, "skipped: the mount was torn down earlier")

    def run_mounted(self, target: str, rep: int) -> None:
        m = self.mounters[target]
        p = self.p
        base = self.scratch(target, rep)
        py = sys.executable
        fsops = lambda *a: [py, FSOPS, *map(str, a)]   # noqa: E731
        seconds = lambda out, _elapsed: json.loads(out)["seconds"]   # noqa: E731

        def write(mnt):
            self.fs_step(m, target, rep, "write",
                         fsops("write", mnt / base / "write.bin", p["seq"]),
                         self.timeout(nbytes=p["seq"]), parse=seconds,
                         check=lambda _o: _size_problem(self.direct.size_of(base + "write.bin"),
                                                        p["seq"]))
        self.session(m, target, rep, ["write"], write, rss="rss_write")

        def read(mnt):
            argv = fsops("read", mnt / "data/seq.bin")
            check = lambda out: _size_problem(json.loads(out)["bytes"], p["seq"])  # noqa: E731
            for w in ("cold_read", "warm_read"):
                self.fs_step(m, target, rep, w, argv, self.timeout(nbytes=p["seq"]),
                             parse=seconds, check=check)
        self.session(m, target, rep, ["cold_read", "warm_read"], read, drop=True, rss="rss_read")

        def readers(mnt):
            paths = [mnt / f"data/reader-{i}.bin" for i in range(p["readers"])]
            total = p["reader"] * p["readers"]
            self.fs_step(m, target, rep, "readers", fsops("read", *paths),
                         self.timeout(nbytes=total), parse=seconds,
                         check=lambda out: _size_problem(json.loads(out)["bytes"], total))
        self.session(m, target, rep, ["readers"], readers, drop=True, rss="rss_readers")

        def randread(mnt):
            argv = ["fio", "--name=randread", f"--filename={mnt / 'data/reader-0.bin'}",
                    "--readonly", "--ioengine=psync", "--rw=randread", "--bs=4k",
                    f"--size={p['reader']}", f"--runtime={p['rand_seconds']}", "--time_based",
                    "--randrepeat=1", "--norandommap", "--invalidate=1", "--direct=1",
                    "--output-format=json"]
            got = self.fs_step(m, target, rep, "randread", argv,
                               self.timeout(nbytes=p["reader"]) + p["rand_seconds"],
                               parse=lambda out, _e: _fio_read(out)["iops"])
            if got:
                _value, out, s3 = got
                read_bytes = _fio_read(out)["io_bytes"]
                if read_bytes:
                    self.record("randread_amp", target, rep, s3.get("sent", 0) / read_bytes)
        self.session(m, target, rep, ["randread", "randread_amp"], randread, drop=True)

        def writes(mnt):
            n = p["small_files"]
            self.fs_step(m, target, rep, "create",
                         fsops("create", mnt / base / "files", n, p["small_size"]),
                         self.timeout(items=n * 4), parse=seconds,
                         check=lambda _o: _count_problem(self.count_keys(base + "files/"), n))
            self.fs_step(m, target, rep, "untar",
                         ["tar", "-xf", str(self.tar_path), "-C", str(mnt / base / "tree"),
                          "--no-same-owner", "--no-same-permissions"],
                         self.timeout(items=self.tree["files"] * 4, nbytes=self.tree["bytes"]),
                         check=lambda _o: _count_problem(self.count_keys(base + "tree/"),
                                                         self.tree["files"]))
            self.fs_step(m, target, rep, "mv_file",
                         ["mv", str(mnt / base / "mvsrc.bin"), str(mnt / base / "mvdst.bin")],
                         self.timeout(nbytes=p["mv_file"]),
                         check=lambda _o: _size_problem(self.direct.size_of(base + "mvdst.bin"),
                                                        p["mv_file"]))
            self.fs_step(m, target, rep, "mv_dir",
                         ["mv", str(mnt / base / "mvdir"), str(mnt / base / "mvdir2")],
                         self.timeout(items=p["mv_children"] * 4),
                         check=lambda _o: _count_problem(self.count_keys(base + "mvdir2/"),
                                                         p["mv_children"]))
        self.session(m, target, rep, ["create", "untar", "mv_file", "mv_dir"], writes)

        def listing(mnt):
            n = p["ls_entries"]
            argv = ["ls", "-l", str(mnt / "data/ls")]
            check = lambda out: _count_problem(len(out.splitlines()) - 1, n)  # noqa: E731
            limit = self.timeout(items=n, per_item=0.01)
            self.fs_step(m, target, rep, "ls_cold", argv, limit, check=check)
            self.fs_step(m, target, rep, "ls_warm", argv, limit, check=check)
        self.session(m, target, rep, ["ls_cold", "ls_warm"], listing)

        expected_lines = 1 + self.tree["dirs"] + self.tree["files"]
        if not self.selected & {"find", "du"}:
            pass
        elif rep in self.values.get(("untar", target), {}):
            def find(mnt):
                self.fs_step(m, target, rep, "find", ["find", str(mnt / base / "tree")],
                             self.timeout(items=expected_lines),
                             check=lambda out: _count_problem(len(out.splitlines()),
                                                              expected_lines))
            self.session(m, target, rep, ["find"], find, drop=True)

            def du(mnt):
                self.fs_step(m, target, rep, "du", ["du", "-s", str(mnt / base / "tree")],
                             self.timeout(items=expected_lines))
            self.session(m, target, rep, ["du"], du, drop=True)
        else:
            for w in ("find", "du"):
                self.fail(w, target, rep, "skipped: untar did not succeed")

    # -- main loop ------------------------------------------------------------
    def run(self) -> None:
        for rep in range(self.reps):
            shift = rep % len(self.targets)
            order = self.targets[shift:] + self.targets[:shift]
            for target in order:
                log(f"[run {rep + 1}/{self.reps}] {target}")
                t0 = time.perf_counter()
                try:
                    self.prepare_scratch(target, rep)
                except Exception as exc:   # noqa: BLE001
                    self.notes.append(f"{target}, run {rep + 1}: set-up failed: {exc}")
                    log(f"    set-up failed: {exc}")
                    continue
                if target == "direct":
                    self.run_direct(rep)
                else:
                    self.run_mounted(target, rep)
                self.cleanup_scratch(target, rep)
                log(f"    ({time.perf_counter() - t0:.0f} s)")

    def shutdown(self) -> None:
        for m in self.mounters.values():
            if m.proc is not None:
                m.kill()
        server = getattr(self, "server", None)
        if server is not None:
            server.stop()

    # -- report ---------------------------------------------------------------
    def median(self, w: str, target: str) -> float | None:
        vals = list(self.values.get((w, target), {}).values())
        return statistics.median(vals) if vals else None

    def spread(self, w: str, target: str) -> tuple[float, float] | None:
        vals = list(self.values.get((w, target), {}).values())
        return (min(vals), max(vals)) if len(vals) > 1 else None

    def ratio(self, w: str, kind: str, target: str) -> float | None:
        if kind == "info" or target == "direct":
            return None
        base, mine = self.median(w, "direct"), self.median(w, target)
        if not base or not mine:
            return None
        return base / mine if kind == "time" else mine / base

    def cell(self, w: str, kind: str, target: str, with_spread: bool = False) -> str:
        value = self.median(w, target)
        errs = self.errors.get((w, target), {})
        if value is None:
            if target == "direct" and w.startswith("rss"):
                return "-"
            if not errs:
                return "-"
            if (w, target) in self.timeouts:
                return f"TIMEOUT >{self.timeouts[(w, target)]:.0f}s"
            first = next(iter(errs.values()))
            return "SKIPPED" if "skipped" in first else "FAIL"
        text = _fmt(value)
        if with_spread and (s := self.spread(w, target)):
            text += f" [{_fmt(s[0])}-{_fmt(s[1])}]"
        r = self.ratio(w, kind, target)
        if r is not None:
            text += f" ({r:.2f}x)"
        if errs:
            text += " !"
        return text

    def shown(self) -> list[tuple[str, str, str, str]]:
        """Table rows: the selected workloads and the RSS rows that were measured."""
        return [row for row in workloads(self.p)
                if row[0] in self.selected
                or (row[0].startswith("rss") and any(k[0] == row[0] for k in self.values))]

    def table(self, markdown: bool = False) -> str:
        header = ["workload", "unit"] + list(self.targets)
        rows = []
        for w, label, unit, kind in self.shown():
            rows.append([label, unit] + [self.cell(w, kind, t, with_spread=markdown)
                                         for t in self.targets])
        if markdown:
            out = ["| " + " | ".join(header) + " |",
                   "|" + "|".join(["---"] * 2 + ["---:"] * len(self.targets)) + "|"]
            out += ["| " + " | ".join(r) + " |" for r in rows]
            return "\n".join(out)
        widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
        line = lambda r: "  ".join(  # noqa: E731
            str(c).ljust(widths[i]) if i < 2 else str(c).rjust(widths[i]) for i, c in enumerate(r))
        return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])

    def s3_table(self, markdown: bool = False) -> str:
        """Median S3 requests (by SeaweedFS's request type) and bytes per workload."""
        header = ["workload"] + list(self.targets)
        rows = []
        for w, label, _unit, _kind in self.shown():
            if w.startswith("rss") or w == "randread_amp":
                continue
            row = [label.strip()]
            for t in self.targets:
                stats = self.s3stats.get((w, t))
                if w == "ls_warm" and t == "direct" and not stats:
                    row.append("(no cache: as the first ls)")
                    continue
                row.append(_s3_summary(stats) if stats else "-")
            rows.append(row)
        if markdown:
            out = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
            return "\n".join(out + ["| " + " | ".join(r) + " |" for r in rows])
        widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
        return "\n".join("  ".join(c.ljust(widths[i]) for i, c in enumerate(r))
                         for r in [header] + rows)

    def cpu_table(self, markdown: bool = False) -> str:
        mounted = [t for t in self.targets if t != "direct"]
        header = ["workload"] + [f"{t} CPU s" for t in mounted]
        rows = []
        for w, label, _unit, _kind in self.shown():
            if w.startswith("rss") or w == "randread_amp":
                continue
            cells = []
            for t in mounted:
                vals = self.cpu.get((w, t))
                cells.append(f"{statistics.median(vals):.2f}" if vals else "-")
            rows.append([label.strip()] + cells)
        if markdown:
            out = ["| " + " | ".join(header) + " |",
                   "|" + "|".join(["---"] + ["---:"] * len(mounted)) + "|"]
            return "\n".join(out + ["| " + " | ".join(r) + " |" for r in rows])
        widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
        return "\n".join("  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i])
                                   for i, c in enumerate(r)) for r in [header] + rows)

    def error_lines(self) -> list[str]:
        lines = []
        for (w, t), errs in sorted(self.errors.items()):
            for rep, why in sorted(errs.items()):
                if why.startswith("check: "):
                    continue   # already in notes
                lines.append(f"{t}, run {rep + 1}, {w}: {why}")
        return lines + self.notes

    def markdown(self, elapsed: float, command: str) -> str:
        f = self.facts
        p = self.p
        machine = "\n".join(f"- {k}: {v}" for k, v in f.items() if k != "date")
        problems = self.error_lines()
        return f"""# s3pyfs benchmark results

Date: {f.get('date')}. Command: `{command}` ({self.reps} run(s) per value, took {elapsed / 60:.1f} min).
How the workloads are defined and how ratios are computed: [README.md](README.md).

## Machine

{machine}
- page cache dropped before cold reads: {'yes' if self.drop_ok else 'no (fresh mount only)'}

## Results

Median of {self.reps} run(s), [min-max] when more than one, (ratio to direct S3; above 1 =
faster than direct S3). `!` = at least one run failed or a check failed (see Problems).
Sizes: sequential {human(p['seq'])}, readers {p['readers']} x {human(p['reader'])}, random reads
for {p['rand_seconds']} s, {p['small_files']} small files, {p['ls_entries']} listed entries,
tree of {self.tree['files']} files / {self.tree['dirs']} directories
({self.tree['bytes'] / MiB:.1f} MiB), mv of {human(p['mv_file'])} and of {p['mv_children']} children.

{self.table(markdown=True)}

## S3 requests per workload (median of the runs)

Counted by SeaweedFS (`SeaweedFS_s3_request_total`): it files HEAD under GET and
DeleteObjects under DELETE. `in`/`out` = bytes received/sent by the server for the bucket.

{self.s3_table(markdown=True)}

## Mounter CPU time per workload (user + system, median)

{self.cpu_table(markdown=True)}

## Problems

{chr(10).join('- ' + line for line in problems) if problems else 'None.'}
"""


def _os_release() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.platform()


def _fmt(v: float) -> str:
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    if v >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def _s3_summary(stats: list[dict]) -> str:
    keys = sorted({k for s in stats for k in s})
    parts = []
    for k in ("GET", "PUT", "POST", "COPY", "LIST", "DELETE"):
        if k in keys:
            parts.append(f"{k} {statistics.median(s.get(k, 0) for s in stats):.0f}")
    for k in keys:
        if k not in ("GET", "PUT", "POST", "COPY", "LIST", "DELETE", "sent", "received"):
            parts.append(f"{k} {statistics.median(s.get(k, 0) for s in stats):.0f}")
    for k, name in (("received", "in"), ("sent", "out")):
        if k in keys:
            v = statistics.median(s.get(k, 0) for s in stats)
            parts.append(f"{name} {_bytes(v)}")
    return ", ".join(parts) if parts else "none"


def _bytes(v: float) -> str:
    if v >= GiB:
        return f"{v / GiB:.2f} GiB"
    if v >= MiB:
        return f"{v / MiB:.1f} MiB"
    if v >= 1024:
        return f"{v / 1024:.0f} KiB"
    return f"{v:.0f} B"


def _size_problem(actual, expected) -> str | None:
    if actual is None:
        return "object missing in S3"
    if actual != expected:
        return f"size {actual}, expected {expected}"
    return None


def _count_problem(actual: int, expected: int) -> str | None:
    return None if actual == expected else f"found {actual}, expected {expected}"


def _fio_read(out: str) -> dict:
    job = json.loads(out[out.index("{"):])["jobs"][0]
    if job.get("error"):
        raise ValueError(f"fio error {job['error']}")
    return job["read"]


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Benchmark s3pyfs against s3fs-fuse and direct S3 on a private SeaweedFS.")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes, 1 run (a few minutes)")
    parser.add_argument("--reps", type=int, help="runs per value (default 3, --quick 1)")
    parser.add_argument("--targets", default=",".join(TARGETS),
                        help=f"comma-separated subset of {','.join(TARGETS)} "
                             "(direct is always included: ratios need it)")
    parser.add_argument("--markdown", metavar="FILE",
                        help="also write the results, machine facts and date as Markdown")
    parser.add_argument("--json", metavar="FILE", help="also write the raw values as JSON")
    parser.add_argument("--s3pyfs-options", default="", metavar="OPTS",
                        help="extra -o options for s3pyfs (e.g. to try a new setting)")
    parser.add_argument("--s3pyfs-rev", metavar="REV",
                        help="benchmark s3pyfs/ as committed in git revision REV (e.g. HEAD) "
                             "instead of the working tree")
    parser.add_argument("--s3fs-options", default="", metavar="OPTS",
                        help="extra -o options for both s3fs targets")
    parser.add_argument("--workloads", default=",".join(GROUPS), metavar="LIST",
                        help=f"comma-separated subset of {','.join(GROUPS)} (default: all; "
                             "untar includes find and du)")
    parser.add_argument("--stall", metavar="WORKLOAD",
                        help="self-test: freeze (SIGSTOP) the mounter when this workload id "
                             "starts, to check that the time limit tears the mount down")
    parser.add_argument("--timeout-scale", type=float, default=1.0,
                        help="multiply every step's time limit (slow machines)")
    parser.add_argument("--workdir", default=None,
                        help="parent of the temporary directory (default: $TMPDIR or /tmp)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary directory (logs, server data) afterwards")
    args = parser.parse_args(argv)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = [t for t in targets if t not in TARGETS]
    if unknown:
        parser.error(f"unknown target(s): {', '.join(unknown)}")
    if "direct" not in targets:
        targets.insert(0, "direct")
    args.targets = [t for t in TARGETS if t in targets]
    groups = [g.strip() for g in args.workloads.split(",") if g.strip()]
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        parser.error(f"unknown workload group(s): {', '.join(unknown)}")
    args.workloads = groups
    return args


def preflight(args) -> list[str]:
    problems = []
    if os.geteuid() != 0:
        problems.append("run as root (FUSE mounts, drop_caches)")
    if not os.path.exists("/dev/fuse"):
        problems.append("/dev/fuse is missing")
    for tool in ("fio", "fusermount3", "tar"):
        if not shutil.which(tool):
            problems.append(f"{tool} is not installed (scripts/bootstrap.sh installs it)")
    if any(t.startswith("s3fs") for t in args.targets) and not shutil.which("s3fs"):
        problems.append("s3fs is not installed (scripts/bootstrap.sh installs it)")
    return problems


def main(argv=None) -> int:
    args = parse_args(argv)
    problems = preflight(args)
    if problems:
        for p in problems:
            log(f"run.py: {p}")
        return 2
    profile = dict(PROFILES["quick" if args.quick else "full"])
    if args.reps:
        profile["reps"] = args.reps
    bench = Bench(args, profile)
    command = "benchmarks/run.py " + " ".join(sys.argv[1:] if argv is None else argv)

    def on_term(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_term)

    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="s3pyfs-bench-", dir=args.workdir))
    interrupted = False
    try:
        bench.setup(tmp)
        bench.collect_facts()
        bench.run()
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted: cleaning up")
    finally:
        bench.shutdown()
        if args.keep or interrupted:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    elapsed = time.perf_counter() - started
    if not bench.values:
        return 1

    print()
    print(f"s3pyfs benchmark, {'quick' if args.quick else 'full'}: median of {bench.reps} "
          f"run(s); (ratio) = direct S3 time / mounter time (IOPS: mounter / direct); "
          f"> 1 is faster than direct S3")
    print(bench.table())
    print()
    print("S3 requests per workload (SeaweedFS counts HEAD as GET, DeleteObjects as DELETE):")
    print(bench.s3_table())
    print()
    print("Mounter CPU seconds per workload:")
    print(bench.cpu_table())
    problems = bench.error_lines()
    if problems:
        print()
        print("Problems:")
        for line in problems:
            print(f"  {line}")
    print()
    print(f"total time {elapsed / 60:.1f} min")
    if args.markdown:
        Path(args.markdown).write_text(bench.markdown(elapsed, command))
        log(f"wrote {args.markdown}")
    if args.json:
        raw = {"facts": bench.facts, "profile": profile, "tree": bench.tree,
               "values": {f"{w}/{t}": v for (w, t), v in bench.values.items()},
               "errors": {f"{w}/{t}": v for (w, t), v in bench.errors.items()},
               "s3": {f"{w}/{t}": v for (w, t), v in bench.s3stats.items()},
               "cpu": {f"{w}/{t}": v for (w, t), v in bench.cpu.items()},
               "notes": bench.notes}
        Path(args.json).write_text(json.dumps(raw, indent=1))
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
