"""Credentials on a live mount: secrets stay out of ps and logs, expiring keys are refreshed,
iam_role, public_bucket, and TLS verification (no_check_certificate)."""

from __future__ import annotations

import errno
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import support

pytestmark = pytest.mark.mounted


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_EC2_METADATA_DISABLED="true", AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull,
               PYTHONUNBUFFERED="1", HOME="/nonexistent")          # no ~/.passwd-s3fs, no ~/.aws
    env.update(extra)
    return {k: v for k, v in env.items() if v is not None}


def launch(seaweed, bucket, tmp_path, options, env, url=None, flags=("-f",)):
    point = tmp_path / "mnt"
    cmd = [sys.executable, "-m", "s3pyfs", bucket, str(point), *flags, "-o",
           ",".join([f"url={url or seaweed.endpoint}", "use_path_request_style", *options])]
    return support.Mount(point, cmd, env, tmp_path / "s3pyfs.log").start()


def write_secret_file(path, text):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(fd, text.encode())
    os.close(fd)
    return path


def cmdline_of_mount(point):
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                args = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if any(b"s3pyfs" in a for a in args) and str(point).encode() in args:
                return int(entry.name), b" ".join(args).decode()
    return None, ""


# ---------------------------------------------------------------- secrets
SIGNS_OF_A_SIGNATURE = ("Signature=", "Authorization", "X-Amz-Signature", "x-amz-security-token")


def test_secrets_stay_out_of_ps_and_the_daemon_log(seaweed, s3, bucket, tmp_path):
    pw = write_secret_file(tmp_path / "passwd", f"{bucket}:{seaweed.access_key}:{seaweed.secret_key}\n")
    point = tmp_path / "mnt"
    point.mkdir()
    log = tmp_path / "daemon.log"
    result = subprocess.run([sys.executable, "-m", "s3pyfs", bucket, str(point), "-o",
                             f"url={seaweed.endpoint},use_path_request_style,passwd_file={pw},logfile={log},dbglevel=dbg"],
                            capture_output=True, text=True, timeout=60, env=clean_env())
    try:
        assert result.returncode == 0, result.stderr
        (point / "file").write_text("some data")
        assert (point / "file").read_text() == "some data"
        pid, cmdline = cmdline_of_mount(point)
        assert pid and seaweed.secret_key not in cmdline
        ps = subprocess.run(["ps", "-ww", "-eo", "args"], capture_output=True, text=True).stdout
        assert str(point) in ps and seaweed.secret_key not in ps
    finally:
        subprocess.run(["fusermount3", "-u", str(point)])
        support.wait_until(lambda: cmdline_of_mount(point)[0] is None, 30)
    text = log.read_text()
    assert "DEBUG" in text                                    # the debug log was really on
    assert seaweed.secret_key not in text + result.stderr + result.stdout
    assert not [sign for sign in SIGNS_OF_A_SIGNATURE if sign.lower() in text.lower()], text[-3000:]


def test_debug_log_of_a_foreground_mount_has_no_secret(seaweed, s3, bucket, tmp_path):
    m = launch(seaweed, bucket, tmp_path, [], clean_env(AWS_ACCESS_KEY_ID=seaweed.access_key,
                                                        AWS_SECRET_ACCESS_KEY=seaweed.secret_key),
               flags=("-d",))
    try:
        m.wait_mounted(30)
        (m.path / "d").mkdir()
        (m.path / "d" / "f").write_bytes(b"x" * 100_000)
        assert os.listdir(m.path / "d") == ["f"]
    finally:
        assert m.unmount() == 0
        m.close()
    text = m.log_text()
    assert " DEBUG " in text
    assert seaweed.secret_key not in text
    assert not [sign for sign in SIGNS_OF_A_SIGNATURE if sign.lower() in text.lower()]


