"""The CSI driver (`python -m s3pyfs csi`) driven over its unix socket the way kubelet and
external-provisioner drive it, against SeaweedFS, with real FUSE mounts.

The driver runs as a subprocess; its mounts are s3pyfs daemons it starts.  Every test
checks what a cluster would notice: gRPC status codes, objects in S3, files through the
mount, the mount table, and that no secret reaches a log, an error message or argv.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import botocore.exceptions
import grpc
import pytest
import support

from s3pyfs.csi import csi_pb2 as pb
from s3pyfs.csi import csi_pb2_grpc as pbg

MODE = pb.VolumeCapability.AccessMode
TIMEOUT = 120          # generous bound for one RPC (a publish waits for a mount)


def fs_capability(mode=MODE.MULTI_NODE_MULTI_WRITER, flags=()):
    return pb.VolumeCapability(mount=pb.VolumeCapability.MountVolume(mount_flags=list(flags)),
                               access_mode=pb.VolumeCapability.AccessMode(mode=mode))


def block_capability():
    return pb.VolumeCapability(block=pb.VolumeCapability.BlockVolume(),
                               access_mode=pb.VolumeCapability.AccessMode(mode=MODE.SINGLE_NODE_WRITER))


class Driver:
    """One `s3pyfs csi` process and gRPC stubs on its socket."""

    def __init__(self, socket_path: str, state_dir: Path, log_path: Path):
        self.socket_path, self.state_dir, self.log_path = socket_path, state_dir, log_path
        self.proc: subprocess.Popen | None = None

    def start(self) -> Driver:
        cmd = [sys.executable, "-m", "s3pyfs", "csi", "--endpoint", f"unix://{self.socket_path}",
               "--node-id", "node-1", "--state-dir", str(self.state_dir), "--unpublish-timeout", "120"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env["PYTHONUNBUFFERED"] = "1"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        self.channel = grpc.insecure_channel(f"unix://{self.socket_path}")
        self.identity = pbg.IdentityStub(self.channel)
        self.controller = pbg.ControllerStub(self.channel)
        self.node = pbg.NodeStub(self.channel)
        deadline = time.monotonic() + 60
        while True:
            assert self.proc.poll() is None, f"driver exited {self.proc.returncode}:\n{self.log()}"
            try:
                self.identity.Probe(pb.ProbeRequest(), timeout=2)
                return self
            except grpc.RpcError:
                assert time.monotonic() < deadline, f"driver did not answer Probe:\n{self.log()}"
                time.sleep(0.1)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill9(self) -> None:
        """SIGKILL to the driver's whole process group (it leads one), as a supervisor killing
        the group would: the mount daemons must not be in it."""
        self.channel.close()
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.channel.close()
            support.stop_process(self.proc)


@pytest.fixture
def driver(tmp_path, fuse_ready, seaweed):
    """driver() starts a driver (again) on one socket and state directory; afterwards every
    driver is stopped and every mount it left is unmounted."""
    sock_dir = tempfile.mkdtemp(prefix="csi-", dir="/tmp")       # unix socket paths are short
    state = tmp_path / "state"
    drivers: list[Driver] = []

    def _start() -> Driver:
        d = Driver(os.path.join(sock_dir, "csi.sock"), state, tmp_path / "driver.log").start()
        drivers.append(d)
        return d

    yield _start
    for d in drivers:
        d.stop()
    for entry in support.mountinfo():
        if entry["fstype"] == "fuse.s3pyfs" and entry["mountpoint"].startswith(str(tmp_path)):
            pid = _mount_pid(state, entry["mountpoint"])
            if pid:
                os.kill(pid, signal.SIGTERM)
                support.wait_until(lambda: support.mount_entry(entry["mountpoint"]) is None, 60)
            support.force_unmount(entry["mountpoint"])
    for name in os.listdir(sock_dir):
        os.unlink(os.path.join(sock_dir, name))
    os.rmdir(sock_dir)


def _mount_pid(state: Path, target: str) -> int | None:
    """The s3pyfs process serving `target`, from its statistics file in the driver's state."""
    import json
    for path in (state / "run").glob("*.json"):
        try:
            stats = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if stats.get("mountpoint") == target:
            return stats.get("pid")
    return None


