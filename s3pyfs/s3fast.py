"""HEAD and small PUTs without botocore's request pipeline, for s3client only.

Responsibility: HEAD is the request of every metadata path (`ls -l`, find, du,
every lookup), and botocore's pipeline (event hooks, serialising, endpoint
rules, parsing) costs about 2 ms of CPU per request on the machines measured,
three times the cost of signing and sending.  `FastPath` sends a HEAD, or the
PUT of a small file, signed by the aiobotocore client's own request signer
over the client's own HTTP session (same credentials and their refresh, TLS
settings, connection pool and timeouts) and parses the answer the way
botocore does.
Invariants:
  * Only the plain outcomes are answered here: 200 (the headers, in the shape
    of botocore's HeadObject/PutObject response), for HEAD 404 (absent), and for a
    conditional PUT 412 (raised as botocore's ClientError PreconditionFailed).  Anything else (a
    redirect, 400/403, 5xx, a connection error, a URL not learnt yet) is
    `FALLBACK`: the caller sends the same request through botocore, which
    retries, follows redirects and raises its errors.
  * The URL and the signing context are learnt from botocore: a hook on
    botocore's own HEAD records them, and the fast path is used only when that
    URL is the endpoint part followed by the key quoted as botocore quotes it.
  * Not used when the requests carry extra arguments (SSE, storage class, ACL,
    RequestPayer): botocore builds those headers.  A PUT sends the body's
    checksum field it is given (x-amz-checksum-crc32c/-crc32 or Content-MD5,
    checksums.py) like botocore's, and of an
    object's own headers only the plain HTTP ones (Content-Type, -Encoding,
    -Disposition, -Language, Cache-Control, Expires); one with a storage class
    or encryption of its own goes through botocore.
  * A HEAD answer has every field s3client reads from botocore's: the kept
    system headers (Content-*, Cache-Control, Expires as `ExpiresString`,
    storage class, SSE and KMS key id) besides length, ETag, date and metadata,
    and the If-Match / If-None-Match header of a conditional commit when given.
  * For s3lean.py's HEADs and GETs on the trio thread, `snapshot()` hands out
    the auth instance the client's signer builds for the learnt signing
    context (its frozen credentials, refreshed by the signer as botocore
    does) and how long it may be used (s3sign.py); s3lean.py does not sign
    GETs when GetObject would carry extra arguments (SSE-C).
  * Runs on the asyncio thread of `loop_thread.LoopThread`, like the client.
"""

from __future__ import annotations

import dataclasses
import datetime
import email.utils
import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlsplit

import botocore.auth
from botocore import UNSIGNED
from botocore.awsrequest import AWSRequest
from botocore.exceptions import ClientError
from botocore.utils import parse_timestamp

log = logging.getLogger(__name__)

FALLBACK = object()        # "send it through botocore"
_META = "x-amz-meta-"
# HeadObject answer fields (botocore's names) <- response headers, besides the ones parsed below
_HEAD_FIELDS = {"ContentType": "content-type", "ContentEncoding": "content-encoding",
                "CacheControl": "cache-control", "ContentDisposition": "content-disposition",
                "ContentLanguage": "content-language", "ExpiresString": "expires",
                "StorageClass": "x-amz-storage-class", "ServerSideEncryption": "x-amz-server-side-encryption",
                "SSEKMSKeyId": "x-amz-server-side-encryption-aws-kms-key-id"}
# PutObject arguments this path can send as they are (botocore's names -> HTTP headers)
_PUT_HEADERS = {"ContentType": "Content-Type", "ContentEncoding": "Content-Encoding",
                "CacheControl": "Cache-Control", "ContentDisposition": "Content-Disposition",
                "ContentLanguage": "Content-Language", "Expires": "Expires",
                "IfMatch": "If-Match", "IfNoneMatch": "If-None-Match"}     # conditional commits
# checksum fields of a body (checksums.FIELDS) -> HTTP headers
_SUM_HEADERS = {"ContentMD5": "Content-MD5", "ChecksumCRC32C": "x-amz-checksum-crc32c",
                "ChecksumCRC32": "x-amz-checksum-crc32"}


