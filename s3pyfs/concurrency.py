"""Bounded fan-out of S3 requests under trio.

Responsibility: run many small jobs with at most `limit` at once and report
failure the way a single call would: the first ordinary exception, unwrapped
from trio's ExceptionGroup, so callers (and errno mapping) see an `FSError`.
`background_spawner` runs fire-and-forget work (read-ahead) in the mount's
background nursery.
Invariant: all jobs have finished or been cancelled when `run_all` returns or
raises; cancellation from outside still propagates (trio re-raises Cancelled
at the caller's next checkpoint if a job error was reported instead).
"""

from __future__ import annotations

import logging
from typing import Awaitable, Callable, Iterable

import trio

log = logging.getLogger(__name__)

Job = Callable[[], Awaitable[object]]


def background_spawner(nursery: trio.Nursery) -> Callable[..., None]:
    """`spawn(fn, *args)` runs `fn(*args)` in `nursery`; a failure is logged, never
    propagated (it would cancel the nursery, and with it the mount)."""
    async def guarded(fn, *args) -> None:
        try:
            await fn(*args)
        except Exception:
            log.exception("background task %s failed", getattr(fn, "__qualname__", fn))

    def spawn(fn, *args) -> None:
        nursery.start_soon(guarded, fn, *args)
    return spawn


def first_error(group: BaseExceptionGroup) -> Exception | None:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            found = first_error(exc)
            if found is not None:
                return found
        elif isinstance(exc, Exception):
            return exc
    return None


async def run_all(jobs: Iterable[Job], limit: int) -> None:
    limiter = trio.CapacityLimiter(max(1, limit))

    async def one(job: Job) -> None:
        async with limiter:
            await job()
    try:
        async with trio.open_nursery() as nursery:
            for job in jobs:
                nursery.start_soon(one, job)
    except BaseExceptionGroup as group:
        error = first_error(group)
        if error is None:
            raise
        raise error from None
