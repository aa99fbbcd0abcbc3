"""Timed file operations, run by benchmarks/run.py as a child process.

A child process, so that a mounter that stops answering cannot hang the
benchmark: run.py kills this process (and aborts the FUSE connection) when a
step exceeds its time limit.  Each command prints one JSON object on stdout.

  write PATH BYTES          create PATH, write BYTES in 1 MiB write() calls,
                            close; time from open to the return of close()
  read PATH [PATH ...]      read each file to the end with 1 MiB read() calls,
                            one thread per file, all at once; time until the
                            last one finished
  create DIR COUNT BYTES    mkdir DIR, then COUNT files of BYTES each, one after
                            the other (open, write, close)
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time

MiB = 1 << 20
BLOCK = 8 * MiB


def data_source() -> bytes:
    # Incompressible and different in every 8 MiB region (each region is a
    # slice of this buffer at another offset), without generating 1 GiB of
    # random bytes.
    return os.urandom(BLOCK + 64 * 1024)


def write_file(path: str, size: int) -> dict:
    source = memoryview(data_source())
    start = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        done = 0
        while done < size:
            region, within = divmod(done, BLOCK)
            shift = (region * 4099) % (64 * 1024)
            n = min(MiB - within % MiB, size - done)
            chunk = source[shift + within: shift + within + n]
            while chunk:
                written = os.write(fd, chunk)
                chunk = chunk[written:]
                done += written
    finally:
        os.close(fd)
    return {"seconds": time.perf_counter() - start, "bytes": size}


def read_files(paths: list[str]) -> dict:
    totals = [0] * len(paths)
    errors: list[str] = []

    def reader(index: int, path: str) -> None:
        buf = bytearray(MiB)
        try:
            fd = os.open(path, os.O_RDONLY)
            try:
                while True:
                    n = os.readv(fd, [buf])
                    if n == 0:
                        break
                    totals[index] += n
            finally:
                os.close(fd)
        except OSError as exc:
            errors.append(f"{path}: {exc}")

    threads = [threading.Thread(target=reader, args=(i, p)) for i, p in enumerate(paths)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - start
    if errors:
        raise OSError("; ".join(errors))
    return {"seconds": seconds, "bytes": sum(totals), "per_file": totals}


def create_files(directory: str, count: int, size: int) -> dict:
    body = os.urandom(size)
    start = time.perf_counter()
    os.makedirs(directory, exist_ok=True)
    for i in range(count):
        fd = os.open(os.path.join(directory, f"f{i:05d}"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
                     0o644)
        try:
            os.write(fd, body)
        finally:
            os.close(fd)
    return {"seconds": time.perf_counter() - start, "files": count}


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    command, args = argv[0], argv[1:]
    try:
        if command == "write" and len(args) == 2:
            result = write_file(args[0], int(args[1]))
        elif command == "read" and args:
            result = read_files(args)
        elif command == "create" and len(args) == 3:
            result = create_files(args[0], int(args[1]), int(args[2]))
        else:
            print(__doc__, file=sys.stderr)
            return 2
    except OSError as exc:
        print(f"{command}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