def key_path(key: str) -> str:
    """The key as botocore puts it in a URL path (its `percent_encode(key, safe='/~')`)."""
    return quote(key.encode("utf-8"), safe="/~")


def _timestamp(value: str) -> datetime.datetime:
    try:
        return email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return parse_timestamp(value)


def head_response(headers: Mapping[str, str]) -> dict[str, Any]:
    """The fields of botocore's HeadObject response that s3client reads."""
    r: dict[str, Any] = {"ContentLength": int(headers.get("content-length", 0)),
                         "Metadata": {name[len(_META):]: value for name, value in headers.items()
                                      if name.lower().startswith(_META)}}
    if "etag" in headers:
        r["ETag"] = headers["etag"]
    if "last-modified" in headers:
        r["LastModified"] = _timestamp(headers["last-modified"])
    for field, header in _HEAD_FIELDS.items():
        if header in headers:
            r[field] = headers[header]
    return r


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """What s3sign.py signs with on the trio thread."""
    auth: Any                    # botocore auth instance holding frozen credentials; None: unsigned
    base: str                    # URL up to the key
    signing: dict                # the learnt signing context (request.context["signing"])
    config: Any                  # the client's config (S3SigV4Auth reads payload_signing_enabled)
    fresh_for: float             # seconds until the credentials enter botocore's refresh window


def _fresh_for(credentials, now: datetime.datetime) -> float:
    """Seconds until botocore would refresh `credentials` (inf when they never expire)."""
    expiry = getattr(credentials, "_expiry_time", None)
    if not isinstance(expiry, datetime.datetime):
        return float("inf")
    window = getattr(credentials, "_advisory_refresh_timeout", 15 * 60)
    return (expiry - now).total_seconds() - float(window)


def _takes_any(client, operation: str, request_args: Mapping[str, Any]) -> bool:
    members = client.meta.service_model.operation_model(operation).input_shape.members
    return any(name in members for name in request_args)


