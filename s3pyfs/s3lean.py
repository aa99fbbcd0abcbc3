"""HEADs and ranged GETs of s3client.py on trio sockets, signed on the trio thread.

Responsibility: the glue between s3client.py and the lean path: s3sign.py signs
(botocore's auth class, credentials snapshot), s3get.py sends and receives,
and this module turns the answers into what s3client reads from botocore's
(HeadObject fields through `s3fast.head_response`, GetObject fields for the
body checks) or into the exceptions `s3request.Requests.run` retries and
counts.  No trio<->asyncio hop per request: only a snapshot refresh hops.
Invariants:
  * HEAD: 200 -> the answer's fields, 404 -> None (absent); any other status
    -> `FALLBACK` (botocore's path sends it again and reports errors); a path
    that cannot send at all (URL not learnt, proxy configured, signer not
    handled, no connection) -> `NOT_HERE` (s3client takes its earlier ways).
  * GET: (GetObject-shaped fields, bytearray) or `FALLBACK`; a 412 to a GET
    pinned to an ETag is `PinFailed` (a Conflict, not retried).
  * An answer cut short is `DamagedBody` (tried again by `run`); header values
    that are not UTF-8 (as botocore decodes them) are a `BadAnswer` naming the
    header, never a crash.
  * Not used for HEAD when HeadObject takes any of the mount's request
    arguments (`s3fast.FastPath.enabled`), nor for GET when GetObject does.
  * Runs on the trio thread only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from . import s3get
from .loop_thread import LoopThread
from .s3fast import FastPath, head_response
from .s3request import CHANGED, BadAnswer, DamagedBody, PinFailed
from .s3sign import LeanSigner

FALLBACK = object()      # send it through botocore's pipeline
NOT_HERE = object()      # this path cannot send it at all


def _utf8(what: str, headers: Mapping[str, str]) -> dict[str, str]:
    """Header values as botocore (aiobotocore) decodes them: UTF-8."""
    out: dict[str, str] = {}
    for name, value in headers.items():
        if not (name.isascii() and value.isascii()):
            try:
                name, value = name.encode("latin-1").decode("utf-8"), value.encode("latin-1").decode("utf-8")
            except UnicodeDecodeError:
                raise BadAnswer(f"{what}: the answer's header {name[:60]!r} is not UTF-8") from None
        out[name] = value
    return out


def get_answer(headers: Mapping[str, str], received: int) -> dict[str, Any]:
    """The fields of a GetObject answer s3client's body checks read, from s3get.py's headers."""
    r: dict[str, Any] = {"ContentLength": int(headers.get("content-length", received))}
    for field, header in (("ETag", "etag"), ("ContentRange", "content-range"),
                          ("ServerSideEncryption", "x-amz-server-side-encryption"),
                          ("SSECustomerAlgorithm", "x-amz-server-side-encryption-customer-algorithm")):
        if header in headers:
            r[field] = headers[header]
    return r


class LeanPath:
    def __init__(self, fast: FastPath, loop: LoopThread, *, verify_tls: bool, max_idle: int,
                 connect_timeout: float, head: bool = True, get: bool = True):
        self.signer = LeanSigner(lambda: fast.learnt, lambda: loop.run(fast.snapshot()))
        self.http = s3get.LeanHTTP(self.signer.sign, verify_tls=verify_tls, max_idle=max_idle,
                                   connect_timeout=connect_timeout, denied=self.signer.invalidate)
        self.head_enabled = head and fast.enabled
        self.get_enabled = get and fast.get_enabled

    def close(self) -> None:
        self.http.close()

    async def head(self, what: str, key: str) -> Any:
        """HeadObject-shaped fields, None when absent, FALLBACK or NOT_HERE (see above)."""
        if not self.head_enabled:
            return NOT_HERE
        try:
            answer = await self.http.head(key)
        except s3get.Truncated as exc:
            raise DamagedBody(f"{what}: {exc}") from None
        if answer is s3get.FALLBACK:
            return NOT_HERE
        status, headers = answer
        if status == 200:
            try:
                return head_response(_utf8(what, headers))
            except ValueError:          # a Content-Length or date that is no number / date
                raise BadAnswer(f"{what}: the answer's headers cannot be read") from None
        if status == 404:
            return None
        return FALLBACK

    async def get(self, what: str, key: str, start: int, end: int, etag: str | None) -> Any:
        """(GetObject-shaped fields, bytearray of bytes [start, end)) or FALLBACK."""
        try:
            answer = await self.http.get(key, start, end, etag)
        except s3get.Truncated as exc:
            raise DamagedBody(f"{what}: {exc}") from None
        except s3get.Changed:
            raise PinFailed(f"{what}: {CHANGED}") from None
        if answer is s3get.FALLBACK:
            return FALLBACK
        data, headers = answer
        return get_answer(headers, len(data)), data
