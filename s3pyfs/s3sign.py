"""Signing of the lean requests (s3lean.py) on the trio thread, with botocore's own signer.

Responsibility: s3get.py's HEADs and GETs used to hop to the asyncio thread
for every signature (the client's signer is async only because its
credentials may refresh).  `LeanSigner.sign` signs on the trio thread with
the botocore auth instance (`S3SigV4Auth` for SigV4) that the client's own
signer builds for the learnt signing context (`s3fast.FastPath.snapshot`,
taken on the asyncio thread), holding a frozen copy of the credentials.
Invariants:
  * No signing code of our own: the auth class, its region and signing name
    and the frozen credentials all come from the client's signer.
  * A snapshot is used for at most `MAX_AGE` seconds, and never inside
    botocore's advisory refresh window before the credentials expire: then a
    new one is taken through the loop thread (which refreshes the
    credentials the way botocore's requests do), one taker at a time.
  * `invalidate()` (a 403 on the lean path) ends the snapshot once it is
    `_MIN_AGE` old: the request goes through botocore, a later one signs with
    a fresh snapshot (keys denied one object by policy cost at most one
    snapshot a second, not one per request).
  * None instead of a signature whenever the URL is not learnt yet, the
    signer is one this path does not handle, or signing failed (the caller
    sends the request through botocore); secrets never reach a log line.
  * Runs on the trio thread only.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from botocore.awsrequest import AWSRequest

from .s3fast import Snapshot, key_path

log = logging.getLogger(__name__)

MAX_AGE = 60.0              # seconds a credentials snapshot is used at most
_MIN_AGE = 1.0              # ... and at least (credentials stuck inside the refresh window)


class LeanSigner:
    def __init__(self, ready: Callable[[], bool], take: Callable[[], Awaitable[Snapshot | None]]):
        self._ready = ready           # is the URL learnt (s3fast.FastPath.learnt)?
        self._take = take             # a new snapshot, through the loop thread
        self._snap: Snapshot | None = None
        self._until = 0.0             # trio time after which `_snap` is not used
        self._taken = 0.0             # trio time `_snap` was taken
        self._lock = trio.Lock()
        self.unusable = False         # the client's signer is one this path does not handle
        self.snapshots = 0            # for tests: snapshots taken

    def invalidate(self) -> None:
        self._until = min(self._until, self._taken + _MIN_AGE)

    async def _snapshot(self) -> Snapshot | None:
        if self._snap is not None and trio.current_time() < self._until:
            return self._snap
        async with self._lock:
            if self._snap is not None and trio.current_time() < self._until:
                return self._snap            # taken while this task waited
            try:
                snap = await self._take()
            except Exception as exc:        # noqa: BLE001  (a failed refresh: botocore's path reports it)
                log.debug("no signing snapshot: %s", type(exc).__name__)
                return None
            if snap is None:
                self.unusable = True
                return None
            self.snapshots += 1
            self._snap = snap
            self._taken = trio.current_time()
            self._until = self._taken + max(_MIN_AGE, min(MAX_AGE, snap.fresh_for))
            return snap

    async def sign(self, method: str, key: str, headers: dict[str, str]) -> tuple[str, dict[str, str]] | None:
        """URL and signed headers of `method` on `key` with `headers`, or None (see above)."""
        if self.unusable or not self._ready():
            return None
        snap = await self._snapshot()
        if snap is None:
            return None
        request = AWSRequest(method=method, url=snap.base + key_path(key), headers=headers)
        request.context.update(signing=dict(snap.signing), client_config=snap.config)
        try:
            if snap.auth is not None:
                snap.auth.add_auth(request)
        except Exception as exc:        # noqa: BLE001  (the message never holds the secret)
            log.debug("signing %s %s: %s; sending it through botocore", method, key, type(exc).__name__)
            return None
        signed: dict[str, Any] = dict(request.headers.items())
        return request.url, signed
