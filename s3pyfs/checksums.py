"""Checksums of upload bodies (`checksum=` option): which one, its value, its request field.

Responsibility: turn a body into the request field that lets the server refuse
it when it arrived damaged: `x-amz-checksum-crc32c` (default), `x-amz-checksum-crc32`
or `Content-MD5`, or nothing (`none`).  s3client.py decides when and falls back.
Invariants:
  * Values are what S3 expects: base64 of the big-endian 32-bit CRC, or of
    the 16-byte MD5 digest.
  * Fields are named as botocore's PutObject/UploadPart parameters
    (`FIELDS`); s3fast.py maps the same names to HTTP headers.
  * Pure computation, no I/O; large bodies are hashed by the caller off the
    trio thread (`cost_per_byte` says how much a hash costs, roughly).
  * CRC32C comes from the `crc32c` package (hardware instructions where the
    CPU has them, ~0.1 s/GiB); MD5 costs ~1.7 s/GiB on the machines measured.
"""

from __future__ import annotations

import base64
import hashlib
import zlib

import crc32c as _crc32c

ALGORITHMS = ("crc32c", "crc32", "md5", "none")
FIELDS = {"crc32c": "ChecksumCRC32C", "crc32": "ChecksumCRC32", "md5": "ContentMD5"}
# the ChecksumAlgorithm value of CreateMultipartUpload (S3 wants it declared up front)
MULTIPART_ALGORITHM = {"crc32c": "CRC32C", "crc32": "CRC32"}
# bodies at least this long are hashed off the trio thread (MD5 is ~20x slower than CRC32C)
IN_THREAD_FROM = {"crc32c": 16 * 1024 * 1024, "crc32": 4 * 1024 * 1024, "md5": 256 * 1024}


def value(algorithm: str, data) -> str:
    """The field's value for `data` (bytes-like)."""
    if algorithm == "crc32c":
        raw = _crc32c.crc32c(data).to_bytes(4, "big")
    elif algorithm == "crc32":
        raw = zlib.crc32(data).to_bytes(4, "big")
    elif algorithm == "md5":
        raw = hashlib.md5(data).digest()
    else:
        raise ValueError(f"no checksum value for {algorithm!r}")
    return base64.b64encode(raw).decode()


def fields(algorithm: str, data) -> dict[str, str]:
    """botocore arguments carrying the checksum of `data` ({} for `none`)."""
    if algorithm == "none":
        return {}
    return {FIELDS[algorithm]: value(algorithm, data)}


def md5_hex(field_value: str) -> str:
    """The hex MD5 of a Content-MD5 value (to compare with a plain ETag)."""
    return base64.b64decode(field_value).hex()
