"""Extra arguments of S3 requests from the mount options: encryption, storage class, ACL, payer.

Responsibility: `request_args(opts)` -> the one dict `ClientSettings.request_args`
that s3client adds to every request whose operation takes the argument
(PutObject, CreateMultipartUpload, CopyObject; GetObject/HeadObject/UploadPart
for SSE-C and RequestPayer).  Names are botocore's parameter names.
Merging with an object's own headers: a rewrite of an object (metadata copy,
upload, rename) re-sends the storage class and SSE-KMS key id its HEAD showed
(s3client.KEPT_HEADERS).  These arguments win over them (s3client._merged):
`storage_class=` replaces the object's storage class, and any `use_sse`
(SSE-S3, SSE-KMS, SSE-C) replaces the object's encryption as a whole, so a
KMS key id is never sent beside SSE-C or beside SSE-S3.  Without such an
option the object keeps its own storage class and KMS key.
Invariant: SSE-C key files are checked like passwd files (mode 600) and read
before forking; the key never appears in a message (ClientSettings hides the dict
from repr).
"""

from __future__ import annotations

import os
from typing import Any

from .credentials import read_sse_c_key
from .options import MountOptions


def request_args(opts: MountOptions, environ: dict[str, str] | None = None) -> dict[str, Any]:
    env = os.environ if environ is None else environ
    args: dict[str, Any] = {}
    if opts.sse is not None:
        kind, detail = opts.sse
        if kind == "s3":
            args["ServerSideEncryption"] = "AES256"
        elif kind == "kms":
            args["ServerSideEncryption"] = "aws:kms"
            key_id = detail or env.get("AWSSSEKMSID")
            if key_id:
                args["SSEKMSKeyId"] = key_id
        else:
            key = read_sse_c_key(detail or None, environ)      # None: it reads os.environ
            args.update(SSECustomerAlgorithm="AES256", SSECustomerKey=key,
                        CopySourceSSECustomerAlgorithm="AES256", CopySourceSSECustomerKey=key)
    if opts.storage_class:
        args["StorageClass"] = opts.storage_class
    elif opts.use_rrs:
        args["StorageClass"] = "REDUCED_REDUNDANCY"
    if opts.default_acl:
        args["ACL"] = opts.default_acl
    if opts.requester_pays:
        args["RequestPayer"] = "requester"
    return args
