"""Local disk I/O off the trio thread.

Responsibility: run a blocking call on local disk (staging files, journal
records, disk-cache blocks, the statistics file, recovery's hashing) in a
worker thread, so that a slow or stalled disk delays only the requests that
need those bytes, never every lookup of the mount.
Invariants:
  * At most `DISK_THREADS` such calls run at once per trio run (one
    CapacityLimiter kept in a RunVar); they never take a slot of trio's
    default thread limiter, so a stalled disk cannot starve other threads.
  * A call is not cancellable once started (trio's default): its result is
    always seen by the caller's bookkeeping, or the run ends after it.
  * Outside a trio run (synchronous tools, tests) the call runs inline.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import trio

T = TypeVar("T")

DISK_THREADS = 16

_LIMITER: trio.lowlevel.RunVar = trio.lowlevel.RunVar("s3pyfs_disk_limiter")


def limiter() -> trio.CapacityLimiter:
    try:
        return _LIMITER.get()
    except LookupError:
        value = trio.CapacityLimiter(DISK_THREADS)
        _LIMITER.set(value)
        return value


def in_trio() -> bool:
    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        return False
    return True


async def run(fn: Callable[..., T], *args) -> T:
    """`fn(*args)` in a disk thread; its exception is raised here."""
    return await trio.to_thread.run_sync(fn, *args, limiter=limiter())
