"""One S3 request's slot, deadline, retries, counters and error translation.

Responsibility: the one loop every request of s3client.py runs in, whichever
way it is sent (botocore on the asyncio thread, or s3lean.py's HEAD and GET
on trio sockets), so that both ways share the same rules:
Invariants:
  * `Requests.run` bounds one request, all its tries included, by
    `request_timeout` from the moment it runs, cut by the system call's
    deadline (concurrency.bounded); past it: RemoteTimeout.
  * `Requests.take_slot` takes a slot of the mount's one request limiter
    (`max_connections`), waited for within the system call's deadline; a slot
    is held only around one request (`do`), never while waiting for another.
  * Tried again (same deadline, up to `retries` tries, jittered backoff): what
    botocore does not retry but another try may cure: a body cut short or
    reset while read, a body failing its check (`DamagedBody`), BadDigest.
  * Every request is counted once (metrics.py): operation, outcome, latency,
    bytes sent, botocore's retries plus ours; every answer (an S3 error too)
    moves the mount's `progress`.
  * Errors leave only as `errors.FSError` subclasses (`translate`): the S3
    error code and request id in the message, never credentials.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Coroutine
from typing import Any

import aiohttp
import trio
from aiobotocore.response import AioReadTimeoutError
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    IncompleteReadError,
    NoCredentialsError,
    PartialCredentialsError,
    ResponseStreamingError,
)

from . import metrics
from .concurrency import Progress, bounded, current_deadline
from .errors import AccessDenied, Conflict, FSError, NameTooLong, NoSuchBucket, NotFound, RemoteIOError, RemoteTimeout

log = logging.getLogger(__name__)

NOT_FOUND = {"NoSuchKey", "404", "NotFound"}
_DENIED = {"AccessDenied", "403", "Forbidden", "AllAccessDisabled"}
_BAD_CREDS = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
              "TokenRefreshRequired", "InvalidClientTokenId"}
CHANGED = "the object changed while it was being read (its ETag is not the one read before)"
_NOT_BASE = "S3 holds another version than the one this data was based on; not overwritten"
# a conditional request whose condition did not hold (409: a concurrent conditional write won)
_CONDITION_FAILED = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}


class BadAnswer(Exception):
    """An answer S3 gave that fails our checks; becomes RemoteIOError with this message."""
    retry = False
    outcome = "damaged"        # metrics label


class DamagedBody(BadAnswer):
    """A response body that is short or fails its MD5 check (or a lean answer cut short): tried again."""
    retry = True


class ObjectChanged(BadAnswer):
    """A GET pinned to an ETag found another version of the object."""


class PinFailed(ObjectChanged):
    """The store answered 412 to a GET pinned to an ETag (If-Match)."""
    outcome = "412"


# Failures botocore does not retry but another try may cure: errors while reading a GET body
# (it is read after botocore's retry loop has returned), a body failing its check, BadDigest.
_BODY_ERRORS = (IncompleteReadError, ResponseStreamingError, AioReadTimeoutError, aiohttp.ClientPayloadError)


def worth_another_try(exc: BaseException) -> bool:
    if isinstance(exc, _BODY_ERRORS):
        return True
    if isinstance(exc, BadAnswer):
        return exc.retry
    return isinstance(exc, ClientError) and error_code(exc) == "BadDigest"


def backoff(attempt: int) -> float:
    """Seconds before try `attempt + 1`: 0.1, 0.2, 0.4 ... capped at 2, with full jitter."""
    return random.uniform(0, min(2.0, 0.1 * 2 ** (attempt - 1)))


def error_code(exc: ClientError) -> str:
    err = exc.response.get("Error", {})
    return str(err.get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))


def retries_of(result: Any) -> int:
    """botocore's RetryAttempts of a response (or of a ClientError), 0 when unknown."""
    if isinstance(result, tuple):
        result = result[0]
    elif isinstance(result, ClientError):
        result = result.response
    if isinstance(result, dict):
        return int(result.get("ResponseMetadata", {}).get("RetryAttempts") or 0)
    return 0