# ---------------------------------------------------------------- refresh
CREDENTIAL_PROCESS = """\
import datetime, json, pathlib, sys
here = pathlib.Path(sys.argv[1])
who = (here / "identity").read_text().strip()
keys = json.loads((here / "keys.json").read_text())[who]
with open(here / "calls", "a") as log:
    log.write(who + "\\n")
expires = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=900 + {lifetime})
print(json.dumps({{"Version": 1, "AccessKeyId": keys[0], "SecretAccessKey": keys[1],
                  "Expiration": expires.strftime("%Y-%m-%dT%H:%M:%SZ")}}))
"""


def test_expiring_profile_keys_are_refreshed_without_remount(seaweed, s3, bucket, tmp_path):
    """credential_process hands out keys that expire: botocore asks again before they do.

    The keys switch from the read-write to the read-only identity and back while the
    mount stays up; writes follow the identity of the moment.
    """
    lifetime = 6        # seconds beyond botocore's 15-minute early-refresh window
    state = tmp_path / "creds"
    state.mkdir()
    (state / "keys.json").write_text(json.dumps({"rw": [seaweed.access_key, seaweed.secret_key],
                                                 "ro": [seaweed.ro_access_key, seaweed.ro_secret_key]}))
    (state / "identity").write_text("rw")
    script = state / "process.py"
    script.write_text(CREDENTIAL_PROCESS.format(lifetime=lifetime))
    config = tmp_path / "aws-config"
    config.write_text(f"[profile rotating]\ncredential_process = {sys.executable} {script} {state}\n")
    m = launch(seaweed, bucket, tmp_path, ["profile=rotating"], clean_env(AWS_CONFIG_FILE=str(config)))
    calls = lambda: (state / "calls").read_text().split()   # noqa: E731
    try:
        m.wait_mounted(30)
        os.mkdir(m.path / "written-as-rw")
        first = len(calls())
        (state / "identity").write_text("ro")
        time.sleep(lifetime + 1)
        with pytest.raises(OSError) as denied:
            os.mkdir(m.path / "written-as-ro")
        assert denied.value.errno in (errno.EACCES, errno.EPERM, errno.EIO)
        assert os.listdir(m.path) == ["written-as-rw"]             # reading works with ro keys
        assert calls()[first:] and calls()[-1] == "ro"
        (state / "identity").write_text("rw")
        time.sleep(lifetime + 1)
        os.mkdir(m.path / "written-as-rw-again")
    finally:
        assert m.unmount() == 0
        problems = m.close()
    assert not problems, problems
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])}
    assert keys == {"written-as-rw/", "written-as-rw-again/"}
    assert calls()[0] == "rw" and "ro" in calls() and calls()[-1] == "rw"


# ---------------------------------------------------------------- iam_role
class FakeInstanceMetadata(ThreadingHTTPServer):
    """The EC2 instance metadata service (IMDSv2) as botocore asks it for a role's keys."""

    def __init__(self, access_key, secret_key):
        self.keys = (access_key, secret_key)
        self.requests: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, body: str, status=200):
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_PUT(self):
                outer.requests.append(f"PUT {self.path}")
                self._send("imds-session-token" if self.path == "/latest/api/token" else "", 200)

            def do_GET(self):
                outer.requests.append(f"GET {self.path}")
                if self.headers.get("x-aws-ec2-metadata-token") != "imds-session-token":
                    return self._send("", 401)
                if self.path == "/latest/meta-data/iam/security-credentials/":
                    return self._send("node-role")
                if self.path == "/latest/meta-data/iam/security-credentials/node-role":
                    expires = datetime.now(UTC) + timedelta(hours=1)
                    return self._send(json.dumps({
                        "Code": "Success", "Type": "AWS-HMAC", "AccessKeyId": outer.keys[0],
                        "SecretAccessKey": outer.keys[1], "Token": "",
                        "Expiration": expires.strftime("%Y-%m-%dT%H:%M:%SZ")}))
                return self._send("", 404)

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}/"


