"""Container entrypoint (deploy/docker) without a Docker engine.

A container runtime gives the s3pyfs container its own mount namespace and bind-mounts the
shared host directory into it with rshared propagation (Docker `-v dir:dir:rshared`,
Kubernetes `mountPropagation: Bidirectional`).  Here: a shared bind mount on the host side,
and the entrypoint run by `unshare -m --propagation unchanged` in a private mount namespace
that keeps that mount's peer group.  The test checks what the host sees.
"""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys

import pytest
import support
from deploy_support import (
    DEPLOY,
    S3PYFS_BIN,
    clean_env,
    cmdlines_of_tree,
    fstype,
    mounts_under,
    s3pyfs_pids_for,
    wait_for,
)

pytestmark = pytest.mark.mounted

ENTRYPOINT = DEPLOY / "docker" / "s3pyfs-entrypoint"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"


@pytest.fixture
def shared_host_dir(tmp_path, fuse_ready):
    """A directory on the host made a shared mount (what an rshared volume needs)."""
    host = tmp_path / "host"
    host.mkdir()
    subprocess.run(["mount", "--bind", str(host), str(host)], check=True)
    subprocess.run(["mount", "--make-shared", str(host)], check=True)
    yield host
    for entry in reversed(mounts_under(host)):
        support.force_unmount(entry["mountpoint"])
    subprocess.run(["umount", "-l", str(host)], check=False)


def entrypoint_env(seaweed, bucket, point, run_dir, **extra):
    settings = dict(S3_BUCKET=bucket, MNT_POINT=str(point), S3_URL=seaweed.endpoint,
                    AWS_KEY=seaweed.access_key, AWS_SECRET_KEY=seaweed.secret_key,
                    S3PYFS_BIN=S3PYFS_BIN, S3PYFS_RUN_DIR=str(run_dir))
    settings.update(extra)
    return clean_env(**settings)


def start_in_namespace(env, log_path):
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            ["unshare", "-m", "--propagation", "unchanged", sys.executable, str(ENTRYPOINT)],
            env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)


def run_entrypoint(action, env):
    return subprocess.run([sys.executable, str(ENTRYPOINT), action], env=env, capture_output=True,
                          text=True, timeout=60)


def test_entrypoint_mounts_for_host_and_sigterm_uploads_then_leaves_no_mount(
        seaweed, s3, bucket, shared_host_dir, tmp_path):
    point = shared_host_dir / bucket
    run_dir = tmp_path / "run"
    log = tmp_path / "entrypoint.log"
    env = entrypoint_env(seaweed, bucket, point, run_dir)

    assert run_entrypoint("ready", env).returncode == 1          # nothing mounted yet
    proc = start_in_namespace(env, log)
    try:
        # The host sees the mount through propagation, as fuse.s3pyfs.
        wait_for(lambda: fstype(point) == support.FSTYPE, 30, "mount visible on the host", proc, log)
        ready = run_entrypoint("ready", env)
        assert ready.returncode == 0, ready.stdout + ready.stderr
        # ... and it is a different mount namespace from ours.
        assert os.readlink(f"/proc/{proc.pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")

        # Secrets: a 0600 passwd file, nowhere on any command line.
        passwd = run_dir / "passwd"
        assert stat.S_IMODE(passwd.stat().st_mode) == 0o600
        assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700
        cmdlines = cmdlines_of_tree(proc.pid)
        assert any("s3pyfs" in c and "-f" in c.split() for c in cmdlines), cmdlines
        assert not any(seaweed.secret_key in c for c in cmdlines)
        child = [p for p in s3pyfs_pids_for(point) if p != proc.pid]
        assert child, cmdlines
        environ = open(f"/proc/{child[0]}/environ", "rb").read()
        assert b"AWS_SECRET_KEY=" not in environ

        # A write from the host, still open when the container is told to stop.
        payload = os.urandom(3 * 1024 * 1024 + 17)
        fd = os.open(point / "in-flight.bin", os.O_CREAT | os.O_WRONLY, 0o644)
        os.write(fd, payload)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, support.tail(log)
        try:
            os.close(fd)
        except OSError:
            pass
    finally:
        support.stop_process(proc)

    assert s3().get_object(Bucket=bucket, Key="in-flight.bin")["Body"].read() == payload
    assert mounts_under(shared_host_dir) == [], "a mount was left on the host"
    assert os.listdir(point) == []          # a plain, empty directory again (no ENOTCONN)
    assert not (run_dir / "passwd").exists()
    assert "Traceback" not in log.read_text()


