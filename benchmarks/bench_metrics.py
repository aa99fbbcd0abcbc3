"""Cost of metrics on the data path: HEAD-bound stat() calls through a real mount.

Three mounts of one bucket on SeaweedFS (stat_cache_expire=0, so every stat is a
lookup answered by a HEAD), run in turns, several rounds:
  off      the counting hooks replaced by no-ops (no product code change: the
           mount process is started through a wrapper that patches metrics.py)
  on       the normal build (counters bumped in _guard and S3Client._do)
  scraped  normal build, its Prometheus endpoint scraped 10 times a second
Also times the hooks alone (timeit).

    .venv/bin/python benchmarks/bench_metrics.py [--ops 2000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
import timeit
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

import support  # noqa: E402

from s3pyfs import metrics  # noqa: E402

NO_HOOKS = ("import sys, s3pyfs.metrics as m; m.Counters.fuse_done = m.Counters.s3_done = "
            "m.Counters.s3_received = lambda *a, **k: None; from s3pyfs.cli import main; sys.exit(main())")


def hooks_alone(n: int = 200_000) -> tuple[float, float]:
    c = metrics.Counters()
    fuse = timeit.timeit(lambda: c.fuse_done("getattr", time.perf_counter()), number=n) / n
    s3 = timeit.timeit(lambda: c.s3_done("HEAD dir/file", "ok", time.perf_counter()), number=n) / n
    return fuse * 1e6, s3 * 1e6


def mount(server, bucket: str, work: Path, name: str, hooks: bool, port: int | None):
    d = work / name
    d.mkdir()
    (d / "mnt").mkdir()
    passwd = d / "passwd"
    passwd.write_text(f"{server.access_key}:{server.secret_key}\n")
    passwd.chmod(0o600)
    opts = f"url={server.endpoint},use_path_request_style,passwd_file={passwd},stat_cache_expire=0"
    if port:
        opts += f",metrics=127.0.0.1:{port}"
    head = [sys.executable, "-m", "s3pyfs"] if hooks else [sys.executable, "-c", NO_HOOKS]
    cmd = head + [bucket, str(d / "mnt"), "-f", "-o", opts]
    env = dict(os.environ, AWS_EC2_METADATA_DISABLED="true", AWS_CONFIG_FILE=os.devnull,
               AWS_SHARED_CREDENTIALS_FILE=os.devnull)
    m = support.Mount(d / "mnt", cmd, env, d / "log")
    m.start()
    m.wait_mounted(30)
    return m


def run_stats(path: Path, ops: int, files: int) -> float:
    names = [path / f"f{i}" for i in range(files)]
    started = time.perf_counter()
    for i in range(ops):
        os.stat(names[i % files])
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ops", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    fuse_us, s3_us = hooks_alone()
    print(f"hooks alone: fuse_done {fuse_us:.2f} us, s3_done {s3_us:.2f} us per call")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        server = support.SeaweedServer(work / "seaweed")
        server.start()
        mounts = []
        try:
            client = server.client()
            client.create_bucket(Bucket="bench-metrics")
            for i in range(50):
                client.put_object(Bucket="bench-metrics", Key=f"f{i}", Body=b"x" * 100)
            port = support.free_ports(1)[0]
            variants = {"off": mount(server, "bench-metrics", work, "off", False, None),
                        "on": mount(server, "bench-metrics", work, "on", True, None),
                        "scraped": mount(server, "bench-metrics", work, "scraped", True, port)}
            mounts = list(variants.values())
            times: dict[str, list[float]] = {name: [] for name in variants}
            scrapes = [0]
            for _ in range(args.rounds):
                for name, m in variants.items():
                    stop = threading.Event()

                    def scraper():
                        while not stop.wait(0.1):
                            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                                r.read()
                            scrapes[0] += 1
                    thread = threading.Thread(target=scraper, daemon=True) if name == "scraped" else None
                    if thread:
                        thread.start()
                    times[name].append(run_stats(m.path, args.ops, 50))
                    stop.set()
                    if thread:
                        thread.join()
            for name, values in times.items():
                med = statistics.median(values)
                print(f"{name:8} {args.ops} stat() (HEAD each): median {med:.3f} s = {med / args.ops * 1e3:.3f} ms/op "
                      f"(runs: {', '.join(f'{v:.3f}' for v in values)})")
            print(f"scrapes during 'scraped' runs: {scrapes[0]}")
        finally:
            for m in mounts:
                m.unmount()
            server.stop()


if __name__ == "__main__":
    main()
