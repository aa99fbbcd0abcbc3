"""Shared pytest fixtures for s3pyfs.

Servers (session scope):
  seaweed      SeaweedFS with S3 on free loopback ports; .endpoint,
               .access_key, .secret_key, .region, .client(...)
  moto_server  moto's S3 server in-process; .endpoint, .client(), .reset()
  s3           boto3 client for seaweed (path style, us-east-1), and a
               factory: s3(access_key=..., secret_key=..., **config) -> client

Per test:
  make_bucket  factory: make_bucket() -> name of a new empty bucket
  bucket       one new bucket, deleted after the test
  mount        factory: mount(bucket, *opts, prefix=None) -> support.Mount
               (.path, .proc, .log_path, .unmount()); teardown unmounts and
               fails the test if s3pyfs crashed or logged a traceback

Tests that use ``mount`` get the ``mounted`` marker automatically, so
``-m 'not mounted'`` runs everything that needs no FUSE.  When FUSE is not
usable, mounted tests fail with the reason; they are never skipped.

Environment knobs: S3PYFS_TEST_SEAWEED_TIMEOUT, S3PYFS_TEST_MOUNT_TIMEOUT
(seconds), S3PYFS_TEST_DEBUG=1 (pass -d to s3pyfs).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path

import pytest

# Make ``import support`` work whatever pytest's import mode is.
sys.path.insert(0, str(Path(__file__).resolve().parent))

import support  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "mounted: needs a live s3pyfs FUSE mount (FUSE device, fusermount3, SeaweedFS); "
        "added automatically to tests that use the `mount` fixture")


def pytest_collection_modifyitems(config, items):
    for item in items:
        names = getattr(item, "fixturenames", None)
        if names is None:
            continue
        if "mount" in names and item.get_closest_marker("mounted") is None:
            item.add_marker(pytest.mark.mounted)
        # Every mounted test checks FUSE first (before starting servers), and
        # fails, not skips, when it is missing.
        if item.get_closest_marker("mounted") is not None:
            if "fuse_ready" in names:
                names.remove("fuse_ready")
            names.insert(0, "fuse_ready")


# --------------------------------------------------------------------------
# Environment checks

@pytest.fixture(scope="session")
def fuse_ready():
    """Fail (never skip) when this machine cannot run mounted tests."""
    problems = []
    if not os.path.exists("/dev/fuse"):
        problems.append("/dev/fuse does not exist (load the 'fuse' kernel module, or run "
                        "the container with --device /dev/fuse --cap-add SYS_ADMIN)")
    elif not os.access("/dev/fuse", os.R_OK | os.W_OK):
        problems.append(f"/dev/fuse is not readable and writable by uid {os.getuid()}")
    if shutil.which("fusermount3") is None:
        problems.append("fusermount3 is not on PATH (apt-get install fuse3, "
                        "or run scripts/bootstrap.sh)")
    if importlib.util.find_spec("s3pyfs") is None:
        problems.append(f"package s3pyfs is not importable by {sys.executable} "
                        "(run scripts/bootstrap.sh, i.e. pip install -e '.[test]')")
    if problems:
        pytest.fail("mounted tests cannot run on this machine:\n  - "
                    + "\n  - ".join(problems), pytrace=False)


@pytest.fixture(scope="session", autouse=True)
def _no_leftover_mounts(tmp_path_factory):
    """Safety net: lazily unmount any s3pyfs mount left under the test tmp dir."""
    yield
    base = str(tmp_path_factory.getbasetemp().resolve())
    for entry in support.mountinfo():
        if entry["fstype"] == support.FSTYPE and entry["mountpoint"].startswith(base + os.sep):
            support.force_unmount(entry["mountpoint"])


# --------------------------------------------------------------------------
# S3 servers

@pytest.fixture(scope="session")
def seaweed(tmp_path_factory):
    """A SeaweedFS server with an S3 gateway, shared by the whole session."""
    server = support.SeaweedServer(tmp_path_factory.mktemp("seaweed"))
    error = None
    try:
        server.start()
    except RuntimeError as exc:
        error = str(exc)
    if error:
        pytest.fail(error, pytrace=False)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def moto_server():
    """moto's S3 server on a free loopback port, in this process."""
    server = support.MotoServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3(seaweed):
    """boto3 S3 client for seaweed (admin identity), also a client factory.

    ``s3.put_object(...)`` uses a shared default client; ``s3(...)`` returns
    a new client, e.g. ``s3(secret_key="wrong")`` or ``s3(retries=...)``.
    """
    return support.ClientFactory(seaweed.client)