@pytest.fixture
def secrets(seaweed):
    return {"accessKeyID": seaweed.access_key, "secretAccessKey": seaweed.secret_key, "endpoint": seaweed.endpoint}


def pod_target(tmp_path: Path, name: str) -> str:
    """kubelet's layout: the parent exists, target_path itself does not."""
    parent = tmp_path / "pods" / uuid.uuid4().hex / "volumes" / "kubernetes.io~csi" / name
    parent.mkdir(parents=True)
    return str(parent / "mount")


def code_of(call, *args, **kwargs) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call(*args, timeout=TIMEOUT, **kwargs)
    return info.value


def assert_no_secret(text: str, seaweed) -> None:
    assert seaweed.secret_key not in text
    assert "wrong-secret-key-0123456789" not in text


def state_logs(tmp_path: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in (tmp_path / "state" / "logs").glob("*.log"))


# ---------------------------------------------------------------------- identity and capabilities
def test_identity_and_capabilities(driver):
    d = driver()
    info = d.identity.GetPluginInfo(pb.GetPluginInfoRequest(), timeout=TIMEOUT)
    assert info.name == "csi.s3pyfs.io" and info.vendor_version
    caps = d.identity.GetPluginCapabilities(pb.GetPluginCapabilitiesRequest(), timeout=TIMEOUT).capabilities
    assert [c.service.type for c in caps] == [pb.PluginCapability.Service.CONTROLLER_SERVICE]
    assert d.identity.Probe(pb.ProbeRequest(), timeout=TIMEOUT).ready.value is True
    ctrl = d.controller.ControllerGetCapabilities(pb.ControllerGetCapabilitiesRequest(), timeout=TIMEOUT)
    assert [c.rpc.type for c in ctrl.capabilities] == [pb.ControllerServiceCapability.RPC.CREATE_DELETE_VOLUME]
    assert d.node.NodeGetInfo(pb.NodeGetInfoRequest(), timeout=TIMEOUT).node_id == "node-1"
    node_caps = d.node.NodeGetCapabilities(pb.NodeGetCapabilitiesRequest(), timeout=TIMEOUT).capabilities
    assert pb.NodeServiceCapability.RPC.STAGE_UNSTAGE_VOLUME not in [c.rpc.type for c in node_caps]


