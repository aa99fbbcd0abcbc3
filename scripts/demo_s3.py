"""Plain-S3 side of the demo (run with .venv/bin/python by scripts/demo.sh).

    demo_s3.py wait SECONDS [PID]   wait until S3 accepts our credentials
    demo_s3.py make-bucket BUCKET   create BUCKET unless it exists
    demo_s3.py show BUCKET KEY...   list BUCKET, then HEAD each KEY

Endpoint and credentials come from DEMO_ENDPOINT, DEMO_ACCESS_KEY and
DEMO_SECRET_KEY.
"""

import os
import sys
import time

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError


def client(**config):
    options = dict(s3={"addressing_style": "path"}, connect_timeout=2, read_timeout=20,
                   retries={"max_attempts": 2})
    options.update(config)
    return boto3.session.Session().client(
        "s3",
        endpoint_url=os.environ["DEMO_ENDPOINT"],
        aws_access_key_id=os.environ["DEMO_ACCESS_KEY"],
        aws_secret_access_key=os.environ["DEMO_SECRET_KEY"],
        region_name="us-east-1",
        config=Config(**options),
    )


def wait(seconds: str, pid: str = "") -> int:
    s3 = client(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=5)
    deadline = time.monotonic() + float(seconds)
    last = None
    while time.monotonic() < deadline:
        if pid and not os.path.exists(f"/proc/{pid}"):
            print(f"SeaweedFS (pid {pid}) exited", file=sys.stderr)
            return 1
        try:
            s3.list_buckets()
            return 0
        except ClientError as exc:
            code = exc.response["Error"]["Code"]
            if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied"):
                print(f"the server on {os.environ['DEMO_ENDPOINT']} rejects the demo "
                      f"credentials ({code}); is it another S3 server?", file=sys.stderr)
                return 2
            last = exc
        except BotoCoreError as exc:
            last = exc
        time.sleep(0.3)
    print(f"S3 did not answer within {seconds}s: {last}", file=sys.stderr)
    return 1


def make_bucket(bucket: str) -> int:
    s3 = client()
    try:
        s3.create_bucket(Bucket=bucket)
        print(f"created bucket {bucket}")
    except ClientError as exc:
        if exc.response["Error"]["Code"] != "BucketAlreadyOwnedByYou":
            raise
        print(f"bucket {bucket} already exists")
    return 0


def show(bucket: str, *keys: str) -> int:
    s3 = client()
    # close(2) on a FUSE file returns before the upload may have finished:
    # give it a moment.
    deadline = time.monotonic() + 15
    for key in keys:
        while True:
            try:
                s3.head_object(Bucket=bucket, Key=key)
                break
            except ClientError:
                if time.monotonic() > deadline:
                    print(f"object {key} did not appear in the bucket", file=sys.stderr)
                    return 1
                time.sleep(0.3)

    print(f"$ list_objects_v2 Bucket={bucket}")
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            stamp = obj["LastModified"].strftime("%Y-%m-%d %H:%M:%S")
            print(f"  {stamp}  {obj['Size']:>8}  {obj['Key']}")
    for key in keys:
        head = s3.head_object(Bucket=bucket, Key=key)
        print(f"\n$ head_object Bucket={bucket} Key={key}")
        headers = head["ResponseMetadata"]["HTTPHeaders"]
        for name in sorted(headers):
            if name in ("content-length", "content-type", "etag", "last-modified") \
                    or name.startswith("x-amz-meta-"):
                print(f"  {name}: {headers[name]}")
    return 0


def main(argv):
    commands = {"wait": wait, "make-bucket": make_bucket, "show": show}
    if len(argv) < 2 or argv[1] not in commands:
        print(__doc__, file=sys.stderr)
        return 2
    return commands[argv[1]](*argv[2:])


if __name__ == "__main__":
    sys.exit(main(sys.argv))