def test_entrypoint_cleans_dead_mounts_and_prestop_unmount(
        seaweed, s3, bucket, shared_host_dir, tmp_path):
    point = shared_host_dir / bucket
    run_dir = tmp_path / "run"
    log = tmp_path / "entrypoint.log"
    env = entrypoint_env(seaweed, bucket, point, run_dir, S3PYFS_OPTIONS="umask=002")

    # 1. s3pyfs dies hard: the entrypoint reports 128+9 and detaches the dead mount.
    proc = start_in_namespace(env, log)
    try:
        wait_for(lambda: fstype(point) == support.FSTYPE, 30, "mount visible on the host", proc, log)
        child = [p for p in s3pyfs_pids_for(point) if p != proc.pid]
        os.kill(child[0], signal.SIGKILL)
        assert proc.wait(timeout=30) == 128 + signal.SIGKILL
    finally:
        support.stop_process(proc)
    assert mounts_under(shared_host_dir) == []
    assert "detaching the mount" in log.read_text()

    # 2. A new container on the same path mounts again; the preStop action stops it cleanly.
    proc = start_in_namespace(env, log)
    try:
        wait_for(lambda: fstype(point) == support.FSTYPE, 30, "second mount", proc, log)
        (point / "kept.txt").write_text("written before preStop")
        # preStop runs inside the container: same mount namespace.
        stop = subprocess.run(["nsenter", "-t", str(proc.pid), "-m", sys.executable, str(ENTRYPOINT), "unmount"],
                              env=env, capture_output=True, text=True, timeout=90)
        assert stop.returncode == 0, stop.stdout + stop.stderr
        assert proc.wait(timeout=30) == 0
    finally:
        support.stop_process(proc)
    assert mounts_under(shared_host_dir) == []
    assert s3().get_object(Bucket=bucket, Key="kept.txt")["Body"].read() == b"written before preStop"

    # 3. The whole container is SIGKILLed (docker kill, OOM): the host keeps a dead mount; the
    #    next container finds it, detaches it and mounts again.
    proc = start_in_namespace(env, log)
    try:
        wait_for(lambda: fstype(point) == support.FSTYPE, 30, "third mount", proc, log)
        for pid in [proc.pid] + [p for p in s3pyfs_pids_for(point) if p != proc.pid]:
            os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=10)
        wait_for(lambda: not s3pyfs_pids_for(point), 10, "s3pyfs gone")
        assert fstype(point) == support.FSTYPE               # dead mount left on the host
        with pytest.raises(OSError):
            os.statvfs(point)
        not_ready = run_entrypoint("ready", env)             # listed, but its daemon is gone
        assert not_ready.returncode == 1 and "not ready" in not_ready.stdout
    finally:
        support.stop_process(proc)
    proc = start_in_namespace(env, log)
    try:
        wait_for(lambda: "dead FUSE mount left by an earlier run" in log.read_text(), 30,
                 "dead mount noticed", proc, log)
        wait_for(lambda: fstype(point) == support.FSTYPE and run_entrypoint("ready", env).returncode == 0,
                 30, "fourth mount", proc, log)
        assert (point / "kept.txt").read_text() == "written before preStop"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        support.stop_process(proc)
    assert mounts_under(shared_host_dir) == []


