"""Workloads that stress a mount's memory: many concurrent sequential readers, many
concurrent writers of large files; and the mount process's peak RSS.

Used by tests/test_memory.py (s3pyfs at its defaults, peak bound) and by
benchmarks/memory.py (s3pyfs beside s3fs-fuse).  The filesystem process must be
the process whose pid is given (mounters run in the foreground).
"""

from __future__ import annotations

import concurrent.futures
import io
import os
import time
from pathlib import Path

MiB = 1024 * 1024


def reset_peak_rss(pid: int) -> None:
    """Start VmHWM afresh from the current RSS (so setup does not count)."""
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


def peak_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


def reader_sizes(count: int, step_mib: int = 1) -> list[int]:
    """`count` different sizes from 64 MiB up, `step_mib` apart (whole MiB)."""
    return [(64 + step_mib * i) * MiB for i in range(count)]


def source_bytes(size: int) -> bytes:
    """Incompressible bytes, position dependent (a repeated random block of 1 MiB + 7)."""
    block = os.urandom(MiB + 7)
    reps = size // len(block) + 1
    return (block * reps)[:size]


def put_reader_objects(client, bucket: str, count: int, prefix: str = "readers/") -> tuple[dict[str, int], bytes]:
    """Objects `readers/rNN` of reader_sizes(count); returns ({key: size}, source): every
    object is a prefix of the same source bytes."""
    from boto3.s3.transfer import TransferConfig
    sizes = reader_sizes(count)
    data = source_bytes(max(sizes))
    config = TransferConfig(multipart_threshold=32 * MiB, multipart_chunksize=32 * MiB, max_concurrency=4)
    for i, size in enumerate(sizes):
        client.upload_fileobj(io.BytesIO(memoryview(data)[:size]), bucket, f"{prefix}r{i:02d}", Config=config)
    return {f"{prefix}r{i:02d}": size for i, size in enumerate(sizes)}, data


def read_concurrently(root: Path, sizes: dict[str, int], data: bytes, pause_after: int = 24 * MiB,
                      pause: float = 3.0) -> None:
    """One thread per file, each reading it to the end with 1 MiB reads; checks size and
    every 8th MiB against the source.  Each reader stops for `pause` seconds once it has
    read `pause_after` bytes (a consumer busy with what it got), which gives read-ahead
    the chance to fill whatever window it allows itself."""
    def one(key: str, size: int) -> None:
        got = 0
        with open(root / key, "rb", buffering=0) as f:
            while True:
                if got == pause_after:
                    time.sleep(pause)
                chunk = f.read(MiB)
                if not chunk:
                    break
                if (got // MiB) % 8 == 0 and chunk != data[got:got + len(chunk)]:
                    raise AssertionError(f"{key}: wrong bytes at {got}")
                got += len(chunk)
        if got != size:
            raise AssertionError(f"{key}: read {got} bytes of {size}")
    with concurrent.futures.ThreadPoolExecutor(len(sizes)) as pool:
        for future in [pool.submit(one, k, s) for k, s in sizes.items()]:
            future.result()


def write_concurrently(directory: Path, count: int, size: int) -> list[str]:
    """`count` threads, each writing its own file of `size` bytes in 1 MiB writes; returns
    the file names (relative to `directory`)."""
    directory.mkdir(parents=True, exist_ok=True)
    block = os.urandom(MiB)
    names = [f"w{i:02d}" for i in range(count)]

    def one(name: str) -> None:
        with open(directory / name, "wb", buffering=0) as f:
            view = memoryview(bytes([names.index(name)]) + block[1:])
            for _ in range(size // MiB):
                f.write(view)
    with concurrent.futures.ThreadPoolExecutor(count) as pool:
        for future in [pool.submit(one, n) for n in names]:
            future.result()
    return names
