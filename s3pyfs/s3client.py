"""The narrow S3 API of s3pyfs; with its helpers (s3request, s3lean, s3sign, s3fast)
the only modules importing aiobotocore/botocore.

Responsibility: S3 requests for one bucket.  aiobotocore runs with its aiohttp
backend on an asyncio loop in a dedicated thread (`loop_thread.LoopThread`);
every call is handed over from trio and awaited there.  ARCHITECTURE.md has
the measurement that chose this over aiobotocore's httpx backend on trio.
Invariants:
  * Every request finishes within `request_timeout` seconds (all retries
    included) of holding a request slot, or raises `RemoteTimeout`; botocore's
    standard retry mode retries throttling, 5xx and connection errors up to
    `retries` tries.  Made for a system call (a FUSE request carrying a
    `concurrency.Deadline`), it also ends by that deadline, the wait for a slot
    included: one bound for all the requests, retries and parts of the call.
    Every answer (an S3 error too) moves the mount's `progress`.
  * One request limiter for the whole mount (s3request.Requests, a trio
    CapacityLimiter of `max_connections`, the size of the HTTP connection
    pool): every request runs in `Requests.do` holding a slot, and the request's own deadline
    starts once the slot is held (a system call's deadline counts the wait:
    a call queued behind busy slots while S3 answers nothing ends with
    EIO too; while S3 answers, its deadline moves on).  A slot is
    held only around one request (with its own retries), never while
    waiting for anything else, so a task holding a slot never waits for
    another one.  Fan-out limits (`concurrency.run_all`) stay per operation.
  * `memory` is the mount's `budget.MemoryBudget` (`max_memory`), which the
    read and write paths use for their part buffers; this module only owns it.
  * What botocore does not retry is retried (`Requests.run`, same deadline, up to
    `retries` tries, backoff): a response body cut short, reset or stalled
    while read (outside botocore's retry loop), a body failing its check, and
    BadDigest (an upload damaged on the way).
  * No damaged download is returned: a body must have its Content-Length; a
    body holding a whole object whose ETag is a plain MD5 must have that MD5;
    a GET given the caller's ETag is pinned to it (If-Match, and the answer's
    ETag compared), and an object replaced meanwhile is a RemoteIOError
    saying so.
  * HEADs and ranged GETs (`get_range`) go through s3lean.py on the trio
    thread (signed there, no hop to the asyncio thread) when the URL is
    learnt and no extra request arguments apply, inside the same slot,
    deadline, body checks, retries and counters (s3request.Requests.run) as
    every other request; whatever that path cannot answer is sent again
    through botocore in the same try.
  * Uploads are verified: PutObject and UploadPart carry a checksum of the body
    (`checksum=`, checksums.py: x-amz-checksum-crc32c by default, or -crc32, or
    Content-MD5), so the server refuses a body damaged on the way (BadDigest,
    sent again).  A multipart upload declares the algorithm at
    CreateMultipartUpload and lists each part's checksum at completion
    (`_part_sums`, forgotten at completion or abort).  A store refusing the
    checksum header falls back to Content-MD5 for the rest of the mount (one
    WARNING, `checksum_fallbacks` counter); botocore adds no checksum of its
    own (`request_checksum_calculation="when_required"`).
  * Plain-looking ETags are taken for MD5s until the store proves otherwise
    (an upload it accepted with Content-MD5 answered with another ETag, or
    the same bytes twice for one ETag): then, logged once, no longer compared.
  * Errors leave here only as `errors.FSError` subclasses: NoSuchKey -> NotFound,
    AccessDenied -> AccessDenied, everything else -> RemoteIOError with the
    S3 error code (never the credentials) in the message.
  * Keys are full keys (prefix included); this module knows nothing of paths.
  * An object keeps what it is when s3pyfs rewrites it: HEAD answers carry its
    `KEPT_HEADERS` (`ObjectInfo.headers`), and every write of a whole object
    (PutObject, CreateMultipartUpload, CopyObject with REPLACE) re-sends those
    it is given, since S3 drops system headers a REPLACE or a new upload does
    not send.  A copy given no headers reads them from the source first: S3's
    COPY directive keeps Content-* headers but not storage class or SSE-KMS.
    The mount's options (`request_args`) win over an object's own storage class
    and encryption (`_merged`).
"""

from __future__ import annotations

import builtins
import dataclasses
import datetime
import email.utils
import functools
import hashlib
import io
import logging
import random
import re
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from contextlib import asynccontextmanager
from typing import Any, cast

import trio
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore import UNSIGNED
from botocore import handlers as _botocore_handlers
from botocore.exceptions import BotoCoreError, ClientError
from botocore.utils import parse_timestamp, parse_to_aware_datetime

from . import checksums, metrics, s3lean
from .budget import MemoryBudget
from .concurrency import Deadline, run_all
from .credentials import StaticKeys
from .errors import AccessDenied, Conflict, CredentialsError, FSError, NotFound, RemoteIOError, RemoteTimeout
from .loop_thread import LoopThread
from .s3fast import FALLBACK, FastPath
from .s3request import CHANGED as _CHANGED
from .s3request import DamagedBody, ObjectChanged, Requests
from .s3request import error_code as _error_code

log = logging.getLogger(__name__)