def test_iam_role_takes_the_instance_role_over_environment_keys(seaweed, s3, bucket, tmp_path):
    imds = FakeInstanceMetadata(seaweed.access_key, seaweed.secret_key)
    env = clean_env(AWS_EC2_METADATA_DISABLED=None, AWS_EC2_METADATA_SERVICE_ENDPOINT=imds.url,
                    AWS_ACCESS_KEY_ID="AKIAWRONGWRONGWRONG", AWS_SECRET_ACCESS_KEY="wrong-secret")
    m = launch(seaweed, bucket, tmp_path, ["iam_role=node-role"], env)
    try:
        m.wait_mounted(30)
        (m.path / "from-role.txt").write_text("written with the instance role")
    finally:
        assert m.unmount() == 0
        m.close()
        imds.shutdown()
    assert "GET /latest/meta-data/iam/security-credentials/node-role" in imds.requests
    assert s3.get_object(Bucket=bucket, Key="from-role.txt")["Body"].read() == b"written with the instance role"


# ---------------------------------------------------------------- unsigned, TLS
def test_public_bucket_sends_unsigned_requests(seaweed, bucket, tmp_path):
    pw = write_secret_file(tmp_path / "passwd", f"{seaweed.access_key}:{seaweed.secret_key}\n")
    point = tmp_path / "mnt"
    point.mkdir()
    result = subprocess.run([sys.executable, "-m", "s3pyfs", bucket, str(point), "-o",
                             f"url={seaweed.endpoint},use_path_request_style,passwd_file={pw},public_bucket=1"],
                            capture_output=True, text=True, timeout=60, env=clean_env())
    # the bucket is private: anonymous requests are refused although the passwd file has good keys
    assert result.returncode == 3, result.stderr
    assert "access denied" in result.stderr and not os.path.ismount(point)


class TlsFront:
    """TLS with a self-signed certificate in front of the plain-HTTP S3 server."""

    def __init__(self, tmp_path, target_port):
        self.cert, self.key = tmp_path / "cert.pem", tmp_path / "key.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                        "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                        "-keyout", str(self.key), "-out", str(self.cert)], check=True, capture_output=True)
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(self.cert, self.key)
        self.target = ("127.0.0.1", target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client):
        try:
            tls = self.context.wrap_socket(client, server_side=True)
            upstream = socket.create_connection(self.target)
        except (OSError, ssl.SSLError):
            client.close()
            return

        def pump(src, dst):
            try:
                while data := src.recv(65536):
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                for s in (src, dst):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
        threading.Thread(target=pump, args=(upstream, tls), daemon=True).start()
        pump(tls, upstream)

    def close(self):
        self.listener.close()


def test_self_signed_endpoint_needs_no_check_certificate(seaweed, s3, bucket, tmp_path):
    front = TlsFront(tmp_path, int(seaweed.endpoint.rsplit(":", 1)[1]))
    url = f"https://127.0.0.1:{front.port}"
    pw = write_secret_file(tmp_path / "passwd", f"{seaweed.access_key}:{seaweed.secret_key}\n")
    point = tmp_path / "mnt"
    point.mkdir()
    try:
        refused = subprocess.run([sys.executable, "-m", "s3pyfs", bucket, str(point), "-o",
                                  f"url={url},use_path_request_style,passwd_file={pw},retries=1"],
                                 capture_output=True, text=True, timeout=60, env=clean_env())
        assert refused.returncode == 4 and "certificate" in refused.stderr.lower(), refused.stderr
        m = launch(seaweed, bucket, tmp_path, [f"passwd_file={pw}", "no_check_certificate"], clean_env(), url=url)
        try:
            m.wait_mounted(30)
            (m.path / "over-tls.txt").write_text("through a self-signed endpoint")
        finally:
            assert m.unmount() == 0
            m.close()
    finally:
        front.close()
    assert s3.get_object(Bucket=bucket, Key="over-tls.txt")["Body"].read() == b"through a self-signed endpoint"
