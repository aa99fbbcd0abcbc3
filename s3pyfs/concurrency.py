"""Bounded fan-out of S3 requests under trio.

Responsibility: run many small jobs with at most `limit` at once and report
failure the way a single call would: the first ordinary exception, unwrapped
from trio's ExceptionGroup, so callers (and errno mapping) see an `FSError`.
Invariant: all jobs have finished or been cancelled when `run_all` returns or
raises; cancellation from outside still propagates (trio re-raises Cancelled
at the caller's next checkpoint if a job error was reported instead).
"""

from __future__ import annotations

from typing import Awaitable, Callable, Iterable

import trio

Job = Callable[[], Awaitable[object]]


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
