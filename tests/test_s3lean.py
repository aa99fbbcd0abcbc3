"""HEADs on the lean path (s3lean.py, s3sign.py, s3get.LeanHTTP) through S3Client.head.

The lean HEAD must really be taken (answers counted on its own pool), give
field by field what botocore's HeadObject gives, keep its connections alive,
survive a pooled connection the server closed, sign with credentials that
change while the client runs, leave proxies, 403 and 5xx answers to botocore,
and turn hostile answers into a clear error instead of a crash.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import sys
import threading

import pytest
import trio
from botocore.auth import S3SigV4Auth
from botocore.credentials import ReadOnlyCredentials
from test_s3get import _settings  # the same client settings as the lean GET tests

from s3pyfs.credentials import StaticKeys
from s3pyfs.errors import AccessDenied, RemoteIOError
from s3pyfs.s3client import ClientSettings, open_client

pytestmark = pytest.mark.trio

META = {"mode": "33188", "uid": "1000", "gid": "1000", "mtime": "1600000000.25", "x-note": "a b;c=d"}
HEADERS = dict(ContentType="text/x-lean", CacheControl="no-cache", ContentEncoding="identity",
               ContentDisposition='attachment; filename="f.txt"', ContentLanguage="de",
               Expires="Wed, 21 Oct 2037 07:28:00 GMT")


def _info(info):
    return None if info is None else dataclasses.asdict(info)


async def test_lean_head_answers_what_botocore_answers(seaweed, s3, bucket):
    keys = {"plain": b"", "dir/sub/with space+plus": b"x" * 10, "ünï/€.txt": b"y" * 5000}
    for key, body in keys.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body, Metadata=META, **HEADERS)
    s3.put_object(Bucket=bucket, Key="bare", Body=b"z")
    names = [*keys, "bare", "absent", "dir/absent"]
    async with open_client(_settings(seaweed, bucket, lean_head=False)) as client:
        await client.head("plain")
        botocore_way = {key: _info(await client.head(key)) for key in names}
    async with open_client(_settings(seaweed, bucket)) as client:
        await client.head("plain")                        # botocore's HEAD teaches the URL
        before = client._lean.http.answers.copy()
        lean_way = {key: _info(await client.head(key)) for key in names}
        answers = client._lean.http.answers - before
        assert answers == {("HEAD", 200): 4, ("HEAD", 404): 2}       # all of them the lean way
        raw = await client._lean.head("HEAD", "plain")
    for key in names:
        assert lean_way[key] == botocore_way[key], key
    assert lean_way["absent"] is None and lean_way["plain"]["metadata"] == META
    assert lean_way["plain"]["headers"]["CacheControl"] == "no-cache"
    # the raw fields are botocore's HeadObject fields, value for value
    expected = s3.head_object(Bucket=bucket, Key="plain")
    for field, value in raw.items():
        assert expected[field] == value, field


async def test_connections_are_kept_alive_and_signing_needs_no_hop(seaweed, s3, bucket):
    for i in range(1, 21):
        s3.put_object(Bucket=bucket, Key=f"k{i}", Body=b"0123456789" * i)
    async with open_client(_settings(seaweed, bucket)) as client:
        await client.head("k1")
        for _ in range(3):
            for i in range(1, 21):
                assert (await client.head(f"k{i}")).size == 10 * i
                assert bytes(await client.get_range(f"k{i}", 3, 8)) == b"34567"
        assert await client.head("nothing") is None
        http = client._lean.http
        assert http.answers[("HEAD", 200)] == 60 and http.answers[("HEAD", 404)] == 1
        assert http.connections_made == 1                  # one keep-alive connection for all of them
        assert client._lean.signer.snapshots == 1          # credentials taken once, not per request


async def test_pooled_connection_closed_by_the_server_is_tried_again(seaweed, s3, bucket, fault_proxy):
    s3.put_object(Bucket=bucket, Key="k", Body=b"abc", Metadata={"mode": "33188"})
    async with open_client(_settings(seaweed, bucket, fault_proxy.url)) as client:
        await client.head("k")
        assert (await client.head("k")).metadata == {"mode": "33188"}
        assert client._lean.http.connections_made == 1
        fault_proxy.forward()                              # closes every connection it holds
        info = await client.head("k")
        assert info is not None and info.size == 3
        assert client._lean.http.connections_made == 2     # the closed one was dropped, a fresh one made
        assert client._lean.http.answers[("HEAD", 200)] == 2


CREDENTIAL_PROCESS = """
import datetime, json, pathlib, sys
state = pathlib.Path(sys.argv[1])
identity = (state / "identity").read_text()
keys = json.loads((state / "keys.json").read_text())[identity]
with open(state / "calls", "a") as f:
    f.write(identity + "\\n")