def test_entrypoint_passes_on_s3pyfs_exit_code_and_refuses_bad_environment(seaweed, bucket, tmp_path, fuse_ready):
    point = tmp_path / "mnt"
    secret = "wrong-secret-" + "z" * 20
    env = entrypoint_env(seaweed, bucket, point, tmp_path / "run", AWS_SECRET_KEY=secret)
    result = subprocess.run([sys.executable, str(ENTRYPOINT)], env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 3, result.stderr          # s3pyfs: credentials rejected
    assert secret not in result.stdout + result.stderr
    assert fstype(point) is None

    env.pop("S3_BUCKET")
    result = subprocess.run([sys.executable, str(ENTRYPOINT)], env=env, capture_output=True, text=True)
    assert result.returncode == 2 and "S3_BUCKET" in result.stderr


def test_entrypoint_command_maps_the_environment(tmp_path):
    env = clean_env(S3_BUCKET="photos", S3_PREFIX="/2024/", MNT_POINT=str(tmp_path / "m"),
                    S3_ENDPOINT="minio.example:9000", S3_REGION="eu-west-3", AWS_KEY="AK",
                    AWS_SECRET_KEY="SECRETVALUE", S3PYFS_OPTIONS="uid=1000,gid=1000",
                    S3PYFS_RUN_DIR=str(tmp_path / "run"), S3PYFS_BIN="s3pyfs")
    out = run_entrypoint("command", env)
    assert out.returncode == 0, out.stderr
    words = out.stdout.split()
    assert words[:4] == ["s3pyfs", "photos:/2024", str(tmp_path / "m"), "-f"]
    opts = words[words.index("-o") + 1].split(",")
    assert "url=https://minio.example:9000" in opts and "use_path_request_style" in opts
    assert "endpoint=eu-west-3" in opts and "allow_other" in opts
    assert f"passwd_file={tmp_path / 'run' / 'passwd'}" in opts
    assert opts[-2:] == ["uid=1000", "gid=1000"]
    assert "SECRETVALUE" not in out.stdout

    env.update(S3_PATH_STYLE="false", S3PYFS_ALLOW_OTHER="no")
    for name in ("S3_ENDPOINT", "AWS_KEY", "AWS_SECRET_KEY", "S3_PREFIX"):
        env.pop(name)
    words = run_entrypoint("command", env).stdout.split()
    assert words[1] == "photos"
    opts = words[words.index("-o") + 1].split(",")
    assert "use_path_request_style" not in opts and "allow_other" not in opts
    assert not any(o.startswith("passwd_file=") for o in opts)


def dockerfile_instructions():
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), " ".join(rest.split())))
    return out


def test_dockerfile_is_debian_slim_with_fuse3_package_and_pid1_entrypoint():
    """No Docker engine here: the Dockerfile is checked as text (see the README's notes)."""
    steps = dockerfile_instructions()
    froms = [arg for word, arg in steps if word == "FROM"]
    assert len(froms) == 2 and all(re.match(r"debian:\$\{DEBIAN_RELEASE\}-slim", f) for f in froms)
    assert ("ARG", "DEBIAN_RELEASE=bookworm") in steps
    runs = " ".join(arg for word, arg in steps if word == "RUN")
    assert "libfuse3-dev" in runs and "pip install --no-cache-dir /src" in runs
    final = steps[max(i for i, (w, _) in enumerate(steps) if w == "FROM"):]
    final_runs = " ".join(arg for word, arg in final if word == "RUN")
    assert re.search(r"install -y --no-install-recommends python3 fuse3 ca-certificates", final_runs)
    assert "build-essential" not in final_runs          # no toolchain in the runtime image
    # Every COPY source exists in the build context (the repository root) and is not ignored.
    ignore = (DEPLOY / "docker" / "Dockerfile.dockerignore").read_text().split()
    root = DEPLOY.parent
    for word, arg in steps:
        if word == "COPY" and not arg.startswith("--from"):
            *sources, _dest = arg.split()
            for src in sources:
                assert (root / src).exists(), src
                assert f"!{src}" in ignore or f"!{src}/" in ignore, f"{src} is excluded by .dockerignore"
    final_dict = {w: a for w, a in final}
    assert final_dict["ENTRYPOINT"] == '["/usr/local/bin/s3pyfs-entrypoint"]'   # exec form: PID 1
    assert final_dict["CMD"] == '["run"]'
    assert final_dict["STOPSIGNAL"] == "SIGTERM"
    assert final_dict["HEALTHCHECK"].endswith('CMD ["/usr/local/bin/s3pyfs-entrypoint", "ready"]')
    assert "COPY deploy/docker/s3pyfs-entrypoint /usr/local/bin/s3pyfs-entrypoint" in \
        [f"{w} {a}" for w, a in final]
    assert os.access(ENTRYPOINT, os.X_OK)
    assert ENTRYPOINT.read_text().startswith("#!/usr/bin/env python3\n")