# ---------------------------------------------------------------------- the whole life of a volume
def test_volume_lifecycle_survives_a_killed_driver(driver, make_bucket, s3, seaweed, secrets, tmp_path):
    bucket = make_bucket()
    s3.put_object(Bucket=bucket, Key="other/keep.txt", Body=b"not this volume's")
    name = f"pvc-{uuid.uuid4()}"
    d = driver()
    create = pb.CreateVolumeRequest(name=name, volume_capabilities=[fs_capability()], secrets=secrets,
                                    parameters={"bucket": bucket, "options": "uid=1234,gid=2345",
                                                "csi.storage.k8s.io/pvc/name": "data"},
                                    capacity_range=pb.CapacityRange(required_bytes=5 << 30))
    volume = d.controller.CreateVolume(create, timeout=TIMEOUT).volume
    assert volume.volume_id == f"{bucket}/{name}"
    assert volume.volume_context["options"] == "uid=1234,gid=2345"
    assert d.controller.CreateVolume(create, timeout=TIMEOUT).volume == volume          # idempotent
    other = pb.CreateVolumeRequest()
    other.CopyFrom(create)
    other.parameters["options"] = "uid=1"
    assert code_of(d.controller.CreateVolume, other).code() == grpc.StatusCode.ALREADY_EXISTS
    confirmed = d.controller.ValidateVolumeCapabilities(pb.ValidateVolumeCapabilitiesRequest(
        volume_id=volume.volume_id, volume_capabilities=[fs_capability()], secrets=secrets), timeout=TIMEOUT)
    assert confirmed.HasField("confirmed")

    target = pod_target(tmp_path, name)
    publish = pb.NodePublishVolumeRequest(volume_id=volume.volume_id, target_path=target,
                                          volume_capability=fs_capability(), secrets=secrets,
                                          volume_context=volume.volume_context)
    d.node.NodePublishVolume(publish, timeout=TIMEOUT)
    assert support.mount_entry(target)["fstype"] == "fuse.s3pyfs"       # mounted when the call returned
    d.node.NodePublishVolume(publish, timeout=TIMEOUT)                  # idempotent
    assert [e["mountpoint"] for e in support.mountinfo()].count(target) == 1
    Path(target, "hello.txt").write_bytes(b"written through the CSI mount")
    assert s3.get_object(Bucket=bucket, Key=f"{name}/hello.txt")["Body"].read() == b"written through the CSI mount"
    st = os.stat(Path(target, "hello.txt"))
    assert (st.st_uid, st.st_gid) == (1234, 2345)                      # CreateVolume's options reached the mount
    pid = _mount_pid(tmp_path / "state", target)
    assert pid and pid != d.proc.pid
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    assert_no_secret(cmdline, seaweed)
    assert seaweed.access_key not in cmdline                            # keys travel in the environment

    records = list((tmp_path / "state" / "mounts").glob("*.json"))
    assert len(records) == 1 and (records[0].stat().st_mode & 0o777) == 0o600
    assert (tmp_path / "state").stat().st_mode & 0o077 == 0                # root-only
    assert_no_secret(records[0].read_text(), seaweed)
    assert seaweed.access_key not in records[0].read_text()

    d.kill9()                                                           # kubelet's driver pod dies
    Path(target, "after.txt").write_bytes(b"the mount outlived the driver")
    assert Path(target, "hello.txt").read_bytes() == b"written through the CSI mount"
    assert s3.get_object(Bucket=bucket, Key=f"{name}/after.txt")["Body"].read() == b"the mount outlived the driver"

    d = driver()                                                        # the restarted driver
    assert re.search(rf"found published volume {re.escape(volume.volume_id)} at {re.escape(target)}", d.log())
    unpublish = pb.NodeUnpublishVolumeRequest(volume_id=volume.volume_id, target_path=target)
    d.node.NodeUnpublishVolume(unpublish, timeout=TIMEOUT)
    assert support.mount_entry(target) is None and not os.path.exists(target)
    assert support.wait_until(lambda: not os.path.exists(f"/proc/{pid}"), 30), "the mount process did not exit"
    d.node.NodeUnpublishVolume(unpublish, timeout=TIMEOUT)              # idempotent

    delete = pb.DeleteVolumeRequest(volume_id=volume.volume_id, secrets=secrets)
    d.controller.DeleteVolume(delete, timeout=TIMEOUT)
    assert s3.list_objects_v2(Bucket=bucket, Prefix=f"{name}/").get("KeyCount") == 0
    assert s3.get_object(Bucket=bucket, Key="other/keep.txt")["Body"].read() == b"not this volume's"
    d.controller.DeleteVolume(delete, timeout=TIMEOUT)                  # idempotent
    d.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id="no-such-bucket-4711/x", secrets=secrets),
                              timeout=TIMEOUT)
    assert_no_secret(d.log() + state_logs(tmp_path), seaweed)


def test_bucket_per_volume_readonly_publish(driver, s3, seaweed, secrets, tmp_path):
    name = f"PVC_Data.{uuid.uuid4().hex[:8]}"          # not a bucket name as it is
    d = driver()
    create = pb.CreateVolumeRequest(name=name, volume_capabilities=[fs_capability()], secrets=secrets)
    volume = d.controller.CreateVolume(create, timeout=TIMEOUT).volume
    bucket = volume.volume_id
    try:
        assert "/" not in bucket and re.fullmatch(r"[a-z0-9][a-z0-9-]{1,61}[a-z0-9]", bucket)
        assert d.controller.CreateVolume(create, timeout=TIMEOUT).volume.volume_id == bucket
        s3.head_bucket(Bucket=bucket)
        tags = {t["Key"]: t["Value"] for t in s3.get_bucket_tagging(Bucket=bucket)["TagSet"]}
        assert tags["s3pyfs-csi-volume"] == name
        s3.put_object(Bucket=bucket, Key="seed.txt", Body=b"seed")
        other = pb.CreateVolumeRequest()
        other.CopyFrom(create)
        other.parameters["options"] = "umask=0077"
        assert code_of(d.controller.CreateVolume, other).code() == grpc.StatusCode.ALREADY_EXISTS
        assert d.controller.CreateVolume(create, timeout=TIMEOUT).volume.volume_id == bucket

        target = pod_target(tmp_path, "ro")
        d.node.NodePublishVolume(pb.NodePublishVolumeRequest(
            volume_id=bucket, target_path=target, volume_capability=fs_capability(MODE.MULTI_NODE_READER_ONLY),
            readonly=True, secrets=secrets, volume_context=volume.volume_context), timeout=TIMEOUT)
        assert Path(target, "seed.txt").read_bytes() == b"seed"
        with pytest.raises(OSError):
            Path(target, "new.txt").write_bytes(b"x")
        d.node.NodeUnpublishVolume(pb.NodeUnpublishVolumeRequest(volume_id=bucket, target_path=target),
                                   timeout=TIMEOUT)
        assert support.mount_entry(target) is None

        d.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=bucket, secrets=secrets), timeout=TIMEOUT)
        with pytest.raises(botocore.exceptions.ClientError):
            s3.head_bucket(Bucket=bucket)
        d.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=bucket, secrets=secrets), timeout=TIMEOUT)
    finally:
        support.delete_bucket(s3, bucket)


