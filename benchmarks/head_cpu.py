"""CPU per HEAD through `S3Client.head`, A/B between s3pyfs trees.

    python benchmarks/head_cpu.py [--heads 2000] [--reps 3] [--parallel 32] TREE [TREE ...]

Starts a private SeaweedFS (tests/support.py), puts `--heads` small objects
carrying s3fs metadata, then for every repetition and every TREE (a directory
holding the s3pyfs package, e.g. an export of main and a worktree; interleaved
so that load from other work hits both alike) runs a child process that opens
a client, HEADs one key (botocore's HEAD teaches the URL), then HEADs every
key once sequentially and once with `--parallel` in flight (as a readdir
does), and prints the process's user+sys CPU per HEAD (both threads: the
trio thread and the asyncio thread).  CPU, not wall time, is the figure:
on a shared machine wall time mostly measures the neighbours.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import support  # noqa: E402

CHILD = r"""
import json, os, sys, time
sys.path.insert(0, sys.argv[1])
import trio
from s3pyfs.credentials import StaticKeys
from s3pyfs.s3client import ClientSettings, open_client

endpoint, bucket, access, secret, n, parallel = sys.argv[2:8]
n, parallel = int(n), int(parallel)

def cpu():
    t = os.times()
    return t.user + t.system

async def main():
    settings = ClientSettings(bucket=bucket, endpoint_url=endpoint, path_style=True,
                              static_keys=StaticKeys(access, secret), request_timeout=60)
    async with open_client(settings) as client:
        assert await client.head("k0") is not None
        for i in range(50):                       # warm up: imports, pools, caches
            await client.head(f"k{i % n}")
        start = cpu()
        for i in range(n):
            assert (await client.head(f"k{i}")).metadata["mode"] == "33188"
        sequential = (cpu() - start) / n
        limiter = trio.CapacityLimiter(parallel)

        async def one(i):
            async with limiter:
                assert await client.head(f"k{i}") is not None
        start = cpu()
        async with trio.open_nursery() as nursery:
            for i in range(n):
                nursery.start_soon(one, i)
        concurrent = (cpu() - start) / n
    import s3pyfs
    print(json.dumps({"sequential_us": sequential * 1e6, "parallel_us": concurrent * 1e6, "from": s3pyfs.__file__}))

trio.run(main)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trees", nargs="+")
    parser.add_argument("--heads", type=int, default=2000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--parallel", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="head-cpu-") as work:
        server = support.SeaweedServer(Path(work))
        server.start()
        try:
            s3 = server.client()
            s3.create_bucket(Bucket="heads")
            meta = {"mode": "33188", "uid": "0", "gid": "0", "mtime": "1600000000"}
            for i in range(args.heads):
                s3.put_object(Bucket="heads", Key=f"k{i}", Body=b"x" * 64, Metadata=meta)
            results: dict[str, list[dict]] = {tree: [] for tree in args.trees}
            for rep in range(args.reps):
                for tree in args.trees:
                    out = subprocess.run(
                        [sys.executable, "-c", CHILD, os.path.abspath(tree), server.endpoint, "heads",
                         server.access_key, server.secret_key, str(args.heads), str(args.parallel)],
                        capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": ""})
                    value = json.loads(out.stdout.strip().splitlines()[-1])
                    results[tree].append(value)
                    assert value["from"].startswith(os.path.abspath(tree)), value["from"]
                    print(f"rep {rep + 1} {tree}: sequential {value['sequential_us']:.0f} µs/HEAD, "
                          f"{args.parallel} in flight {value['parallel_us']:.0f} µs/HEAD", flush=True)
            for tree, values in results.items():
                seq = sorted(v["sequential_us"] for v in values)
                par = sorted(v["parallel_us"] for v in values)
                print(f"median {tree}: sequential {seq[len(seq) // 2]:.0f} µs/HEAD, "
                      f"parallel {par[len(par) // 2]:.0f} µs/HEAD")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