expires = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=15, seconds={lifetime})
print(json.dumps({{"Version": 1, "AccessKeyId": keys[0], "SecretAccessKey": keys[1],
                  "Expiration": expires.strftime("%Y-%m-%dT%H:%M:%SZ")}}))
"""


async def test_credentials_refreshed_while_the_client_runs(seaweed, s3, bucket, tmp_path, monkeypatch):
    """Keys from a credential_process that expire (seconds beyond botocore's 15-minute
    refresh window): the lean path signs with the keys of the moment, not its first ones."""
    lifetime = 3
    state = tmp_path / "creds"
    state.mkdir()
    (state / "keys.json").write_text(json.dumps({"good": [seaweed.access_key, seaweed.secret_key],
                                                 "bad": [seaweed.access_key, "not-the-secret"]}))
    (state / "identity").write_text("good")
    script = state / "process.py"
    script.write_text(CREDENTIAL_PROCESS.format(lifetime=lifetime))
    config = tmp_path / "aws-config"
    config.write_text(f"[profile rotating]\ncredential_process = {sys.executable} {script} {state}\n")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    s3.put_object(Bucket=bucket, Key="k", Body=b"abc")
    async with open_client(_settings(seaweed, bucket, static_keys=None, profile="rotating")) as client:
        http = client._lean.http
        await client.head("k")
        assert (await client.head("k")).size == 3 and http.answers[("HEAD", 200)] == 1
        (state / "identity").write_text("bad")
        await trio.sleep(lifetime + 1)
        with pytest.raises(AccessDenied):
            await client.head("k")                         # signed with the new (wrong) keys
        assert http.answers[("HEAD", 403)] == 1            # ... on the lean path too
        (state / "identity").write_text("good")
        await trio.sleep(lifetime + 1)
        assert (await client.head("k")).size == 3
        assert http.answers[("HEAD", 200)] == 2            # the lean path works again
    calls = (state / "calls").read_text().split()
    assert calls[0] == "good" and "bad" in calls and calls[-1] == "good"


async def test_403_on_the_lean_path_falls_back_to_botocore(seaweed, s3, bucket):
    s3.put_object(Bucket=bucket, Key="k", Body=b"abcd", Metadata={"uid": "7"})
    async with open_client(_settings(seaweed, bucket)) as client:
        await client.head("k")
        await client.head("k")
        signer = client._lean.signer
        snap = signer._snap
        stale = S3SigV4Auth(ReadOnlyCredentials(seaweed.access_key, "revoked-secret", None), "s3", "us-east-1")
        signer._snap = dataclasses.replace(snap, auth=stale)       # as if the keys were rotated meanwhile
        info = await client.head("k")
        assert info is not None and info.size == 4 and info.metadata == {"uid": "7"}    # botocore answered
        assert client._lean.http.answers[("HEAD", 403)] == 1
        await trio.sleep(1.1)                  # a denied snapshot is dropped once it is a second old
        assert (await client.head("k")).size == 4
        assert client._lean.http.answers[("HEAD", 200)] == 2 and signer.snapshots == 2   # retaken, lean again


async def test_server_errors_go_the_botocore_way(seaweed, s3, bucket, fault_proxy):
    s3.put_object(Bucket=bucket, Key="k", Body=b"abcdef")
    async with open_client(_settings(seaweed, bucket, fault_proxy.url)) as client:
        await client.head("k")
        fault = fault_proxy.add("error500", method="HEAD", times=2)
        assert (await client.head("k")).size == 6           # botocore retried the 500
        assert fault.hits == 2 and client._lean.http.answers[("HEAD", 500)] == 1


async def test_a_configured_proxy_sends_heads_through_botocore(seaweed, s3, bucket, fault_proxy, monkeypatch):
    for name in ("no_proxy", "NO_PROXY", "HTTPS_PROXY", "https_proxy", "HTTP_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("http_proxy", fault_proxy.url)
    s3.put_object(Bucket=bucket, Key="k", Body=b"abc")
    async with open_client(_settings(seaweed, bucket)) as client:
        for _ in range(3):
            assert (await client.head("k")).size == 3
        assert client._lean.http.connections_made == 0
    assert fault_proxy.count(method="HEAD") == 3           # every HEAD went through the proxy


class ScriptedServer:
    """Answers every request on loopback with the next of `answers` (raw bytes), keep-alive."""

    def __init__(self, answers: list[bytes]):
        self.answers = list(answers)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        data = b""
        try:
            while True:
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                data = data.split(b"\r\n\r\n", 1)[1]
                conn.sendall(self.answers.pop(0) if self.answers else _answer(404))
        except OSError:
            return

    def close(self) -> None:
        self.listener.close()
        for conn in self.conns:
            conn.close()


def _answer(status: int, *headers: bytes) -> bytes:
    return b"\r\n".join([b"HTTP/1.1 %d X" % status, b"Content-Length: 0", *headers]) + b"\r\n\r\n"


async def test_hostile_answers_are_a_clear_error_never_a_crash():
    good = _answer(200, b"ETag: \"abc\"", b"Last-Modified: Wed, 21 Oct 2015 07:28:00 GMT",
                   b"x-amz-meta-mode: 33188")
    server = ScriptedServer([
        _answer(404),                                                  # botocore's HEAD (learns the URL)
        _answer(200, b"x-amz-meta-name: \xff\xfe\xfd"),                # not UTF-8
        *[_answer(200, b"x-amz-meta-big: " + b"a" * 70_000)] * 3,      # headers beyond 64 KiB, every try
        _answer(200, b"Content-Length: many"),                         # no number
        good,
    ])
    settings = ClientSettings(bucket="b", endpoint_url=server.url, path_style=True,
                              static_keys=StaticKeys("id", "secret"), retries=3, request_timeout=30)
    try:
        async with open_client(settings) as client:
            assert await client.head("k") is None
            with pytest.raises(RemoteIOError, match="x-amz-meta-name.*not UTF-8"):
                await client.head("k")
            with pytest.raises(RemoteIOError, match="headers too long"):
                await client.head("k")
            with pytest.raises(RemoteIOError, match="cannot be read"):
                await client.head("k")
            info = await client.head("k")                 # still working
            assert info is not None and info.etag == "abc" and info.metadata == {"mode": "33188"}
    finally:
        server.close()


@pytest.mark.parametrize("signature", ["s3", "s3v4"])
async def test_lean_head_signs_as_the_client_signs(seaweed, s3, bucket, signature):
    """SigV2 (sigv2 option) and SigV4: the lean path signs with the class botocore chose."""
    s3.put_object(Bucket=bucket, Key="a b/c", Body=b"abc", Metadata={"mode": "33188"})
    async with open_client(_settings(seaweed, bucket, signature_version=signature)) as client:
        await client.head("a b/c")
        info = await client.head("a b/c")
        assert info is not None and info.metadata == {"mode": "33188"}
        assert client._lean.http.answers == {("HEAD", 200): 1}
        assert bytes(await client.get_range("a b/c", 1, 3)) == b"bc"
        assert type(client._lean.signer._snap.auth).__name__ == {"s3": "HmacV1Auth", "s3v4": "S3SigV4Auth"}[signature]