# ---------------------------------------------------------------------- bad requests
def test_bad_requests_get_clear_codes(driver, bucket, s3, secrets, tmp_path):
    d = driver()
    s3.put_object(Bucket=bucket, Key="someone-elses.txt", Body=b"data")
    assert code_of(d.controller.CreateVolume, pb.CreateVolumeRequest(       # a bucket the driver did not make
        name=bucket, volume_capabilities=[fs_capability()], secrets=secrets)).code() == grpc.StatusCode.ALREADY_EXISTS
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    cap = fs_capability()
    assert code_of(d.controller.CreateVolume, pb.CreateVolumeRequest(
        volume_capabilities=[cap], secrets=secrets)).code() == invalid                      # no name
    assert code_of(d.controller.CreateVolume, pb.CreateVolumeRequest(
        name="pvc-a", secrets=secrets)).code() == invalid                                   # no capability
    assert code_of(d.controller.CreateVolume, pb.CreateVolumeRequest(
        name="pvc-a", volume_capabilities=[block_capability()], secrets=secrets)).code() == invalid
    assert code_of(d.controller.CreateVolume, pb.CreateVolumeRequest(
        name="pvc-a", volume_capabilities=[cap], secrets=secrets, parameters={"colour": "blue"})).code() == invalid
    assert code_of(d.controller.CreateVolume, pb.CreateVolumeRequest(
        name="pvc-a", volume_capabilities=[cap], secrets=secrets,
        parameters={"bucket": bucket, "options": "no_such_option"})).code() == invalid
    assert code_of(d.controller.DeleteVolume, pb.DeleteVolumeRequest(secrets=secrets)).code() == invalid

    validate = d.controller.ValidateVolumeCapabilities
    ok = validate(pb.ValidateVolumeCapabilitiesRequest(volume_id=bucket, volume_capabilities=[cap]), timeout=TIMEOUT)
    assert ok.HasField("confirmed")
    refused = validate(pb.ValidateVolumeCapabilitiesRequest(volume_id=bucket, volume_capabilities=[block_capability()]),
                       timeout=TIMEOUT)
    assert not refused.HasField("confirmed") and "block" in refused.message
    assert code_of(validate, pb.ValidateVolumeCapabilitiesRequest(volume_capabilities=[cap])).code() == invalid
    assert code_of(validate, pb.ValidateVolumeCapabilitiesRequest(
        volume_id=f"{bucket}/no-such-volume", volume_capabilities=[cap], secrets=secrets)).code() \
        == grpc.StatusCode.NOT_FOUND

    target = pod_target(tmp_path, "bad")
    publish = d.node.NodePublishVolume
    assert code_of(publish, pb.NodePublishVolumeRequest(
        target_path=target, volume_capability=cap, secrets=secrets)).code() == invalid        # no volume id
    assert code_of(publish, pb.NodePublishVolumeRequest(
        volume_id=bucket, volume_capability=cap, secrets=secrets)).code() == invalid          # no target
    assert code_of(publish, pb.NodePublishVolumeRequest(
        volume_id=bucket, target_path=target, secrets=secrets)).code() == invalid             # no capability
    assert code_of(publish, pb.NodePublishVolumeRequest(
        volume_id=bucket, target_path=target, volume_capability=block_capability(), secrets=secrets)).code() == invalid
    assert code_of(publish, pb.NodePublishVolumeRequest(
        volume_id="no-such-bucket-4711", target_path=target, volume_capability=cap, secrets=secrets)).code() \
        == grpc.StatusCode.NOT_FOUND
    assert code_of(d.node.NodeUnpublishVolume, pb.NodeUnpublishVolumeRequest(target_path=target)).code() == invalid
    assert code_of(d.node.NodeUnpublishVolume, pb.NodeUnpublishVolumeRequest(volume_id=bucket)).code() == invalid
    assert not os.path.exists(target) and support.mount_entry(target) is None