@pytest.fixture
def make_bucket(seaweed, request):
    """Factory creating fresh buckets on seaweed; all are deleted afterwards."""
    client = seaweed.client()
    created = []

    def _make_bucket(hint: str | None = None) -> str:
        name = support.unique_bucket_name(hint if hint is not None else request.node.name)
        client.create_bucket(Bucket=name)
        created.append(name)
        return name

    yield _make_bucket
    for name in reversed(created):
        try:
            support.delete_bucket(client, name)
        except Exception as exc:  # cleanup is best effort
            print(f"warning: could not delete bucket {name}: {exc}", file=sys.stderr)


@pytest.fixture
def proxy(seaweed):
    """tcp_proxy.TcpProxy in front of seaweed, forwarding; tests switch it to
    refuse()/stall()/forward() and read its byte counters."""
    import urllib.parse

    from tcp_proxy import TcpProxy
    target = urllib.parse.urlsplit(seaweed.endpoint)
    p = TcpProxy(target.hostname, target.port)
    p.forward()
    yield p
    p.close()


@pytest.fixture
def bucket(make_bucket):
    """Name of a new, empty bucket on seaweed."""
    return make_bucket()


# --------------------------------------------------------------------------
# FUSE mounts

@pytest.fixture
def mount(seaweed, make_bucket, fuse_ready, tmp_path):
    """Factory mounting a bucket with ``python -m s3pyfs ... -f``.

    ``mount(bucket, *opts, prefix=None, args=(), credentials=None,
    timeout=None, wait=True, env=None)``: ``opts`` are extra ``-o`` options
    (e.g. "ro", "uid=1000"); ``credentials`` is an (access, secret) pair for
    the passwd file (default: the seaweed admin identity); ``args`` are extra
    command-line arguments; ``wait=False`` returns at once (for tests that
    expect the mount to fail).

    Depends on ``make_bucket`` so mounts are torn down before their buckets
    are deleted.
    """
    mounts: list[support.Mount] = []
    timeout_default = support.env_float("S3PYFS_TEST_MOUNT_TIMEOUT", 15.0)

    def _mount(bucket_name: str, *opts: str, prefix: str | None = None, args=(),
               credentials: tuple[str, str] | None = None, timeout: float | None = None,
               wait: bool = True, env: dict | None = None) -> support.Mount:
        n = len(mounts) + 1
        workdir = tmp_path / f"s3pyfs-{n}"
        workdir.mkdir()
        access, secret = credentials or (seaweed.access_key, seaweed.secret_key)
        passwd = workdir / "passwd"
        fd = os.open(passwd, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"{access}:{secret}\n")
        os.chmod(passwd, 0o600)

        source = bucket_name if prefix is None else f"{bucket_name}:/{prefix.lstrip('/')}"
        options = [f"url={seaweed.endpoint}", "use_path_request_style",
                   f"passwd_file={passwd}", *opts]
        mountpoint = Path(os.path.realpath(workdir / "mnt"))
        cmd = [sys.executable, "-m", "s3pyfs", source, str(mountpoint), "-f"]
        if os.environ.get("S3PYFS_TEST_DEBUG"):
            cmd.append("-d")
        cmd += ["-o", ",".join(options), *args]

        proc_env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        proc_env.update(
            AWS_EC2_METADATA_DISABLED="true",    # never wait for an instance role
            AWS_CONFIG_FILE=os.devnull,          # ignore the user's ~/.aws
            AWS_SHARED_CREDENTIALS_FILE=os.devnull,
            PYTHONUNBUFFERED="1",
            PYTHONFAULTHANDLER="1",
        )
        proc_env.update(env or {})

        m = support.Mount(mountpoint, cmd, proc_env, workdir / "s3pyfs.log")
        mounts.append(m)
        m.start()
        if wait:
            error = None
            try:
                m.wait_mounted(timeout or timeout_default)
            except support.MountError as exc:
                error = str(exc)
            if error:
                pytest.fail(error, pytrace=False)
        return m

    yield _mount

    problems = []
    for m in reversed(mounts):
        problems += m.close()
        for warning in m.warnings:
            print(f"warning: {warning}", file=sys.stderr)
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


@pytest.fixture
def fault_proxy(seaweed):
    """fault_proxy.FaultProxy in front of seaweed, forwarding with no rules; tests
    add faults (proxy.add("slowdown", method="PUT", share=0.3)) and read its counters."""
    import urllib.parse

    from fault_proxy import FaultProxy
    target = urllib.parse.urlsplit(seaweed.endpoint)
    p = FaultProxy(target.hostname, target.port)
    p.forward()
    yield p
    p.close()
