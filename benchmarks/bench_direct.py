"""Direct S3 baselines (boto3) and the bucket set-up the workloads need.

The baseline client is what an application calling S3 itself would use:
8 connections, 8 MiB parts, 8 requests in flight for bulk transfers and
fan-outs; one request at a time where the workload is inherently one
operation after another (qd1 random reads, creating files one by one, tar).
Payload signing is off and checksums are computed only when S3 requires
them, so the baseline measures transport and server, not hashing in Python.
"""

from __future__ import annotations

import os
import random
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor

import boto3
from botocore.config import Config

MiB = 1 << 20
PART = 8 * MiB
WORKERS = 8

DIR_MODE = 0o040755
FILE_MODE = 0o100644


def make_client(endpoint: str, access_key: str, secret_key: str, connections: int = WORKERS):
    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint, aws_access_key_id=access_key,
        aws_secret_access_key=secret_key, region_name="us-east-1",
        config=Config(
            s3={"addressing_style": "path", "payload_signing_enabled": False},
            max_pool_connections=connections,
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            retries={"mode": "standard", "total_max_attempts": 3},
            connect_timeout=5, read_timeout=60))


def file_meta(mode: int = FILE_MODE, mtime: int = 1_700_000_000) -> dict:
    """x-amz-meta-* headers in s3fs's format (what a mounter would have written)."""
    return {"mode": str(mode), "uid": "0", "gid": "0", "mtime": str(mtime)}


class PartSource:
    """Incompressible bytes for part ``i`` without generating the whole object."""

    def __init__(self):
        self.buf = os.urandom(PART + 64 * 1024)

    def part(self, index: int, size: int = PART) -> bytes:
        shift = (index * 4099) % (64 * 1024)
        return self.buf[shift: shift + size]


