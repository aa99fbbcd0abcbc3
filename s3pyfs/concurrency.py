"""Bounded fan-out of S3 requests under trio.

Responsibility: run many small jobs with at most `limit` at once and report
failure the way a single call would: the first ordinary exception, unwrapped
from trio's ExceptionGroup, so callers (and errno mapping) see an `FSError`.
`background_spawner` runs fire-and-forget work (read-ahead) in the mount's
background nursery.  `Deadline` carries one system call's bound to every S3
request (and wait for one) made on its behalf.
Invariants:
  * All jobs have finished or been cancelled when `run_all` returns or raises;
    cancellation from outside still propagates (trio re-raises Cancelled at the
    caller's next checkpoint if a job error was reported instead).
  * A deadline is set per FUSE request (`carry`/`drop`, operations.py) in a context
    variable, so the tasks a request starts with `run_all` (multipart parts)
    share it; background work (`background_spawner`) and the mount's own tasks
    (retries, drain) carry none.
  * A deadline is `seconds` after the later of its start and the last answer
    S3 gave the mount (`Progress`): a dead or hanging endpoint ends every
    waiting system call `seconds` after it began, while one that keeps
    answering (a large upload, parts sent in the background) never cuts a
    call that is making progress.  `bounded()` scopes follow a moved deadline.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import math
from collections.abc import Awaitable, Callable, Iterable, Iterator

import trio

from .errors import RemoteTimeout

log = logging.getLogger(__name__)

Job = Callable[[], Awaitable[object]]


def background_spawner(nursery: trio.Nursery) -> Callable[..., None]:
    """`spawn(fn, *args)` runs `fn(*args)` in `nursery`; a failure is logged, never
    propagated (it would cancel the nursery, and with it the mount)."""
    async def guarded(fn, *args) -> None:
        _current.set(None)          # not bound by the system call that happened to start it
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


# ---------------------------------------------------------------------------------- deadlines

class Progress:
    """When S3 last answered the mount (any answer, errors included: the endpoint is alive).
    Moves the cancel scopes of every `bounded()` block along, at most once a second (so a
    scope may end up to a second before its deadline's exact time)."""

    STEP = 1.0

    def __init__(self) -> None:
        self.last = -math.inf
        self._moved = -math.inf
        self.scopes: dict[trio.CancelScope, tuple[Deadline, float]] = {}

    def answered(self) -> None:
        now = self.last = trio.current_time()
        if now - self._moved < self.STEP or not self.scopes:
            return
        self._moved = now
        for scope, (deadline, cap) in self.scopes.items():
            scope.deadline = min(cap, deadline.at)


class Deadline:
    """The bound of one system call: `seconds` after the later of its start and the
    mount's last answer from S3."""

    __slots__ = ("seconds", "progress", "start")

    def __init__(self, seconds: float, progress: Progress):
        self.seconds = seconds
        self.progress = progress
        self.start = trio.current_time()

    @property
    def at(self) -> float:
        return max(self.start, self.progress.last) + self.seconds


_current: contextvars.ContextVar[Deadline | None] = contextvars.ContextVar("s3pyfs_deadline", default=None)


def current_deadline() -> Deadline | None:
    return _current.get()


def carry(deadline: Deadline | None) -> contextvars.Token:
    """From now on (until `drop(token)`) S3 requests and waits of this task, and of the
    tasks it starts (not background ones), end by `deadline`."""
    return _current.set(deadline)


def drop(token: contextvars.Token) -> None:
    _current.reset(token)


@contextlib.contextmanager
def bounded(cap: float = math.inf) -> Iterator[None]:
    """trio.fail_at(cap), cut earlier by the current deadline (and moved with it):
    raises trio.TooSlowError when the block was cut."""
    deadline = _current.get()
    scope = trio.CancelScope(deadline=cap if deadline is None else min(cap, deadline.at))
    if deadline is not None:
        deadline.progress.scopes[scope] = (deadline, cap)
    try:
        with scope:
            yield
    finally:
        if deadline is not None:
            deadline.progress.scopes.pop(scope, None)
    if scope.cancelled_caught:
        raise trio.TooSlowError


@contextlib.contextmanager
def waiting(what: str) -> Iterator[None]:
    """A wait for other work (a file's lock, a rename's gate) within the current deadline:
    RemoteTimeout when the deadline passes first (no deadline: waits as long as it takes)."""
    deadline = _current.get()
    if deadline is None:
        yield
        return
    try:
        with bounded():
            yield
    except trio.TooSlowError:
        raise RemoteTimeout(f"{what}: still busy after {deadline.seconds:g} s without an answer "
                            f"from S3 (request_timeout)") from None
