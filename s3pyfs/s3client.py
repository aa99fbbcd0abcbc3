"""The narrow S3 API of s3pyfs; the only module that imports aiobotocore/botocore.

Responsibility: S3 requests for one bucket, run natively on trio through
aiobotocore's httpx session (see ARCHITECTURE.md for the measurement that
chose it over an asyncio thread).
Invariants:
  * Every public coroutine finishes within `request_timeout` seconds (all
    retries included) or raises `RemoteTimeout`; botocore's standard retry
    mode retries throttling, 5xx and connection errors `retries` times.
  * Errors leave here only as `errors.FSError` subclasses: NoSuchKey -> NotFound,
    AccessDenied -> AccessDenied, everything else -> RemoteIOError with the
    S3 error code (never the credentials) in the message.
  * Keys are full keys (prefix included); this module knows nothing of paths.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import logging
from contextlib import asynccontextmanager
from typing import AsyncIterator

import trio
from aiobotocore.config import AioConfig
from aiobotocore.httpxsession import HttpxSession
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, PartialCredentialsError

from .concurrency import run_all
from .credentials import StaticKeys
from .errors import (AccessDenied, CredentialsError, FSError, NameTooLong, NotFound, RemoteIOError,
                     RemoteTimeout)

log = logging.getLogger(__name__)

MAX_SINGLE_COPY = 5 * 1024**3        # CopyObject limit; larger objects use UploadPartCopy
COPY_PART_SIZE = 512 * 1024**2
DELETE_BATCH = 1000

_NOT_FOUND = {"NoSuchKey", "404", "NotFound"}
_DENIED = {"AccessDenied", "403", "Forbidden", "AllAccessDisabled"}
_BAD_CREDS = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
              "TokenRefreshRequired", "InvalidClientTokenId"}


@dataclasses.dataclass
class ObjectInfo:
    key: str
    size: int
    etag: str | None
    last_modified_ns: int
    metadata: dict[str, str] = dataclasses.field(default_factory=dict)
    content_type: str | None = None


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
    read_timeout: float = 30.0
    request_timeout: float = 120.0
    max_connections: int = 32


def _error_code(exc: ClientError) -> str:
    err = exc.response.get("Error", {})
    return str(err.get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))


def _translate(exc: BaseException, what: str) -> FSError:
    if isinstance(exc, ClientError):
        code = _error_code(exc)
        if code in _NOT_FOUND:
            return NotFound(f"{what}: not found")
        if code in _DENIED:
            return AccessDenied(f"{what}: access denied")
        if code == "KeyTooLongError":
            return NameTooLong(f"{what}: the store refuses keys this long")
        if code in _BAD_CREDS:
            return AccessDenied(f"{what}: credentials rejected ({code})")
        request_id = exc.response.get("ResponseMetadata", {}).get("RequestId", "")
        return RemoteIOError(f"{what}: S3 error {code} {request_id}".rstrip())
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return AccessDenied(f"{what}: no usable credentials")
    return RemoteIOError(f"{what}: {type(exc).__name__}: {exc}")


class _Payload(io.BytesIO):
    """Request body iterated in 1 MiB chunks.

    aiobotocore's httpx session streams a BytesIO body by iterating it, and a
    plain BytesIO iterates *lines*: binary data then goes out in ~256-byte
    pieces with an event-loop round trip each (measured: 10 MiB PUT 3.0 s
    instead of 0.09 s).  Seekable, so botocore can rewind it for retries.
    """

    def __iter__(self):
        while True:
            chunk = self.read(1024 * 1024)
            if not chunk:
                return
            yield chunk


def _ns(dt) -> int:
    return int(dt.timestamp() * 1_000_000_000) if dt is not None else 0


def _etag(value: str | None) -> str | None:
    return value.strip('"') if value else None


class S3Client:
    """Requests against one bucket.  Create with `open_client(settings)`."""

    def __init__(self, client, settings: ClientSettings):
        self._c = client
        self.settings = settings
        self.bucket = settings.bucket

    @asynccontextmanager
    async def _call(self, what: str):
        try:
            with trio.fail_after(self.settings.request_timeout):
                yield
        except trio.TooSlowError:
            raise RemoteTimeout(f"{what}: no answer within {self.settings.request_timeout:g} s") from None
        except (ClientError, BotoCoreError) as exc:
            raise _translate(exc, what) from None
        except OSError as exc:
            raise RemoteIOError(f"{what}: {exc}") from None

    async def head(self, key: str) -> ObjectInfo | None:
        """Object info with user metadata, or None when the key does not exist."""
        try:
            async with self._call(f"HEAD {key}"):
                r = await self._c.head_object(Bucket=self.bucket, Key=key)
        except NotFound:
            return None
        return ObjectInfo(key, int(r.get("ContentLength", 0)), _etag(r.get("ETag")),
                          _ns(r.get("LastModified")), dict(r.get("Metadata") or {}), r.get("ContentType"))

    async def get_range(self, key: str, start: int, end: int, etag: str | None = None) -> bytes:
        """Bytes [start, end) of `key`; fewer only at the end of the object."""
        if end <= start:
            return b""
        kwargs = {"IfMatch": f'"{etag}"'} if etag else {}
        async with self._call(f"GET {key} [{start}, {end})"):
            r = await self._c.get_object(Bucket=self.bucket, Key=key, Range=f"bytes={start}-{end - 1}", **kwargs)
            async with r["Body"] as body:
                data = await body.read()
        expected = int(r.get("ContentLength", len(data)))
        if len(data) != expected:
            raise RemoteIOError(f"GET {key}: short body ({len(data)} of {expected} bytes)")
        return data

    async def get_all(self, key: str) -> bytes:
        async with self._call(f"GET {key}"):
            r = await self._c.get_object(Bucket=self.bucket, Key=key)
            async with r["Body"] as body:
                return await body.read()

    async def put(self, key: str, body: bytes, metadata: dict[str, str], content_type: str | None = None) -> str | None:
        kwargs = {"ContentType": content_type} if content_type else {}
        async with self._call(f"PUT {key}"):
            r = await self._c.put_object(Bucket=self.bucket, Key=key, Body=_Payload(body), Metadata=metadata,
                                         **kwargs)
        return _etag(r.get("ETag"))

    async def create_multipart(self, key: str, metadata: dict[str, str], content_type: str | None = None) -> str:
        kwargs = {"ContentType": content_type} if content_type else {}
        async with self._call(f"CreateMultipartUpload {key}"):
            r = await self._c.create_multipart_upload(Bucket=self.bucket, Key=key, Metadata=metadata, **kwargs)
        return r["UploadId"]

    async def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> str:
        async with self._call(f"UploadPart {key} #{number}"):
            r = await self._c.upload_part(Bucket=self.bucket, Key=key, UploadId=upload_id,
                                          PartNumber=number, Body=_Payload(data))
        return r["ETag"]

    async def upload_part_copy(self, key: str, upload_id: str, number: int, source_key: str,
                               start: int, end: int) -> str:
        async with self._call(f"UploadPartCopy {source_key} -> {key} #{number}"):
            r = await self._c.upload_part_copy(Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number,
                                               CopySource={"Bucket": self.bucket, "Key": source_key},
                                               CopySourceRange=f"bytes={start}-{end - 1}")
        return r["CopyPartResult"]["ETag"]

    async def complete_multipart(self, key: str, upload_id: str, etags: list[str]) -> str | None:
        parts = [{"PartNumber": i, "ETag": etag} for i, etag in enumerate(etags, 1)]
        async with self._call(f"CompleteMultipartUpload {key}"):
            r = await self._c.complete_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id,
                                                        MultipartUpload={"Parts": parts})
        return _etag(r.get("ETag"))

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        try:
            async with self._call(f"AbortMultipartUpload {key}"):
                await self._c.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except FSError as exc:
            log.warning("could not abort multipart upload of %s (%s); a lifecycle rule should remove it", key, exc)

    async def copy(self, source_key: str, key: str, size: int, metadata: dict[str, str] | None = None,
                   content_type: str | None = None, parallel: int = 8) -> str | None:
        """Server-side copy; `metadata` given replaces the headers, else they are copied."""
        if size > MAX_SINGLE_COPY:
            return await self._copy_multipart(source_key, key, size, metadata, content_type, parallel)
        kwargs = {}
        if metadata is not None:
            kwargs = {"Metadata": metadata, "MetadataDirective": "REPLACE"}
            if content_type:
                kwargs["ContentType"] = content_type
        async with self._call(f"COPY {source_key} -> {key}"):
            r = await self._c.copy_object(Bucket=self.bucket, Key=key,
                                          CopySource={"Bucket": self.bucket, "Key": source_key}, **kwargs)
        return _etag(r.get("CopyObjectResult", {}).get("ETag"))

    async def _copy_multipart(self, source_key, key, size, metadata, content_type, parallel) -> str | None:
        if metadata is None:
            info = await self.head(source_key)
            if info is None:
                raise NotFound(f"COPY {source_key}: not found")
            metadata, content_type = info.metadata, info.content_type
        upload_id = await self.create_multipart(key, metadata, content_type)
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
        async with self._call(f"LIST {prefix}"):
            r = await self._c.list_objects_v2(Bucket=self.bucket, Prefix=prefix, MaxKeys=max_keys, **kwargs)
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
        async with self._call(f"DELETE {key}"):
            await self._c.delete_object(Bucket=self.bucket, Key=key)

    async def delete_many(self, keys: list[str]) -> None:
        for start in range(0, len(keys), DELETE_BATCH):
            batch = keys[start:start + DELETE_BATCH]
            async with self._call(f"DeleteObjects ({len(batch)} keys)"):
                r = await self._c.delete_objects(Bucket=self.bucket,
                                                 Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True})
            errors = r.get("Errors") or []
            if errors:
                first = errors[0]
                raise RemoteIOError(f"DeleteObjects: {len(errors)} keys not deleted, first {first.get('Key')}: "
                                    f"{first.get('Code')}")

    async def check_bucket(self) -> None:
        """A cheap request proving endpoint, credentials and bucket (raises StartupError kinds)."""
        try:
            async with self._call(f"LIST bucket {self.bucket}"):
                await self._c.list_objects_v2(Bucket=self.bucket, MaxKeys=1)
        except AccessDenied as exc:
            raise CredentialsError(f"bucket {self.bucket}: {exc}") from None


@asynccontextmanager
async def open_client(settings: ClientSettings) -> AsyncIterator[S3Client]:
    session = get_session()
    if settings.profile:
        session.set_config_variable("profile", settings.profile)
    config = AioConfig(
        http_session_cls=HttpxSession,
        region_name=settings.region or "us-east-1",
        s3={"addressing_style": "path" if settings.path_style else "auto"},
        retries={"mode": "standard", "total_max_attempts": settings.retries},
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
        max_pool_connections=settings.max_connections,
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    keys = settings.static_keys
    kwargs = {}
    if keys is not None:
        kwargs = {"aws_access_key_id": keys.access_key, "aws_secret_access_key": keys.secret_key,
                  "aws_session_token": keys.session_token}
    try:
        client_cm = session.create_client("s3", endpoint_url=settings.endpoint_url, config=config, **kwargs)
        client = await client_cm.__aenter__()
    except BotoCoreError as exc:
        raise CredentialsError(f"cannot set up the S3 client: {type(exc).__name__}") from None
    try:
        yield S3Client(client, settings)
    finally:
        with trio.CancelScope(shield=True):
            await client_cm.__aexit__(None, None, None)