class Direct:
    def __init__(self, client, bucket: str):
        self.s3 = client
        self.bucket = bucket
        self.source = PartSource()

    # -- bulk transfers -------------------------------------------------------
    def upload(self, key: str, size: int, workers: int = WORKERS) -> float:
        """Multipart upload of ``size`` bytes (8 MiB parts, ``workers`` in flight)."""
        start = time.perf_counter()
        if size <= PART:
            self.s3.put_object(Bucket=self.bucket, Key=key, Body=self.source.part(0, size))
            return time.perf_counter() - start
        upload_id = self.s3.create_multipart_upload(Bucket=self.bucket, Key=key)["UploadId"]
        count = (size + PART - 1) // PART

        def put(index: int) -> dict:
            length = min(PART, size - index * PART)
            etag = self.s3.upload_part(Bucket=self.bucket, Key=key, UploadId=upload_id,
                                       PartNumber=index + 1,
                                       Body=self.source.part(index, length))["ETag"]
            return {"PartNumber": index + 1, "ETag": etag}

        try:
            with ThreadPoolExecutor(workers) as pool:
                parts = list(pool.map(put, range(count)))
            self.s3.complete_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id,
                                              MultipartUpload={"Parts": parts})
        except BaseException:
            self.s3.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            raise
        return time.perf_counter() - start

    def download(self, keys_sizes: list[tuple[str, int]], workers: int = WORKERS) -> float:
        """Ranged GETs of 8 MiB over all the objects, ``workers`` in flight."""
        ranges = [(key, off, min(off + PART, size) - 1)
                  for key, size in keys_sizes for off in range(0, size, PART)]

        def get(item) -> int:
            key, first, last = item
            body = self.s3.get_object(Bucket=self.bucket, Key=key,
                                      Range=f"bytes={first}-{last}")["Body"]
            n = len(body.read())
            if n != last - first + 1:
                raise OSError(f"{key}: short read {n} of {last - first + 1}")
            return n

        start = time.perf_counter()
        with ThreadPoolExecutor(workers) as pool:
            total = sum(pool.map(get, ranges))
        seconds = time.perf_counter() - start
        expected = sum(size for _, size in keys_sizes)
        if total != expected:
            raise OSError(f"downloaded {total} bytes, expected {expected}")
        return seconds

    def random_reads(self, key: str, size: int, seconds: float, block: int = 4096,
                     seed: int = 1) -> dict:
        """GETs of ``block`` bytes at random aligned offsets, one at a time."""
        rng = random.Random(seed)
        blocks = size // block
        count = 0
        start = time.perf_counter()
        deadline = start + seconds
        while time.perf_counter() < deadline:
            first = rng.randrange(blocks) * block
            body = self.s3.get_object(Bucket=self.bucket, Key=key,
                                      Range=f"bytes={first}-{first + block - 1}")["Body"]
            body.read()
            count += 1
        elapsed = time.perf_counter() - start
        return {"iops": count / elapsed, "ios": count, "seconds": elapsed}

    # -- small objects --------------------------------------------------------
    def put_sequential(self, items: list[tuple[str, bytes]]) -> float:
        start = time.perf_counter()
        for key, body in items:
            self.s3.put_object(Bucket=self.bucket, Key=key, Body=body)
        return time.perf_counter() - start

    def put_parallel(self, items: list[tuple[str, bytes]], meta: dict | None = None,
                     workers: int = 16) -> float:
        def put(item):
            key, body = item
            extra = {"Metadata": meta} if meta else {}
            if key.endswith("/"):
                extra["ContentType"] = "application/x-directory"
            self.s3.put_object(Bucket=self.bucket, Key=key, Body=body, **extra)

        start = time.perf_counter()
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(put, items))
        return time.perf_counter() - start

    def make_dirs(self, *prefixes: str) -> None:
        """s3fs-style directory marker objects for every level of each prefix."""
        keys = set()
        for prefix in prefixes:
            parts = prefix.strip("/").split("/")
            for i in range(1, len(parts) + 1):
                keys.add("/".join(parts[:i]) + "/")
        for key in sorted(keys):
            self.s3.put_object(Bucket=self.bucket, Key=key, Body=b"",
                               ContentType="application/x-directory",
                               Metadata=file_meta(DIR_MODE))

    def list_keys(self, prefix: str) -> list[dict]:
        out = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                      Prefix=prefix):
            out.extend(page.get("Contents", []))
        return out

    def list_dir_with_heads(self, prefix: str, workers: int = WORKERS) -> float:
        """What `ls -l` needs from S3: one level listed, every object's metadata."""
        start = time.perf_counter()
        keys = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix, Delimiter="/"):
            keys.extend(obj["Key"] for obj in page.get("Contents", []))

        def head(key):
            return self.s3.head_object(Bucket=self.bucket, Key=key)["Metadata"]

        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(head, keys))
        return time.perf_counter() - start

    def list_recursive(self, prefix: str) -> tuple[float, int]:
        """What `find`/`du` need: every key and size below a prefix."""
        start = time.perf_counter()
        n = len(self.list_keys(prefix))
        return time.perf_counter() - start, n

    def move_object(self, src: str, dst: str) -> float:
        start = time.perf_counter()
        self.s3.copy_object(Bucket=self.bucket, Key=dst,
                            CopySource={"Bucket": self.bucket, "Key": src},
                            MetadataDirective="COPY")
        self.s3.delete_object(Bucket=self.bucket, Key=src)
        return time.perf_counter() - start

    def move_prefix(self, src: str, dst: str, workers: int = WORKERS) -> float:
        """List, copy every key (``workers`` in flight), then delete the old keys."""
        start = time.perf_counter()
        keys = [obj["Key"] for obj in self.list_keys(src)]

        def copy(key):
            self.s3.copy_object(Bucket=self.bucket, Key=dst + key[len(src):],
                                CopySource={"Bucket": self.bucket, "Key": key},
                                MetadataDirective="COPY")

        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(copy, [k for k in keys if not k.endswith("/")]))
        self.delete_keys(keys)
        return time.perf_counter() - start

    def delete_keys(self, keys: list[str]) -> None:
        for i in range(0, len(keys), 1000):
            batch = [{"Key": k} for k in keys[i:i + 1000]]
            if batch:
                self.s3.delete_objects(Bucket=self.bucket,
                                       Delete={"Objects": batch, "Quiet": True})

    def delete_prefix(self, prefix: str) -> None:
        keys = [obj["Key"] for obj in self.list_keys(prefix)]
        # Deepest first, so directory markers go after their contents.
        keys.sort(key=lambda k: (-k.count("/"), k))
        self.delete_keys(keys)

    def size_of(self, key: str) -> int | None:
        try:
            return self.s3.head_object(Bucket=self.bucket, Key=key)["ContentLength"]
        except self.s3.exceptions.ClientError:
            return None


def tar_files(tar_path) -> list[tuple[str, bytes]]:
    """(path, bytes) of every regular file in a tar archive."""
    out = []
    with tarfile.open(tar_path) as tar:
        for member in tar:
            if member.isfile():
                out.append((member.name, tar.extractfile(member).read()))
    return out