MAX_SINGLE_COPY = 5 * 1024**3        # CopyObject limit; larger objects use UploadPartCopy
COPY_PART_SIZE = 512 * 1024**2
DELETE_BATCH = 1000
HASH_IN_THREAD = 256 * 1024          # bodies at least this large are hashed off the trio thread
FAST_PUT_MAX = 1024 * 1024           # PUTs of bodies up to this size skip botocore's pipeline



# System headers an object keeps when s3pyfs rewrites it (botocore's parameter names, the
# same in HeadObject answers and in PutObject/CopyObject/CreateMultipartUpload requests)
CONTENT_HEADERS = ("ContentType", "ContentEncoding", "CacheControl", "ContentDisposition",
                   "ContentLanguage", "Expires")
KEPT_HEADERS = CONTENT_HEADERS + ("StorageClass", "ServerSideEncryption", "SSEKMSKeyId")
_ENCRYPTION = ("ServerSideEncryption", "SSEKMSKeyId")      # CopyObject does not carry these
_NOT_COPIED = ("StorageClass",) + _ENCRYPTION               # ... nor the storage class


@dataclasses.dataclass
class ObjectInfo:
    key: str
    size: int
    etag: str | None
    last_modified_ns: int
    metadata: dict[str, str] = dataclasses.field(default_factory=dict)
    content_type: str | None = None
    headers: dict[str, str] = dataclasses.field(default_factory=dict)   # KEPT_HEADERS of a HEAD


def kept_headers(r: Mapping[str, Any]) -> dict[str, str]:
    """The KEPT_HEADERS of a HeadObject answer, as strings (Expires as sent: its raw text).
    The SSE-KMS key id only with SSE-KMS, as the store reported it."""
    headers = {name: str(r[name]) for name in CONTENT_HEADERS if r.get(name) and name != "Expires"}
    expires = r.get("ExpiresString") or r.get("Expires")
    if isinstance(expires, datetime.datetime):
        expires = email.utils.format_datetime(expires.astimezone(datetime.UTC), usegmt=True)
    if expires:
        headers["Expires"] = str(expires)
    if r.get("StorageClass"):
        headers["StorageClass"] = str(r["StorageClass"])
    sse = r.get("ServerSideEncryption")
    if sse:
        headers["ServerSideEncryption"] = str(sse)
        if str(sse).startswith("aws:kms") and r.get("SSEKMSKeyId"):
            headers["SSEKMSKeyId"] = str(r["SSEKMSKeyId"])
    return headers


def object_args(headers: Mapping[str, str] | None, content_type: str | None = None,
                only: tuple[str, ...] = KEPT_HEADERS) -> dict[str, str]:
    """botocore arguments re-sending an object's kept headers (`content_type` wins over
    its ContentType).  An Expires botocore cannot parse is left out (it would refuse the
    whole request), as is a key id without SSE-KMS."""
    args = {name: value for name, value in (headers or {}).items() if name in only and value}
    if content_type and "ContentType" in only:
        args["ContentType"] = content_type
    if "Expires" in args:
        try:
            parse_to_aware_datetime(args["Expires"])
        except (ValueError, TypeError, OverflowError):
            log.debug("Expires %r cannot be re-sent; left out", args["Expires"])
            del args["Expires"]
    if not str(args.get("ServerSideEncryption", "")).startswith("aws:kms"):
        args.pop("SSEKMSKeyId", None)
    return args


def _merged(kwargs: dict[str, Any], options: Mapping[str, Any]) -> dict[str, Any]:
    """A call's arguments with the mount's options on top: an option wins over what the
    call carries for its object (storage class), and any encryption option (SSE-S3,
    SSE-KMS, SSE-C) replaces the object's own encryption as a whole: a KMS key id is
    never sent beside SSE-C or beside another encryption than the one it belongs to."""
    merged = dict(kwargs)
    if "SSECustomerAlgorithm" in options or "ServerSideEncryption" in options:
        for name in _ENCRYPTION:
            merged.pop(name, None)
    merged.update(options)
    return merged


@dataclasses.dataclass
class ListPage:
    objects: list[ObjectInfo]   # metadata empty: LIST does not return it
    prefixes: list[str]


@dataclasses.dataclass(frozen=True)
class ClientSettings:
    bucket: str
    endpoint_url: str | None = None
    region: str | None = None
    path_style: bool = False
    profile: str | None = None
    static_keys: StaticKeys | None = None
    retries: int = 3
    connect_timeout: float = 5.0
    read_timeout: float = 20.0
    request_timeout: float = 45.0
    max_connections: int = 32                   # also the number of requests in flight (`_slots`)
    max_memory: int = 256 * 1024 * 1024         # bytes of part buffers, all transfers together
    # added to every request whose operation takes them (SSE, StorageClass, ACL, RequestPayer)
    request_args: Mapping[str, Any] = dataclasses.field(default_factory=dict, repr=False)
    verify_tls: bool = True
    signature_version: str | None = None        # None: SigV4; "s3": SigV2; "unsigned": anonymous
    credential_providers: tuple[str, ...] | None = None   # keep only these of botocore's chain
    checksum: str = "crc32c"                    # of upload bodies: crc32c | crc32 | md5 | none
    lean_get: bool = True                       # ranged GETs through s3lean.py (else all through botocore)
    lean_head: bool = True                      # HEADs through s3lean.py (else through s3fast.py/botocore)