def test_wrong_secrets_are_refused_without_showing_them(driver, bucket, seaweed, secrets, tmp_path):
    d = driver()
    wrong = dict(secrets, secretAccessKey="wrong-secret-key-0123456789")
    cap = fs_capability()
    error = code_of(d.controller.CreateVolume, pb.CreateVolumeRequest(
        name="pvc-wrong", volume_capabilities=[cap], secrets=wrong, parameters={"bucket": bucket}))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert_no_secret(error.details(), seaweed)
    error = code_of(d.controller.CreateVolume, pb.CreateVolumeRequest(
        name="pvc-wrong", volume_capabilities=[cap], secrets={"endpoint": seaweed.endpoint}))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    error = code_of(d.controller.DeleteVolume, pb.DeleteVolumeRequest(volume_id=f"{bucket}/x", secrets=wrong))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert_no_secret(error.details(), seaweed)

    target = pod_target(tmp_path, "wrong")
    error = code_of(d.node.NodePublishVolume, pb.NodePublishVolumeRequest(
        volume_id=bucket, target_path=target, volume_capability=cap, secrets=wrong))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED, error.details()
    assert_no_secret(error.details(), seaweed)
    assert support.mount_entry(target) is None
    assert_no_secret(d.log() + state_logs(tmp_path), seaweed)


# ---------------------------------------------------------------------- a mount whose process died
def test_dead_mount_is_mounted_again_and_unpublished(driver, make_bucket, s3, secrets, tmp_path):
    bucket = make_bucket()
    d = driver()
    volume = d.controller.CreateVolume(pb.CreateVolumeRequest(
        name="pvc-dead", volume_capabilities=[fs_capability()], secrets=secrets, parameters={"bucket": bucket}),
        timeout=TIMEOUT).volume
    target = pod_target(tmp_path, "dead")
    publish = pb.NodePublishVolumeRequest(volume_id=volume.volume_id, target_path=target, secrets=secrets,
                                          volume_capability=fs_capability(), volume_context=volume.volume_context)
    d.node.NodePublishVolume(publish, timeout=TIMEOUT)
    Path(target, "kept.txt").write_bytes(b"in S3 before the crash")

    def kill_mount_process():
        pid = _mount_pid(tmp_path / "state", target)
        os.kill(pid, signal.SIGKILL)
        assert support.wait_until(lambda: not os.path.exists(f"/proc/{pid}"), 30)
        with pytest.raises(OSError):
            os.listdir(target)                 # Transport endpoint is not connected

    kill_mount_process()
    d.node.NodePublishVolume(publish, timeout=TIMEOUT)        # kubelet publishing again heals it
    assert Path(target, "kept.txt").read_bytes() == b"in S3 before the crash"
    assert [e["mountpoint"] for e in support.mountinfo()].count(target) == 1

    kill_mount_process()
    d.node.NodeUnpublishVolume(pb.NodeUnpublishVolumeRequest(volume_id=volume.volume_id, target_path=target),
                               timeout=TIMEOUT)
    assert support.mount_entry(target) is None and not os.path.exists(target)
    d.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=volume.volume_id, secrets=secrets), timeout=TIMEOUT)


def test_only_the_command_line_imports_the_csi_package():
    """The driver is a layer on top (beside cli.py): nothing of the filesystem depends on it."""
    package = Path(__file__).resolve().parent.parent / "s3pyfs"
    users = sorted(p.name for p in package.glob("*.py") if re.search(r"^\s*from \.csi|import s3pyfs\.csi|"
                                                                       r"from s3pyfs\.csi", p.read_text(), re.M))
    assert users == ["cli.py"]