class FastPath:
    def __init__(self, client, bucket: str, request_args: Mapping[str, Any]):
        self._client = client
        self._bucket = bucket
        self.enabled = not _takes_any(client, "HeadObject", request_args)
        self.put_enabled = self.enabled and not _takes_any(client, "PutObject", request_args)
        self.get_enabled = self.enabled and not _takes_any(client, "GetObject", request_args)
        self._base: str | None = None            # URL up to the key, learnt from botocore
        self._signing: dict | None = None
        self._version: Any = None                # signature version botocore chose for HeadObject
        self._names: tuple[str, str] = ("s3", "us-east-1")   # signing name, region of the client
        self._learning: str | None = None        # key of the botocore HEAD being watched
        if self.enabled:
            client.meta.events.register("before-sign.s3.HeadObject", self._watch)

    def _watch(self, request, signature_version=None, signing_name="s3", region_name="us-east-1",
               **_kwargs) -> None:
        """botocore's hook: learn URL and signing context from a HEAD of `_learning`."""
        key, self._learning = self._learning, None
        if key is None or self._base is not None:
            return
        url, path = request.url, key_path(key)
        base = url[:-len(path)] if url.endswith("/" + path) and "?" not in url else ""
        parts = urlsplit(base)
        # the endpoint part only: path style (/bucket/) or virtual host (bucket.host/)
        if not (parts.path == f"/{quote(self._bucket)}/" or
                (parts.path == "/" and parts.netloc.startswith(self._bucket + "."))):
            log.debug("HEAD URL %s not understood; HEAD stays on botocore's path", url)
            return
        self._signing = dict(request.context.get("signing") or {})
        self._version = signature_version
        self._names = (signing_name, region_name)
        self._base = base
        self._client.meta.events.unregister("before-sign.s3.HeadObject", self._watch)

    def learn_from(self, key: str) -> None:
        """The next botocore HEAD (of `key`) teaches the URL."""
        if self.enabled and self._base is None:
            self._learning = key

    async def _send(self, operation: str, method: str, key: str, headers: dict[str, str],
                    body: bytes = b""):
        """The response, or None after an error (logged; botocore's path will report it)."""
        assert self._base is not None       # callers check that the URL is known
        request = AWSRequest(method=method, url=self._base + key_path(key), headers=headers, data=body)
        request.context.update(signing=dict(self._signing or {}), client_config=self._client.meta.config)
        try:
            await self._client._request_signer.sign(operation, request)
            return await self._client._endpoint.http_session.send(request.prepare())
        except Exception as exc:        # noqa: BLE001
            log.debug("fast %s %s: %s: %s; sending it through botocore", method, key, type(exc).__name__, exc)
            return None

    @property
    def learnt(self) -> bool:
        return self._base is not None

    async def snapshot(self) -> Snapshot | None:
        """The client's own auth instance for the learnt signing context, built now (the
        signer refreshes expiring credentials first), or None when the URL is not learnt
        or the signer is of a kind s3sign.py does not handle (tokens, identity caches).
        Raises what the credentials' refresh raises."""
        if self._base is None:
            return None
        signing = dict(self._signing or {})
        auth = None
        if self._version is not UNSIGNED:
            cls = botocore.auth.AUTH_TYPE_MAPS.get(self._version)
            if (cls is None or getattr(cls, "REQUIRES_TOKEN", False) or getattr(cls, "REQUIRES_IDENTITY_CACHE", False)
                    or "request_credentials" in signing or signing.get("identity_cache") is not None):
                log.debug("signer %s not handled on the trio thread", self._version)
                return None
            signer = self._client._request_signer
            name, region = self._names
            auth = await signer.get_auth_instance(signing_name=signing.get("signing_name") or name,
                                                  region_name=signing.get("region") or region,
                                                  signature_version=self._version)
            fresh_for = _fresh_for(getattr(signer, "_credentials", None), datetime.datetime.now(datetime.UTC))
        else:
            fresh_for = float("inf")
        return Snapshot(auth, self._base, signing, self._client.meta.config, fresh_for)

    async def head(self, key: str) -> Any:
        """botocore-shaped HeadObject response, None when absent, or FALLBACK."""
        if self._base is None:
            return FALLBACK
        response = await self._send("HeadObject", "HEAD", key, {})
        if response is not None and response.status_code == 200:
            return head_response(response.headers)
        if response is not None and response.status_code == 404:
            return None
        return FALLBACK

    async def put(self, key: str, body: bytes, sums: Mapping[str, str], metadata: Mapping[str, str],
                  args: Mapping[str, str] | None = None) -> Any:
        """botocore-shaped PutObject response ({"ETag": ...}) or FALLBACK.  Small bodies
        only (a file below the multipart size); metadata must be ASCII, as botocore's is.
        `sums`: the body's checksum field (botocore's name -> value, checksums.fields);
        `args`: PutObject arguments of the object itself (botocore's names, strings)."""
        args = args or {}
        if (self._base is None or not self.put_enabled or any(name not in _PUT_HEADERS for name in args)
                or any(name not in _SUM_HEADERS for name in sums)):
            return FALLBACK
        headers = {_SUM_HEADERS[name]: value for name, value in sums.items()}
        for name, value in args.items():
            headers[_PUT_HEADERS[name]] = value
        for name, value in metadata.items():
            headers[_META + name] = value
        if not all(name.isascii() and value.isascii() for name, value in headers.items()):
            return FALLBACK
        response = await self._send("PutObject", "PUT", key, headers, body)
        if response is not None and response.status_code == 200 and "etag" in response.headers:
            return {"ETag": response.headers["etag"]}
        if response is not None and response.status_code == 412 and ("IfMatch" in args or "IfNoneMatch" in args):
            # the condition failed: final, sending it again through botocore would only repeat it
            raise ClientError({"Error": {"Code": "PreconditionFailed", "Message": "precondition failed"},
                               "ResponseMetadata": {"HTTPStatusCode": 412,
                                                    "RequestId": response.headers.get("x-amz-request-id", "")}},
                              "PutObject")
        return FALLBACK