_PLAIN_MD5 = re.compile(r"[0-9a-f]{32}")
PROBE_NAME = ".s3pyfs-probe-"        # reserved key name of the conditional-write probe (prefix + this + hex)


# what a store that does not know a checksum header (or ChecksumAlgorithm) answers
_CHECKSUM_REFUSED = {"InvalidArgument", "InvalidRequest", "NotImplemented", "501", "UnsupportedChecksum"}


def _refuses_checksum(exc: ClientError) -> bool:
    return _error_code(exc) in _CHECKSUM_REFUSED


def _md5_is_etag(r: Mapping[str, Any]) -> bool:
    """True when the answer's ETag is the MD5 of the object's bytes (not multipart, SSE-KMS, SSE-C)."""
    etag = _etag(r.get("ETag"))
    encrypted = r.get("SSECustomerAlgorithm") or str(r.get("ServerSideEncryption", "")).startswith("aws:kms")
    return bool(etag and _PLAIN_MD5.fullmatch(etag.lower()) and not encrypted)


def _whole_object(r: Mapping[str, Any], data: bytes) -> bool:
    """Does this GET answer hold the whole object?"""
    content_range = r.get("ContentRange")
    if not content_range:
        return True
    return content_range == f"bytes 0-{len(data) - 1}/{len(data)}"


Body = bytes | io.BytesIO      # an upload body; a BytesIO is sent from its own buffer, uncopied


def _view(data: Body):
    return data.getbuffer() if isinstance(data, io.BytesIO) else memoryview(data)


async def _md5(data: Body) -> bytes:
    def digest() -> bytes:
        with _view(data) as view:
            return hashlib.md5(view).digest()
    if _body_len(data) < HASH_IN_THREAD:
        return digest()
    return await trio.to_thread.run_sync(digest)


def _body_len(data: Body) -> int:
    with _view(data) as view:
        return view.nbytes


def _rewound(body: Body) -> Body:
    """The body ready to be sent (again: retries send it from the start)."""
    if isinstance(body, io.BytesIO):
        body.seek(0)
    return body


# Reading an object that is not SSE-C encrypted with SSE-C headers is a 400 on AWS: such
# requests are repeated once without the read-side key.
_READ_SIDE_SSE_C = {
    "GetObject": ("SSECustomerAlgorithm", "SSECustomerKey"),
    "HeadObject": ("SSECustomerAlgorithm", "SSECustomerKey"),
    "CopyObject": ("CopySourceSSECustomerAlgorithm", "CopySourceSSECustomerKey"),
    "UploadPartCopy": ("CopySourceSSECustomerAlgorithm", "CopySourceSSECustomerKey"),
}


class _WithRequestArgs:
    """The aiobotocore client, adding `request_args` to each call whose operation takes them."""

    def __init__(self, client, request_args: Mapping[str, Any]):
        self._client = client
        self._args = dict(request_args)
        self._by_operation: dict[str, tuple[dict, dict]] = {}

    def __getattr__(self, name: str):
        method = getattr(self._client, name)
        operation = self._client.meta.method_to_api_mapping.get(name)
        if operation is None:
            return method
        if operation not in self._by_operation:
            members = self._client.meta.service_model.operation_model(operation).input_shape.members
            extra = {k: v for k, v in self._args.items() if k in members}
            drop = _READ_SIDE_SSE_C.get(operation, ())
            self._by_operation[operation] = extra, {k: v for k, v in extra.items() if k not in drop}
        extra, fallback = self._by_operation[operation]
        if not extra:
            return method

        async def call(**kwargs):
            try:
                return await method(**_merged(kwargs, extra))
            except ClientError as exc:
                if fallback == extra or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") != 400:
                    raise
                return await method(**_merged(kwargs, fallback))
        return call


def _ns(dt) -> int:
    return int(dt.timestamp() * 1_000_000_000) if dt is not None else 0


def _etag(value: str | None) -> str | None:
    return value.strip('"') if value else None


def check_200_body(operation_model, response_dict, **kwargs) -> None:
    """botocore's before-parse hook: a 200 answer whose body is an S3 error, or a listing
    cut short in transit, becomes a 500 (retried, then reported).  ListObjectsV2 answers
    are judged by their closing tag, without an XML parse of their own; every other
    operation goes through botocore's own check."""
    if operation_model.name != "ListObjectsV2":
        _botocore_handlers._handle_200_error(operation_model, response_dict, **kwargs)
        return
    body = (response_dict or {}).get("body") or b""
    if response_dict.get("status_code") == 200 and not body.rstrip().endswith(b"</ListBucketResult>"):
        response_dict["status_code"] = 500


