"""FlexVolume driver (deploy/flexvolume), invoked the way kubelet invokes it.

kubelet runs `<plugin dir>/vendor~s3pyfs/s3pyfs <call> [args]` as root with a minimal
environment, reads stdout and stderr together (Go's CombinedOutput, i.e. pipes it waits on
to EOF) and parses the whole of it as one JSON object.  The calls below use the option JSON
kubelet builds for a pod volume: its own kubernetes.io/* keys, the Secret's keys base64-encoded
under kubernetes.io/secret/, and the volume's `options`.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import time
import uuid

import pytest
import support
from deploy_support import DEPLOY, S3PYFS_BIN, VENV_BIN, fstype, s3pyfs_pids_for, wait_for

pytestmark = pytest.mark.mounted

DRIVER = DEPLOY / "flexvolume" / "vendor~s3pyfs" / "s3pyfs"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def kubelet_options(seaweed, bucket, *, readwrite="rw", secret=None, **volume_options):
    pod_uid = str(uuid.uuid4())
    options = {
        "kubernetes.io/fsType": "",
        "kubernetes.io/pod.name": "web-0",
        "kubernetes.io/pod.namespace": "default",
        "kubernetes.io/pod.uid": pod_uid,
        "kubernetes.io/pvOrVolumeName": "data",
        "kubernetes.io/readwrite": readwrite,
        "kubernetes.io/serviceAccount.name": "default",
        "kubernetes.io/secret/accesskey": b64(seaweed.access_key),
        "kubernetes.io/secret/secretkey": b64(secret or seaweed.secret_key),
        "bucket": bucket,
        "endpoint": seaweed.endpoint,
        "region": "us-east-1",
    }
    options.update(volume_options)
    return options


class Kubelet:
    """Calls the driver like kubelet: root, a bare environment, stdout+stderr in one pipe."""

    def __init__(self, tmp_path, extra_env=None):
        self.run_dir = tmp_path / "flex-run"
        self.env = {
            "PATH": f"{VENV_BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "S3PYFS_BIN": S3PYFS_BIN,
            "S3PYFS_FLEX_RUN_DIR": str(self.run_dir),
            "S3PYFS_FLEX_SYSTEMD": "no",
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        }
        if os.environ.get("PYTHONPATH"):
            self.env["PYTHONPATH"] = os.environ["PYTHONPATH"]
        self.env.update(extra_env or {})
        self.calls: list[tuple[list[str], float, str]] = []

    def __call__(self, *args, timeout=60) -> dict:
        started = time.monotonic()
        proc = subprocess.run([str(DRIVER), *args], env=self.env, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
        elapsed = time.monotonic() - started
        text = proc.stdout.decode()
        self.calls.append((list(args), elapsed, text))
        reply = json.loads(text)             # the whole combined output is one JSON object
        assert reply["status"] in ("Success", "Failure", "Not supported"), text
        assert (proc.returncode == 0) == (reply["status"] != "Failure"), (proc.returncode, text)
        return reply


def assert_success(reply: dict) -> None:
    assert reply["status"] == "Success", reply


def pod_volume_dir(tmp_path, name="data") -> str:
    path = tmp_path / "kubelet" / "pods" / str(uuid.uuid4()) / "volumes" / "vendor~s3pyfs" / name
    path.mkdir(parents=True)
    return str(path)


@pytest.fixture
def cleanup_mounts(tmp_path):
    yield
    for entry in support.mountinfo():
        if entry["mountpoint"].startswith(str(tmp_path) + os.sep):
            support.force_unmount(entry["mountpoint"])


def test_init_and_unsupported_calls(tmp_path):
    kubelet = Kubelet(tmp_path)
    assert kubelet("init") == {"status": "Success", "message": "s3pyfs FlexVolume driver",
                               "capabilities": {"attach": False, "selinuxRelabel": False, "fsGroup": False}}
    for call in (["attach", "{}", "node1"], ["waitforattach", "/dev/x", "{}"], ["getvolumename", "{}"],
                 ["mountdevice", "/x", "/dev/x", "{}"], ["expandvolume"]):
        assert kubelet(*call)["status"] == "Not supported"
    assert kubelet("mount", "/nonexistent/dir", "not json")["status"] == "Failure"
    assert kubelet()["status"] == "Failure"


def test_mount_is_prompt_idempotent_and_unmount_cleans_up(seaweed, s3, bucket, tmp_path, cleanup_mounts):
    kubelet = Kubelet(tmp_path)
    directory = pod_volume_dir(tmp_path)
    options = kubelet_options(seaweed, bucket, prefix="team-a", mountOptions="uid=1234,gid=2345")

    reply = kubelet("mount", directory, json.dumps(options))
    assert reply["status"] == "Success", reply
    # Returned (pipes closed) while the daemon keeps serving: no inherited pipe.
    assert kubelet.calls[-1][1] < 30
    assert fstype(directory) == support.FSTYPE
    daemons = s3pyfs_pids_for(directory)
    assert len(daemons) == 1
    # Secrets: not on the daemon's command line, no passwd file left behind.
    cmdline = open(f"/proc/{daemons[0]}/cmdline", "rb").read().decode(errors="replace")
    assert seaweed.secret_key not in cmdline and "allow_other" in cmdline
    assert os.listdir(kubelet.run_dir) == []
    assert (os.stat(kubelet.run_dir).st_mode & 0o777) == 0o700

    with open(os.path.join(directory, "hello.txt"), "w") as fh:
        fh.write("from a pod")
    assert s3().get_object(Bucket=bucket, Key="team-a/hello.txt")["Body"].read() == b"from a pod"
    st = os.stat(os.path.join(directory, "hello.txt"))
    assert (st.st_uid, st.st_gid) == (1234, 2345)        # mountOptions reached s3pyfs

    # kubelet retries mount on an already-mounted directory: Success, still one daemon.
    again = kubelet("mount", directory, json.dumps(options))
    assert again["status"] == "Success" and "already mounted" in again["message"]
    assert s3pyfs_pids_for(directory) == daemons

    reply = kubelet("unmount", directory)
    assert reply["status"] == "Success", reply
    assert fstype(directory) is None
    assert s3pyfs_pids_for(directory) == []          # unmount waited for the daemon to finish
    assert kubelet("unmount", directory)["status"] == "Success"     # idempotent too
    os.rmdir(directory)                              # what kubelet does next


def test_read_only_volume_and_dead_mount_recovery(seaweed, s3, bucket, tmp_path, cleanup_mounts):
    s3().put_object(Bucket=bucket, Key="existing.txt", Body=b"old data")
    kubelet = Kubelet(tmp_path)
    directory = pod_volume_dir(tmp_path)
    options = kubelet_options(seaweed, bucket, readwrite="ro")
    assert_success(kubelet("mount", directory, json.dumps(options)))
    with open(os.path.join(directory, "existing.txt")) as fh:
        assert fh.read() == "old data"
    with pytest.raises(OSError) as info:
        open(os.path.join(directory, "new.txt"), "w").close()
    assert info.value.errno == 30            # EROFS

    # The daemon dies (OOM kill, node trouble): the next mount call repairs the dead mount.
    for pid in s3pyfs_pids_for(directory):
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not s3pyfs_pids_for(directory), 10, "daemon gone")
    with pytest.raises(OSError) as info:
        os.statvfs(directory)
    assert info.value.errno in (103, 107)    # ECONNABORTED / ENOTCONN: a dead mount
    assert_success(kubelet("mount", directory, json.dumps(options)))
    assert os.listdir(directory) == ["existing.txt"]
    assert_success(kubelet("unmount", directory))
    assert fstype(directory) is None


def test_failures_are_one_json_object_with_the_reason(seaweed, bucket, tmp_path, cleanup_mounts):
    kubelet = Kubelet(tmp_path)
    directory = pod_volume_dir(tmp_path)
    wrong = "definitely-wrong-" + "q" * 16
    reply = kubelet("mount", directory, json.dumps(kubelet_options(seaweed, bucket, secret=wrong)))
    assert reply["status"] == "Failure" and "code 3" in reply["message"], reply
    assert wrong not in reply["message"]
    assert fstype(directory) is None and os.listdir(kubelet.run_dir) == []

    options = kubelet_options(seaweed, bucket)
    del options["bucket"]
    assert kubelet("mount", directory, json.dumps(options)) == {
        "status": "Failure", "message": "option 'bucket' is required"}
    options = kubelet_options(seaweed, bucket)
    options["kubernetes.io/secret/secretkey"] = "%%% not base64"
    assert "base64" in kubelet("mount", directory, json.dumps(options))["message"]
    options = kubelet_options(seaweed, "no-such-bucket-anywhere")
    reply = kubelet("mount", directory, json.dumps(options))
    assert reply["status"] == "Failure" and "does not exist" in reply["message"]


def test_daemon_runs_in_a_systemd_scope_when_systemd_is_there(seaweed, bucket, tmp_path, cleanup_mounts):
    """No systemd as PID 1 here: a stand-in systemd-run records its arguments and runs the command."""
    fake_bin = tmp_path / "fake-bin"
    fake_bin.mkdir()
    record = tmp_path / "systemd-run.args"
    (fake_bin / "systemd-run").write_text(
        "#!/bin/sh\n"
        f"printf '%s\\n' \"$@\" > {record}\n"
        "while [ \"$1\" != -- ]; do shift; done; shift\n"
        "exec \"$@\"\n")
    (fake_bin / "systemd-run").chmod(0o755)
    kubelet = Kubelet(tmp_path, {"S3PYFS_FLEX_SYSTEMD": "auto",
                                 "PATH": f"{fake_bin}:{VENV_BIN}:/usr/sbin:/usr/bin:/sbin:/bin"})
    directory = pod_volume_dir(tmp_path)
    options = json.dumps(kubelet_options(seaweed, bucket))
    # "auto": systemd-run exists but systemd does not run this machine -> not used.
    assert_success(kubelet("mount", directory, options))
    assert not record.exists()
    assert_success(kubelet("unmount", directory))

    kubelet.env["S3PYFS_FLEX_SYSTEMD"] = "yes"
    assert_success(kubelet("mount", directory, options))
    args = record.read_text().splitlines()
    assert args[:3] == ["--scope", "--quiet", "--collect"]
    assert args[3].startswith("--unit=s3pyfs-flex-")
    assert args[args.index("--") + 1] == S3PYFS_BIN
    assert kubelet.calls[-1][1] < 30 and fstype(directory) == support.FSTYPE
    assert_success(kubelet("unmount", directory))


def test_install_script_places_the_driver_atomically(tmp_path):
    plugin_dir = tmp_path / "volume" / "exec"
    result = subprocess.run(["sh", str(DEPLOY / "flexvolume" / "install.sh"), str(plugin_dir)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    installed = plugin_dir / "vendor~s3pyfs" / "s3pyfs"
    assert installed.read_bytes() == DRIVER.read_bytes()
    assert os.access(installed, os.X_OK)
    assert sorted(os.listdir(installed.parent)) == ["s3pyfs"]