def translate(exc: BaseException, what: str) -> FSError:
    if isinstance(exc, ClientError):
        code = error_code(exc)
        if code in NOT_FOUND:
            return NotFound(f"{what}: not found")
        if code in _DENIED:
            return AccessDenied(f"{what}: access denied")
        if code == "NoSuchBucket":
            return NoSuchBucket(f"{what}: the bucket does not exist")
        if code == "KeyTooLongError":
            return NameTooLong(f"{what}: the store refuses keys this long")
        if code in _BAD_CREDS:
            return AccessDenied(f"{what}: credentials rejected ({code})")
        if code in _CONDITION_FAILED:
            # a GET pinned to an ETag, or a conditional PUT / CompleteMultipartUpload
            return Conflict(f"{what}: {CHANGED if what.startswith('GET') else _NOT_BASE}")
        request_id = exc.response.get("ResponseMetadata", {}).get("RequestId", "")
        error = RemoteIOError(f"{what}: S3 error {code} {request_id}".rstrip())
        error.request_id = request_id
        return error
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return AccessDenied(f"{what}: no usable credentials")
    if isinstance(exc, ObjectChanged):
        return Conflict(str(exc))
    if isinstance(exc, BadAnswer):
        return RemoteIOError(str(exc))
    return RemoteIOError(f"{what}: {type(exc).__name__}: {exc}")


class Requests:
    """The mount's request limiter and the loop each request runs in (see the module docstring)."""

    def __init__(self, settings) -> None:
        self.settings = settings        # s3client.ClientSettings: retries, request_timeout, max_connections
        self.slots = trio.CapacityLimiter(max(1, settings.max_connections))
        self.progress = Progress()      # when S3 last answered: moves the system calls' deadlines

    async def do(self, what: str, attempt: Callable[[], Coroutine[Any, Any, Any]], sent: int = 0,
                 check: Callable[[Any], Coroutine[Any, Any, None]] | None = None) -> Any:
        """`run` holding a slot of the request limiter."""
        await self.take_slot(what)
        try:
            return await self.run(what, attempt, sent, check)
        finally:
            self.slots.release()

    async def take_slot(self, what: str) -> None:
        """A slot of the mount's request limiter, waited for within the system call's
        deadline if one is carried (RemoteTimeout when it passes first)."""
        started = time.perf_counter()
        try:
            if current_deadline() is None:
                await self.slots.acquire()
            else:
                with bounded():                  # the system call's deadline
                    await self.slots.acquire()
        except trio.TooSlowError:
            error = RemoteTimeout(f"{what}: no request slot free within {self.settings.request_timeout:g} s "
                                  f"(all {self.settings.max_connections} busy, S3 silent)")
            metrics.counters.s3_done(what, "timeout", started, message=str(error))
            raise error from None

    async def run(self, what: str, attempt: Callable[[], Coroutine[Any, Any, Any]], sent: int = 0,
                  check: Callable[[Any], Coroutine[Any, Any, None]] | None = None) -> Any:
        """`attempt()` (in trio; it may hand work to the asyncio thread) within the deadline,
        `check(result)` after it (may raise DamagedBody); tried again while
        `worth_another_try`; counted; errors become FSError."""
        started = time.perf_counter()
        ours = 0
        try:
            with bounded(trio.current_time() + self.settings.request_timeout):
                while True:
                    try:
                        result = await attempt()
                        if check is not None:
                            await check(result)
                        break
                    except (ClientError, BotoCoreError, aiohttp.ClientError, BadAnswer) as exc:
                        if ours + 1 >= self.settings.retries or not worth_another_try(exc):
                            raise
                        ours += 1
                        log.info("%s: %s; trying again (%d of %d)", what, exc, ours + 1, self.settings.retries)
                        await trio.sleep(backoff(ours))
        except trio.TooSlowError:
            error: FSError = RemoteTimeout(f"{what}: no answer within {self.settings.request_timeout:g} s")
            metrics.counters.s3_done(what, "timeout", started, message=str(error))
            raise error from None
        except (ClientError, BotoCoreError, BadAnswer) as exc:
            if isinstance(exc, (ClientError, BadAnswer)):
                self.progress.answered()         # an answer, if not the one wanted
            error = translate(exc, what)
            outcome = (error_code(exc) if isinstance(exc, ClientError)
                       else exc.outcome if isinstance(exc, BadAnswer) else "connection")
            metrics.counters.s3_done(what, outcome or "error", started, retries=retries_of(exc) + ours,
                                     message=str(error))
            raise error from None
        except (TimeoutError, OSError, aiohttp.ClientError) as exc:
            error = RemoteIOError(f"{what}: {type(exc).__name__}: {exc}")
            metrics.counters.s3_done(what, "connection", started, message=str(error))
            raise error from None
        except trio.Cancelled:
            metrics.counters.s3_done(what, "cancelled", started)
            raise
        self.progress.answered()
        metrics.counters.s3_done(what, "ok", started, sent, retries_of(result) + ours)
        return result