class S3Client:
    """Requests against one bucket.  Create with `open_client(settings)`."""

    def __init__(self, client, settings: ClientSettings, loop: LoopThread):
        self._c = client
        self._loop = loop
        self.settings = settings
        self.bucket = settings.bucket
        self.etags_are_md5 = True      # until the store shows otherwise (`_etag_not_md5`)
        self.checksum = settings.checksum   # of upload bodies; "md5" once the store refused the header
        self._part_sums: dict[tuple[str, int], dict[str, str]] = {}   # (upload id, part) -> CRC field
        # does the store enforce If-Match / If-None-Match on PutObject ("put") and on
        # CompleteMultipartUpload ("complete")?  None: unknown (not probed, read-only, denied)
        self.enforced: dict[str, bool | None] = {"put": None, "complete": None}
        self._probing = False
        self._requests = Requests(settings)    # the request limiter and the loop of every request
        self.progress = self._requests.progress  # when S3 last answered: moves the system calls' deadlines
        self.memory = MemoryBudget(settings.max_memory)
        raw = client._client if isinstance(client, _WithRequestArgs) else client
        self._fast = FastPath(raw, settings.bucket, settings.request_args)
        # HEADs and ranged GETs on trio sockets, signed on the trio thread (s3lean.py)
        self._lean: s3lean.LeanPath | None = s3lean.LeanPath(
            self._fast, loop, verify_tls=settings.verify_tls, max_idle=settings.max_connections,
            connect_timeout=settings.connect_timeout, head=settings.lean_head,
            get=settings.lean_get) if settings.lean_get or settings.lean_head else None
        # botocore parses every 200 body once more only to see whether it is an <Error>
        # document; listings get a check of their closing tag instead (listing CPU per
        # 1,000 keys 0.061 -> 0.054 s, ARCHITECTURE.md "Performance")
        raw.meta.events.unregister("before-parse.s3.*", _botocore_handlers._handle_200_error)
        raw.meta.events.register_first("before-parse.s3.*", check_200_body)

    async def _do(self, what: str, op: Callable[[], Coroutine[Any, Any, Any]], sent: int = 0,
                  check: Callable[[Any], Coroutine[Any, Any, None]] | None = None) -> Any:
        """Run `op()` on the asyncio thread within the deadline; errors become FSError.

        `check(result)` (in trio) may raise DamagedBody.  s3request.Requests.do:
        a slot of the mount's request limiter first, then `request_timeout` (cut
        by the system call's deadline), retries of what botocore does not retry,
        one count per request (metrics.py) with `sent` body bytes."""
        return await self._requests.do(what, lambda: self._loop.run(op()), sent, check)

    def deadline(self) -> Deadline:
        """A new bound for one system call (operations.py): `request_timeout` seconds after
        the later of now and the mount's last answer from S3 (concurrency.Deadline)."""
        return Deadline(self.settings.request_timeout, self.progress)

    def _etag_not_md5(self, what: str, etag: str, digest: str) -> None:
        """Some stores (e.g. with encryption or compression) give plain-looking ETags that are
        no MD5: stop comparing them for this mount, once the evidence is consistent."""
        if self.etags_are_md5:
            log.warning("%s: the store's ETag %s is not the MD5 %s of the bytes it holds; "
                        "ETags of this store are not compared with MD5s from now on", what, etag, digest)
        self.etags_are_md5 = False

    async def _check_body(self, what: str, r: Mapping[str, Any], data: bytes, wrong: set[str]) -> None:
        """DamagedBody unless `data` is what the GET answer `r` announced.

        `wrong`: MD5s of earlier tries that did not match the ETag; the same wrong
        bytes twice are not damage in transit but an ETag that is no MD5."""
        expected = int(r.get("ContentLength", len(data)))
        if len(data) != expected:
            raise DamagedBody(f"{what}: short body ({len(data)} of {expected} bytes)")
        if not (self.etags_are_md5 and _md5_is_etag(r) and _whole_object(r, data)):
            return
        etag = _etag(r["ETag"])
        assert etag is not None                     # _md5_is_etag: a plain MD5
        digest, etag = (await _md5(data)).hex(), etag.lower()
        if digest == etag:
            return
        if digest in wrong:
            self._etag_not_md5(what, etag, digest)
            return
        wrong.add(digest)
        raise DamagedBody(f"{what}: body does not match its ETag (MD5 {digest}), damaged in transit")

    async def head(self, key: str) -> ObjectInfo | None:
        """Object info with user metadata, or None when the key does not exist."""
        what = f"HEAD {key}"

        async def op():                             # on the asyncio thread
            r = await self._fast.head(key)         # s3fast.py: botocore's pipeline skipped
            if r is FALLBACK:
                self._fast.learn_from(key)
                r = await self._c.head_object(Bucket=self.bucket, Key=key)
            return r

        async def attempt():
            r = await self._lean.head(what, key) if self._lean is not None else s3lean.NOT_HERE
            if r is s3lean.NOT_HERE:
                return await self._loop.run(op())
            if r is s3lean.FALLBACK:                # an answer the lean path leaves to botocore
                return await self._loop.run(self._c.head_object(Bucket=self.bucket, Key=key))
            return r
        try:
            r = await self._requests.do(what, attempt)
        except NotFound:
            return None
        if r is None:
            return None
        return ObjectInfo(key, int(r.get("ContentLength", 0)), _etag(r.get("ETag")),
                          _ns(r.get("LastModified")), dict(r.get("Metadata") or {}), r.get("ContentType"),
                          kept_headers(r))

    async def _get(self, key: str, etag: str | None = None, lean: tuple[int, int] | None = None,
                   **kwargs) -> tuple[dict, bytes | bytearray]:
        """GET with its body checked (`_check_body`); pinned to `etag` when given.  With
        `lean` (start, end), tried through s3lean.py first (the bytes straight into a
        bytearray), through botocore when that path cannot answer."""
        wrong: set[str] = set()
        if etag:
            kwargs["IfMatch"] = f'"{etag}"'
        what = f"GET {key} {kwargs.get('Range', '')}".rstrip()

        async def op():
            r = await self._c.get_object(Bucket=self.bucket, Key=key, **kwargs)
            async with r["Body"] as body:
                return r, await body.read()

        async def attempt():
            if lean is not None and self._lean is not None:
                result = await self._lean.get(what, key, lean[0], lean[1], etag)
                if result is not s3lean.FALLBACK:
                    return result
            return await self._loop.run(op())

        async def check(result) -> None:
            r, data = result
            if etag and _etag(r.get("ETag")) != etag:     # a store that ignores If-Match
                raise ObjectChanged(f"{what}: {_CHANGED}")
            await self._check_body(what, r, data, wrong)
        r, data = await self._requests.do(what, attempt, check=check)
        metrics.counters.s3_received(len(data))
        return r, data

    async def get_range(self, key: str, start: int, end: int, etag: str | None = None) -> bytes | bytearray:
        """Bytes [start, end) of `key`; fewer only at the end of the object.  A bytearray
        when it came the lean way (s3get.py: received straight into it), else bytes.

        With `etag`, only bytes of that version: Conflict if the object changed."""
        if end <= start:
            return b""
        lean = (start, end) if self._lean is not None and self._lean.get_enabled else None
        return (await self._get(key, etag, lean, Range=f"bytes={start}-{end - 1}"))[1]

    async def get_all(self, key: str, etag: str | None = None) -> bytes:
        return cast(bytes, (await self._get(key, etag))[1])       # botocore's way: bytes

    async def _sums(self, body: Body) -> tuple[str, dict[str, str]]:
        """The mount's checksum algorithm now and the request fields for `body`."""
        algorithm = self.checksum

        def compute() -> dict[str, str]:
            with _view(body) as view:
                return checksums.fields(algorithm, view)
        if algorithm == "none" or _body_len(body) < checksums.IN_THREAD_FROM[algorithm]:
            return algorithm, compute()
        return algorithm, await trio.to_thread.run_sync(compute)

    def _checksum_refused(self, what: str, algorithm: str, code: str) -> None:
        """The store refused the checksum header `algorithm`: Content-MD5 from now on."""
        if self.checksum == algorithm and algorithm != "md5":
            log.warning("%s: the store refused the %s checksum header (%s); uploads send "
                        "Content-MD5 from now on (option checksum=md5 avoids this)", what, algorithm, code)
            self.checksum = "md5"
            metrics.counters.checksum_fallbacks += 1

    async def _verified_upload(self, what: str, body: Body,
                               call: Callable[[dict[str, str]], Coroutine[Any, Any, Any]]) -> dict:
        """`call(sums)` sending `body` with its checksum fields (botocore's names); with
        Content-MD5, a returned ETag that is a plain MD5 must match it.

        Bodies of staging data come as a BytesIO owning its buffer: botocore would wrap
        bytes in a BytesIO whose buffer aiohttp then copies, doubling the memory of
        every part in flight."""
        algorithm, sums = await self._sums(body)
        refused: list[str] = []

        async def op():             # on the asyncio thread
            try:
                return await call(sums)
            except ClientError as exc:
                code = _error_code(exc)
                if algorithm in ("md5", "none") or not _refuses_checksum(exc):
                    raise
                refused.append(code)    # a store that does not know the header: MD5 instead
                with _view(body) as view:
                    md5 = checksums.fields("md5", view)
                return await call(md5)
        r = await self._do(what, op, sent=_body_len(body))
        if refused:
            self._checksum_refused(what, algorithm, refused[0])
            return r
        if "ContentMD5" in sums:
            digest = checksums.md5_hex(sums["ContentMD5"])
            etag = _etag(r["ETag"]) if self.etags_are_md5 and _md5_is_etag(r) else None
            if etag is not None and etag.lower() != digest:
                # the store accepted our Content-MD5, so the bytes arrived whole: its ETags are no MD5s
                self._etag_not_md5(what, etag, digest)
        return r

    @property
    def conditional_writes(self) -> bool | None:
        """True: the store enforces conditional PUT and CompleteMultipartUpload; False: one of
        them is ignored or refused (checked by a HEAD before the commit instead); None: unknown."""
        values = set(self.enforced.values())
        return False if False in values else True if values == {True} else None

    def _conditions(self, op: str, if_match: str | None, if_none_match: bool) -> dict[str, str]:
        """The request arguments of a conditional commit (none where the store ignores them)."""
        if self.enforced[op] is False:
            return {}
        if if_none_match:
            return {"IfNoneMatch": "*"}
        return {"IfMatch": f'"{if_match}"'} if if_match else {}

    async def _check_version(self, what: str, key: str, op: str, if_match: str | None, if_none_match: bool) -> None:
        """Where the store does not (or may not) enforce the condition: a HEAD right before
        the commit.  A change between this HEAD and the commit is not caught (the window)."""
        if self.enforced[op] is True or not (if_match or if_none_match):
            return
        current = await self.head(key)
        etag = current.etag if current is not None else None
        if (if_none_match and current is not None) or (if_match and etag != if_match):
            raise self._conflict(what, etag, current is not None, if_match)

    @staticmethod
    def _conflict(what: str, etag: str | None, exists: bool, if_match: str | None) -> Conflict:
        won = ("the object was deleted" if not exists else
               f"version {etag} won" if etag else "another version won")
        based = f"this data was based on version {if_match}" if if_match else "this file was new here"
        return Conflict(f"{what}: {won}; {based}; not overwritten", current_etag=etag)

    async def _conditional(self, what: str, key: str, if_match: str | None, if_none_match: bool, commit,
                           own_etag: Callable[[], str | None] = lambda: None):
        """`commit()` (a conditional PUT or Complete); a failed condition becomes a Conflict
        naming the version that won (one HEAD to learn it).  When that version is this very
        content (`own_etag()`: an earlier try landed but its answer was lost, and the retry
        found its own write), the commit succeeded."""
        try:
            return await commit()
        except (Conflict, NotFound) as exc:
            if isinstance(exc, NotFound) and not if_match:
                raise                   # (If-Match on an absent key is a 404 on AWS and moto)
            if not (if_match or if_none_match) or self._probing:
                raise
            try:
                current = await self.head(key)
            except FSError:
                current = None
            if current is not None and current.etag and current.etag == own_etag():
                log.info("%s: the object already is this content (an earlier try succeeded)", what)
                return {"ETag": current.etag}
            raise self._conflict(what, current.etag if current is not None else None,
                                 current is not None, if_match) from None

    async def put(self, key: str, body: Body, metadata: dict[str, str], content_type: str | None = None,
                  headers: Mapping[str, str] | None = None, *,
                  if_match: str | None = None, if_none_match: bool = False) -> str | None:
        """PUT a whole object; `headers` (KEPT_HEADERS) are re-sent, `content_type` wins.  With
        `if_match` (an ETag) or `if_none_match` only if S3 still holds that version / no
        object, else `Conflict` and nothing is written."""
        kwargs = object_args(headers, content_type)
        kwargs.update(self._conditions("put", if_match, if_none_match))

        async def call(sums: dict[str, str]):
            if _body_len(body) <= FAST_PUT_MAX:          # small files: s3fast.py
                small = body.getvalue() if isinstance(body, io.BytesIO) else bytes(body)
                r = await self._fast.put(key, small, sums, metadata, kwargs)
                if r is not FALLBACK:
                    return r
            return await self._c.put_object(Bucket=self.bucket, Key=key, Body=_rewound(body),
                                            Metadata=metadata, **sums, **kwargs)
        what = f"PUT {key}"
        await self._check_version(what, key, "put", if_match, if_none_match)
        def own_etag() -> str | None:
            with _view(body) as view:
                return hashlib.md5(view).hexdigest() if self.etags_are_md5 else None
        r = await self._conditional(what, key, if_match, if_none_match,
                                    lambda: self._verified_upload(what, body, call), own_etag)
        return _etag(r.get("ETag"))

    async def create_multipart(self, key: str, metadata: dict[str, str],
                               headers: Mapping[str, str] | None = None, *, checksum: bool = True) -> str:
        """A new multipart upload's id; it declares the checksum algorithm its parts carry
        (S3 refuses part checksums an upload did not declare).  `checksum=False`: parts that
        carry none (UploadPartCopy), so none is declared."""
        kwargs = object_args(headers)
        algorithm = self.checksum
        declared = checksums.MULTIPART_ALGORITHM.get(algorithm) if checksum else None
        refused: list[str] = []

        async def op():             # on the asyncio thread
            if declared is not None:
                try:
                    return await self._c.create_multipart_upload(Bucket=self.bucket, Key=key, Metadata=metadata,
                                                                 ChecksumAlgorithm=declared, **kwargs)
                except ClientError as exc:
                    if not _refuses_checksum(exc):
                        raise
                    refused.append(_error_code(exc))
            return await self._c.create_multipart_upload(Bucket=self.bucket, Key=key, Metadata=metadata, **kwargs)
        what = f"CreateMultipartUpload {key}"
        r = await self._do(what, op)
        if refused:
            self._checksum_refused(what, algorithm, refused[0])
        return r["UploadId"]

    async def upload_part(self, key: str, upload_id: str, number: int, data: Body) -> str:
        sent: dict[str, str] = {}

        def call(sums: dict[str, str]):
            sent.clear()
            sent.update(sums)
            return self._c.upload_part(Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number,
                                       Body=_rewound(data), **sums)
        r = await self._verified_upload(f"UploadPart {key} #{number}", data, call)
        # CompleteMultipartUpload lists the CRC of every part of an upload that declared one
        crc = {name: value for name, value in sent.items() if name != "ContentMD5"}
        if crc:
            self._part_sums[(upload_id, number)] = crc
        else:
            self._part_sums.pop((upload_id, number), None)
        return r["ETag"]

    async def upload_part_copy(self, key: str, upload_id: str, number: int, source_key: str,
                               start: int, end: int) -> str:
        r = await self._do(f"UploadPartCopy {source_key} -> {key} #{number}", lambda: self._c.upload_part_copy(
            Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number,
            CopySource={"Bucket": self.bucket, "Key": source_key}, CopySourceRange=f"bytes={start}-{end - 1}"))
        return r["CopyPartResult"]["ETag"]

    async def complete_multipart(self, key: str, upload_id: str, etags: list[str], *,
                                 if_match: str | None = None, if_none_match: bool = False) -> str | None:
        """Complete; conditional like `put` (on failure the caller aborts the upload)."""
        parts = [{"PartNumber": i, "ETag": etag, **self._part_sums.get((upload_id, i), {})}
                 for i, etag in enumerate(etags, 1)]
        conditions = self._conditions("complete", if_match, if_none_match)
        what = f"CompleteMultipartUpload {key}"
        await self._check_version(what, key, "complete", if_match, if_none_match)
        def own_etag() -> str | None:          # S3's multipart ETag: MD5 of the part MD5s, "-N"
            try:
                digests = [bytes.fromhex(_etag(e) or "") for e in etags]
            except ValueError:
                return None
            if not self.etags_are_md5 or any(len(d) != 16 for d in digests):
                return None
            return f"{hashlib.md5(b''.join(digests)).hexdigest()}-{len(digests)}"
        r = await self._conditional(what, key, if_match, if_none_match, lambda: self._do(
            what, lambda: self._c.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}, **conditions)),
            own_etag)
        self._forget_parts(upload_id)
        return _etag(r.get("ETag"))

    def _forget_parts(self, upload_id: str) -> None:
        for name in [name for name in self._part_sums if name[0] == upload_id]:
            del self._part_sums[name]

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        self._forget_parts(upload_id)
        try:
            await self._do(f"AbortMultipartUpload {key}", lambda: self._c.abort_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id))
        except FSError as exc:
            log.warning("could not abort multipart upload of %s (%s); a lifecycle rule should remove it", key, exc)

    async def copy(self, source_key: str, key: str, size: int, metadata: dict[str, str] | None = None,
                   parallel: int = 8, headers: Mapping[str, str] | None = None) -> str | None:
        """Server-side copy keeping what the object is.

        `metadata` given: it replaces the user metadata (MetadataDirective REPLACE) and
        `headers` (the source's KEPT_HEADERS) are all re-sent.
        `metadata` None: user metadata and Content-* headers are copied by S3, and the
        storage class and SSE-KMS key, which CopyObject does not carry, are sent from
        `headers`, or from a HEAD of the source when `headers` is None."""
        if size > MAX_SINGLE_COPY:
            return await self._copy_multipart(source_key, key, size, metadata, parallel, headers)
        kwargs: dict[str, Any]
        if metadata is not None:
            kwargs = {"Metadata": metadata, "MetadataDirective": "REPLACE", **object_args(headers)}
        else:
            if headers is None:
                info = await self.head(source_key)
                if info is None:
                    raise NotFound(f"COPY {source_key}: not found")
                headers = info.headers
            kwargs = object_args(headers, only=_NOT_COPIED)
        r = await self._do(f"COPY {source_key} -> {key}", lambda: self._c.copy_object(
            Bucket=self.bucket, Key=key, CopySource={"Bucket": self.bucket, "Key": source_key}, **kwargs))
        return _etag(r.get("CopyObjectResult", {}).get("ETag"))

    async def _copy_multipart(self, source_key, key, size, metadata, parallel,
                              headers=None) -> str | None:
        if metadata is None:
            info = await self.head(source_key)
            if info is None:
                raise NotFound(f"COPY {source_key}: not found")
            metadata, headers = info.metadata, info.headers
        upload_id = await self.create_multipart(key, metadata, headers, checksum=False)
        ranges = [(start, min(start + COPY_PART_SIZE, size)) for start in range(0, size, COPY_PART_SIZE)]
        etags: list[str] = [""] * len(ranges)

        async def one(index: int) -> None:
            start, end = ranges[index]
            etags[index] = await self.upload_part_copy(key, upload_id, index + 1, source_key, start, end)
        try:
            await run_all((functools.partial(one, index) for index in range(len(ranges))), parallel)
            return await self.complete_multipart(key, upload_id, etags)
        except BaseException:
            with trio.CancelScope(shield=True):
                await self.abort_multipart(key, upload_id)
            raise

    async def list_page(self, prefix: str, delimiter: str | None = "/", token: str | None = None,
                        max_keys: int = 1000) -> tuple[ListPage, str | None]:
        kwargs = {"ContinuationToken": token} if token else {}
        if delimiter:
            kwargs["Delimiter"] = delimiter
        r = await self._do(f"LIST {prefix}", lambda: self._c.list_objects_v2(
            Bucket=self.bucket, Prefix=prefix, MaxKeys=max_keys, **kwargs))
        objects = [ObjectInfo(o["Key"], int(o.get("Size", 0)), _etag(o.get("ETag")), _ns(o.get("LastModified")))
                   for o in r.get("Contents", [])]
        prefixes = [p["Prefix"] for p in r.get("CommonPrefixes", [])]
        token = r.get("NextContinuationToken") if r.get("IsTruncated") else None
        return ListPage(objects, prefixes), token

    async def list(self, prefix: str, delimiter: str | None = "/") -> AsyncIterator[ListPage]:
        token = None
        while True:
            page, token = await self.list_page(prefix, delimiter, token)
            yield page
            if not token:
                return

    async def delete(self, key: str) -> None:
        await self._do(f"DELETE {key}", lambda: self._c.delete_object(Bucket=self.bucket, Key=key))

    async def delete_many(self, keys: builtins.list[str]) -> None:      # `list` is the method above
        for start in range(0, len(keys), DELETE_BATCH):
            batch = keys[start:start + DELETE_BATCH]
            r = await self._do(f"DeleteObjects ({len(batch)} keys)", lambda: self._c.delete_objects(
                Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True}))
            errors = r.get("Errors") or []
            if errors:
                first = errors[0]
                raise RemoteIOError(f"DeleteObjects: {len(errors)} keys not deleted, first {first.get('Key')}: "
                                    f"{first.get('Code')}")

    async def probe_conditional_writes(self, prefix: str) -> bool | None:
        """Find out whether the store enforces conditional writes (sets `enforced`), using
        only a key of its own, `<prefix>.s3pyfs-probe-<random>`, removed at once.

        PUT If-None-Match: * twice (the second must fail), PUT If-Match: "wrong" (must
        fail), and a one-byte multipart upload completed with If-Match: "wrong" (must
        fail).  A store that accepts them anyway, or refuses the headers, does not
        enforce them; a denied PUT leaves the answer unknown."""
        key = f"{prefix}{PROBE_NAME}{random.getrandbits(64):016x}"
        self.enforced = {"put": True, "complete": True}      # send the headers, learn no winner
        self._probing = True
        answer: dict[str, bool | None] = {"put": None, "complete": None}
        try:
            try:
                await self.put(key, b"", {}, if_none_match=True)
            except AccessDenied:
                return None
            answer["put"] = (await self._probe_fails(lambda: self.put(key, b"", {}, if_none_match=True))
                             and await self._probe_fails(lambda: self.put(key, b"", {}, if_match="wrong")))
            upload_id = await self.create_multipart(key, {})
            completed = False
            try:
                part = await self.upload_part(key, upload_id, 1, b"p")
                answer["complete"] = await self._probe_fails(
                    lambda: self.complete_multipart(key, upload_id, [part], if_match="wrong"))
                completed = answer["complete"] is False
            finally:
                if not completed:
                    with trio.CancelScope(shield=True):
                        await self.abort_multipart(key, upload_id)
        except FSError as exc:
            log.warning("could not find out whether the store enforces conditional writes (%s)", exc)
        finally:
            self.enforced, self._probing = answer, False
            with trio.CancelScope(shield=True):
                try:
                    await self.delete(key)
                except FSError as exc:
                    log.warning("could not remove the probe object %s: %s", key, exc)
        return self.conditional_writes

    @staticmethod
    async def _probe_fails(call) -> bool:
        """Did a conditional request that must fail fail because of its condition?"""
        try:
            await call()
        except Conflict:
            return True
        except (AccessDenied, RemoteIOError) as exc:
            if isinstance(exc, RemoteTimeout):
                raise
            # refused the header (e.g. 501 NotImplemented or 400): not enforced
            log.info("conditional-write probe: %s", exc)
            return False
        return False

    async def check_bucket(self) -> None:
        """A cheap request proving endpoint, credentials and bucket (raises StartupError kinds)."""
        try:
            await self._do(f"LIST bucket {self.bucket}", lambda: self._c.list_objects_v2(Bucket=self.bucket, MaxKeys=1))
        except AccessDenied as exc:
            raise CredentialsError(f"bucket {self.bucket}: {exc}") from None