def test_csi_subcommand_help_and_usage_errors():
    shown = subprocess.run([sys.executable, "-m", "s3pyfs", "csi", "--help"], capture_output=True, text=True,
                           timeout=60)
    assert shown.returncode == 0 and "--node-id" in shown.stdout and "--endpoint" in shown.stdout
    refused = subprocess.run([sys.executable, "-m", "s3pyfs", "csi", "--endpoint", "tcp://0:1", "--node-id", "n"],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "unix:///" in refused.stderr


def test_unpublish_uploads_data_a_process_still_holds_open(driver, make_bucket, s3, secrets, tmp_path):
    """kubelet unpublishes after the pod's containers are gone, but a process may still hold a
    file open with unsaved writes: the data reaches S3 before NodeUnpublishVolume answers."""
    bucket = make_bucket()
    d = driver()
    volume = d.controller.CreateVolume(pb.CreateVolumeRequest(
        name="pvc-open", volume_capabilities=[fs_capability()], secrets=secrets, parameters={"bucket": bucket}),
        timeout=TIMEOUT).volume
    target = pod_target(tmp_path, "open")
    d.node.NodePublishVolume(pb.NodePublishVolumeRequest(
        volume_id=volume.volume_id, target_path=target, secrets=secrets, volume_capability=fs_capability(),
        volume_context=volume.volume_context), timeout=TIMEOUT)
    writer = subprocess.Popen([sys.executable, "-c", (
        "import os, sys, time\n"
        f"fd = os.open({os.path.join(target, 'open.log')!r}, os.O_WRONLY | os.O_CREAT, 0o644)\n"
        "os.write(fd, b'written, never closed')\n"
        "print('written', flush=True)\n"
        "time.sleep(600)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "written"
        assert s3.list_objects_v2(Bucket=bucket, Prefix="pvc-open/open.log").get("KeyCount") == 0
        d.node.NodeUnpublishVolume(pb.NodeUnpublishVolumeRequest(volume_id=volume.volume_id, target_path=target),
                                   timeout=TIMEOUT)
        assert s3.get_object(Bucket=bucket, Key="pvc-open/open.log")["Body"].read() == b"written, never closed"
        assert support.mount_entry(target) is None
    finally:
        writer.kill()
        writer.wait(timeout=30)


# ---------------------------------------------------------------------- names and ids (no server)
def test_bucket_names_from_volume_names_are_valid_and_distinct():
    from s3pyfs.csi.volumes import bucket_for_volume, valid_bucket
    names = ["pvc-0b6e8f8e-2a4c-4a43-9d2b-1f1c1a2b3c4d", "PVC-Upper", "pvc-upper", "a.b", "a-b", "x", "_x_",
             "pvc_data", "pvc-data", "ünïcødé-vol", "192.168.0.1", "a" * 253, "a" * 252 + "b", "-lead", "trail-"]
    buckets = [bucket_for_volume(n) for n in names]
    assert all(valid_bucket(b) and "." not in b and b == b.lower() for b in buckets), buckets
    assert len(set(buckets)) == len(names)
    assert bucket_for_volume(names[0]) == names[0]            # a valid name is kept as it is


def test_volume_ids_and_options_are_checked():
    from s3pyfs.csi.volumes import CsiError, VolumeId, check_options, parse_volume_id
    assert parse_volume_id("bkt/pvc-1") == VolumeId("bkt", "pvc-1")
    assert parse_volume_id("bkt/a/b").source == "bkt:/a/b" and parse_volume_id("bkt").source == "bkt"
    for bad in ("bkt/../x", "bkt//x", "BK", "bkt/./x", "bkt/x/"):
        with pytest.raises(CsiError) as info:
            parse_volume_id(bad)
        assert info.value.code == grpc.StatusCode.NOT_FOUND
    check_options("uid=1000,gid=1000,umask=0002")
    for bad in ("passwd_file=/etc/shadow", "url=http://elsewhere", "logfile=/tmp/x", "nonsense"):
        with pytest.raises(CsiError) as info:
            check_options(bad)
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
