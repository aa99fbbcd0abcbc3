"""Checks of the test harness itself (tests/conftest.py, tests/support.py).

If these fail, failures elsewhere say little about s3pyfs.
"""

import re

import pytest
import support
from botocore.exceptions import ClientError


def error_code(excinfo) -> str:
    return excinfo.value.response["Error"]["Code"]


def test_seaweed_roundtrip_keeps_user_metadata(s3, bucket):
    # `s3` is a client and a client factory at once.
    s3.put_object(Bucket=bucket, Key="dir/file.txt", Body=b"hello",
                      Metadata={"mode": "33188", "uid": "0"})
    client = s3()
    assert client.get_object(Bucket=bucket, Key="dir/file.txt")["Body"].read() == b"hello"
    head = client.head_object(Bucket=bucket, Key="dir/file.txt")
    assert head["ContentLength"] == 5
    assert head["Metadata"] == {"mode": "33188", "uid": "0"}
    listing = client.list_objects_v2(Bucket=bucket, Delimiter="/")
    assert [p["Prefix"] for p in listing.get("CommonPrefixes", [])] == ["dir/"]


def test_seaweed_checks_signatures(seaweed, bucket):
    good = seaweed.client()
    good.put_object(Bucket=bucket, Key="k", Body=b"v")

    wrong_secret = seaweed.client(secret_key="not-the-secret", retries={"max_attempts": 1})
    with pytest.raises(ClientError) as excinfo:
        wrong_secret.get_object(Bucket=bucket, Key="k")
    assert error_code(excinfo) == "SignatureDoesNotMatch"

    unknown_key = seaweed.client(access_key="nobody", secret_key="x",
                                 retries={"max_attempts": 1})
    with pytest.raises(ClientError) as excinfo:
        unknown_key.list_objects_v2(Bucket=bucket)
    assert error_code(excinfo) == "InvalidAccessKeyId"


def test_seaweed_readonly_identity(seaweed, bucket):
    seaweed.client().put_object(Bucket=bucket, Key="k", Body=b"v")
    reader = seaweed.client(access_key=seaweed.ro_access_key,
                            secret_key=seaweed.ro_secret_key,
                            retries={"max_attempts": 1})
    assert reader.get_object(Bucket=bucket, Key="k")["Body"].read() == b"v"
    with pytest.raises(ClientError) as excinfo:
        reader.put_object(Bucket=bucket, Key="k2", Body=b"v")
    assert error_code(excinfo) == "AccessDenied"


def test_seaweed_does_not_autocreate_buckets(s3):
    missing = support.unique_bucket_name("missing")
    with pytest.raises(ClientError) as excinfo:
        s3(retries={"max_attempts": 1}).put_object(Bucket=missing, Key="k", Body=b"v")
    assert error_code(excinfo) == "NoSuchBucket"


def test_buckets_are_fresh_valid_and_distinct(s3, make_bucket):
    names = [make_bucket(), make_bucket("Weird_Hint With.Chars" * 5), make_bucket("")]
    assert len(set(names)) == 3
    for name in names:
        assert re.fullmatch(r"[a-z0-9][a-z0-9-]{1,61}[a-z0-9]", name), name
        assert s3().list_objects_v2(Bucket=name)["KeyCount"] == 0


def test_moto_server_roundtrip(moto_server):
    client = moto_server.client()
    client.create_bucket(Bucket="moto-smoke")
    client.put_object(Bucket="moto-smoke", Key="a/b", Body=b"data", Metadata={"mtime": "1"})
    assert client.head_object(Bucket="moto-smoke", Key="a/b")["Metadata"] == {"mtime": "1"}
    moto_server.reset()
    assert client.list_buckets()["Buckets"] == []


def test_free_ports_are_distinct_and_bindable():
    ports = support.free_ports(8)
    assert len(set(ports)) == 8
    assert all(support._port_is_free(p) for p in ports)


def test_mountinfo_parser_decodes_escapes():
    assert support._unescape_mountinfo(r"/tmp/a\040b\134c") == "/tmp/a b\\c"
    root = support.mount_entry("/")
    assert root is not None and root["mountpoint"] == "/"