def _parse_timestamp(value):
    """LastModified of listings is ISO 8601, which the stdlib parses ~50x faster than
    botocore's dateutil-based default (that parsing was a tenth of the mount's CPU while
    re-listing a growing directory); anything else goes to botocore's parser."""
    if isinstance(value, str) and "T" in value:
        try:
            return datetime.datetime.fromisoformat(value)
        except ValueError:
            pass
    return parse_timestamp(value)


@asynccontextmanager
async def open_client(settings: ClientSettings) -> AsyncIterator[S3Client]:
    session = get_session()
    session.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=_parse_timestamp)
    if settings.profile:
        session.set_config_variable("profile", settings.profile)
    if settings.credential_providers is not None:
        resolver = session.get_component("credential_provider")
        for method in [p.METHOD for p in resolver.providers if p.METHOD not in settings.credential_providers]:
            resolver.remove(method)
    signature = {"unsigned": UNSIGNED, None: None}.get(settings.signature_version, settings.signature_version)
    config = AioConfig(
        signature_version=signature,
        region_name=settings.region or "us-east-1",
        # no SHA-256 of every body over plain http (botocore signs payloads there by default);
        # https requests are unsigned-payload anyway and TLS protects them
        s3={"addressing_style": "path" if settings.path_style else "auto", "payload_signing_enabled": False},
        retries={"mode": "standard", "total_max_attempts": settings.retries},
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
        max_pool_connections=settings.max_connections,
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    keys = settings.static_keys
    kwargs: dict[str, Any] = {} if settings.verify_tls else {"verify": False}
    if keys is not None and signature is not UNSIGNED:
        kwargs.update(aws_access_key_id=keys.access_key, aws_secret_access_key=keys.secret_key,
                      aws_session_token=keys.session_token)
    loop = LoopThread()
    try:
        try:
            client_cm = session.create_client("s3", endpoint_url=settings.endpoint_url, config=config, **kwargs)
            client = await loop.run(client_cm.__aenter__())
        except BotoCoreError as exc:
            raise CredentialsError(f"cannot set up the S3 client: {type(exc).__name__}") from None
        try:
            wrapped = _WithRequestArgs(client, settings.request_args) if settings.request_args else client
            s3 = S3Client(wrapped, settings, loop)
            try:
                yield s3
            finally:
                if s3._lean is not None:
                    s3._lean.close()
        finally:
            with trio.CancelScope(shield=True):
                await loop.run(client_cm.__aexit__(None, None, None))
    finally:
        loop.close()
