#!/usr/bin/env python3
"""The CSI driver from the image with `--mounter systemd-run`, in a container whose PID 1 is
systemd: the node layout the DaemonSet in deploy/csi/node.yaml relies on, run for real.

    image_check_systemd.py --image localhost/s3pyfs:0.1.0 [--runtime runc] [--nofile N] [--nproc N]

What it does (scripts/image_check.py runs it as its last step; standalone it starts its own
SeaweedFS):
1. `podman run --systemd=always --privileged --cgroupns=private --network host --device
   /dev/fuse` with /lib/systemd/systemd as PID 1 (a stand-in for the node's systemd), the
   host's socket directory bind-mounted at /csi; waits for `systemctl is-system-running`.
2. `s3pyfs csi --endpoint unix:///csi/csi.sock --node-id n1 --mounter systemd-run` started
   in the container as the service csi-node-plugin.service (a cgroup of its own, as the node
   plugin's container has on a node); this script talks gRPC to it from the host, as kubelet
   and the external-provisioner would.
3. CreateVolume (a prefix of a shared bucket) -> NodePublishVolume at a kubelet-style target
   inside the container -> a file written through the mount (podman exec) is in S3 -> the
   s3pyfs process is in the scope s3pyfs-csi-<hash>.scope, not in the driver's cgroup.
4. SIGKILL to every process of the driver's cgroup (`systemctl kill --signal=SIGKILL`, what a
   runtime does to a container it tears down) -> the mount still serves reads and writes,
   `systemctl status` shows the scope active.  (With `--mounter daemon` the write fails here:
   "Transport endpoint is not connected".)
5. A new driver -> NodeUnpublishVolume: the file written after the kill is in S3, the mount
   is gone, the scope is gone (--collect) -> DeleteVolume empties the prefix.

Secrets reach the driver over gRPC only (never argv or podman's environment).  A failure
raises the caller's exception class (image_check.CheckFailed) with the driver's log.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import support  # noqa: E402

from s3pyfs.csi import csi_pb2 as pb  # noqa: E402
from s3pyfs.csi import csi_pb2_grpc as pbg  # noqa: E402

RPC_TIMEOUT = 120            # generous bound for one RPC (a publish waits for a mount)
DRIVER_LOG = "/var/log/s3pyfs-csi.log"
DRIVER_UNIT = "csi-node-plugin.service"     # not s3pyfs-csi-*: those are the mounts
TARGET = "/var/lib/kubelet/pods/p1/volumes/kubernetes.io~csi/pv-check/mount"


# The cgroup of the s3pyfs process serving argv[1], found through its statistics file.
CGROUP_OF_MOUNT = """
import glob, json, sys
for path in glob.glob("/var/lib/s3pyfs-csi/run/*.json"):
    stats = json.load(open(path))
    if stats.get("mountpoint") == sys.argv[1]:
        print(open(f"/proc/{stats['pid']}/cgroup").read())
"""


def v1_systemd_cgroups() -> set[str] | None:
    """The unit-named (.slice/.scope/.service/.mount) directories at the top of the host's
    name=systemd cgroup hierarchy, when it exists and no systemd runs the host (so none of
    them are the host's units); None otherwise.  Other containers' (libpod_parent/...) are
    not looked at."""
    root = "/sys/fs/cgroup/systemd"
    if not os.path.isdir(root) or os.path.isdir("/run/systemd/system"):
        return None
    unit = (".slice", ".scope", ".service", ".mount")
    found = set()
    for top in os.listdir(root):
        if top.endswith(unit) and os.path.isdir(os.path.join(root, top)):
            found.update(d for d, _, _ in os.walk(os.path.join(root, top)))
    return found


def scope_name(target: str) -> str:
    """The unit node.py gives the mount of `target`."""
    return f"s3pyfs-csi-{hashlib.sha256(target.encode()).hexdigest()[:16]}.scope"


def capability():
    mode = pb.VolumeCapability.AccessMode
    return pb.VolumeCapability(mount=pb.VolumeCapability.MountVolume(),
                               access_mode=mode(mode=mode.MULTI_NODE_MULTI_WRITER))


class SystemdNode:
    """A container with systemd as PID 1 and the CSI driver exec'd into it."""

    def __init__(self, podman, image: str, sock_dir: str, error: type[Exception]):
        self.podman, self.image, self.sock_dir, self.error = podman, image, sock_dir, error
        self.name = f"s3pyfs-csi-systemd-{uuid.uuid4().hex[:8]}"
        self.channel = None

    def start(self) -> None:
        self.cgroups_before = v1_systemd_cgroups()
        self.podman.run("run", "-d", "--name", self.name, "--systemd=always", "--privileged",
                        "--cgroupns=private", "--network", "host", "--device", "/dev/fuse",
                        "--no-healthcheck", *self.podman.ulimits, "-v", f"{self.sock_dir}:/csi",
                        "--entrypoint", "/lib/systemd/systemd", self.image)

        def booted() -> bool:
            state = self.exec("systemctl", "is-system-running", check=False).stdout.decode().strip()
            if state in ("running", "degraded"):
                return True
            if not self.running():
                raise self.failed("the systemd container stopped while booting")
            return False

        if not support.wait_until(booted, timeout=120, interval=0.5):
            raise self.failed("systemd in the container did not finish booting within 120 s")

    def running(self) -> bool:
        state = self.podman.run("inspect", "--format", "{{.State.Running}}", self.name, check=False)
        return state.stdout.decode().strip() == "true"

    def exec(self, *args: str, check: bool = True, input: bytes | None = None):
        return self.podman.run("exec", *(["-i"] if input is not None else []), self.name, *args,
                               check=check, input=input, timeout=180)

    def start_driver(self):
        """`s3pyfs csi --mounter systemd-run` in the container, as the service DRIVER_UNIT (its
        own cgroup: what the node plugin's container is on a node); gRPC stubs on its socket."""
        self.exec("systemctl", "reset-failed", DRIVER_UNIT, check=False)
        command = ("exec s3pyfs csi --endpoint unix:///csi/csi.sock --node-id n1 --mounter systemd-run "
                   f"--unpublish-timeout 120 >> {DRIVER_LOG} 2>&1")
        self.exec("systemd-run", "--quiet", "--collect", f"--unit={DRIVER_UNIT}", "-p", "KillMode=control-group",
                  "sh", "-c", command)
        self.channel = grpc.insecure_channel(f"unix://{self.sock_dir}/csi.sock")
        identity = pbg.IdentityStub(self.channel)
        deadline = time.monotonic() + 60
        while True:
            try:
                identity.Probe(pb.ProbeRequest(), timeout=2)
                break
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise self.failed("the driver did not answer Probe within 60 s") from None
                time.sleep(0.2)
        return pbg.ControllerStub(self.channel), pbg.NodeStub(self.channel)

    def kill_driver(self) -> None:
        """SIGKILL to every process in the driver's cgroup, as a container runtime tearing
        down the node plugin's container does (more than `kill -9` of the driver alone)."""
        self.channel.close()
        self.exec("systemctl", "kill", "--signal=SIGKILL", DRIVER_UNIT)
        if not support.wait_until(lambda: self.exec("systemctl", "is-active", "--quiet", DRIVER_UNIT,
                                                     check=False).returncode != 0, timeout=30, interval=0.2):
            raise self.failed(f"{DRIVER_UNIT} outlived SIGKILL to its cgroup")
        try:
            os.unlink(os.path.join(self.sock_dir, "csi.sock"))     # a killed driver leaves it
        except FileNotFoundError:
            pass

    def driver_log(self) -> str:
        return self.exec("cat", DRIVER_LOG, check=False).stdout.decode(errors="replace")

    def failed(self, message: str) -> Exception:
        units = self.exec("systemctl", "list-units", "--all", "--no-pager", "s3pyfs-csi-*", check=False)
        return self.error(f"{message}\nunits:\n{units.stdout.decode(errors='replace')}"
                           f"\ndriver log:\n{self.driver_log()[-3000:]}")

    def remove(self) -> None:
        if self.channel is not None:
            self.channel.close()
        self.podman.run("rm", "-f", "-t", "0", self.name, check=False, timeout=120)
        # On a hybrid-cgroup host whose PID 1 is not systemd, the container's systemd makes its
        # cgroups at the root of the host's name=systemd hierarchy and leaves them there (empty).
        if getattr(self, "cgroups_before", None) is not None:
            for path in sorted(v1_systemd_cgroups() - self.cgroups_before, key=len, reverse=True):
                try:
                    os.rmdir(path)
                except OSError:
                    pass        # not empty (someone else's): left alone


def check_systemd_mounter(podman, image: str, server, summary: dict, say, error: type[Exception]) -> None:
    """The steps above; `say` prints a step, `error` is the exception a failure raises."""
    client = server.client()
    bucket = f"csi-systemd-{uuid.uuid4().hex[:10]}"
    client.create_bucket(Bucket=bucket)
    secrets = {"accessKeyID": server.access_key, "secretAccessKey": server.secret_key,
               "endpoint": server.endpoint}
    sock_dir = tempfile.mkdtemp(prefix="s3pyfs-csi-sd-", dir="/tmp")       # short socket path
    node = SystemdNode(podman, image, sock_dir, error)
    scope = scope_name(TARGET)
    try:
        started = time.monotonic()
        node.start()
        summary["systemd_boot_s"] = round(time.monotonic() - started, 1)
        say("ok", f"container {node.name}: systemd is PID 1 ({summary['systemd_boot_s']} s to boot)")
        controller, nodes = node.start_driver()

        volume = controller.CreateVolume(pb.CreateVolumeRequest(
            name="pv-check", parameters={"bucket": bucket}, volume_capabilities=[capability()],
            secrets=secrets), timeout=RPC_TIMEOUT).volume
        node.exec("mkdir", "-p", os.path.dirname(TARGET))
        nodes.NodePublishVolume(pb.NodePublishVolumeRequest(
            volume_id=volume.volume_id, target_path=TARGET, volume_capability=capability(),
            volume_context=volume.volume_context, secrets=secrets), timeout=RPC_TIMEOUT)
        payload = os.urandom(1024 * 1024 + 7)
        node.exec("sh", "-c", f"cat > {TARGET}/before-kill.bin", input=payload)
        body = client.get_object(Bucket=bucket, Key="pv-check/before-kill.bin")["Body"].read()
        if body != payload:
            raise node.failed(f"S3 holds {len(body)} other bytes than the {len(payload)} written")
        say("ok", f"CreateVolume {volume.volume_id}, NodePublishVolume, a file written through the "
                  "mount is in S3")

        cgroup = node.exec("python3", "-c", CGROUP_OF_MOUNT, TARGET, check=False)
        if f"/{scope}" not in cgroup.stdout.decode():
            raise node.failed(f"the s3pyfs process serving {TARGET} is not in {scope}: "
                              f"{(cgroup.stdout + cgroup.stderr).decode(errors='replace')}")
        say("ok", f"the mount's s3pyfs process runs in {scope}")

        node.kill_driver()
        after = b"written after the driver was killed\n"
        wrote = node.exec("sh", "-c", f"cat > {TARGET}/after-kill.txt", input=after, check=False)
        if wrote.returncode != 0:
            raise node.failed("after SIGKILL to the driver's cgroup, writing through the mount failed: "
                              + wrote.stderr.decode(errors="replace"))
        seen = node.exec("cat", f"{TARGET}/before-kill.bin").stdout
        if seen != payload:
            raise node.failed("after SIGKILL to the driver's cgroup the mount reads other bytes")
        status = node.exec("systemctl", "status", "--no-pager", scope, check=False)
        text = status.stdout.decode(errors="replace")
        if status.returncode != 0 or "active (running)" not in text:
            raise node.failed(f"after SIGKILL to the driver's cgroup `systemctl status {scope}` exited "
                              f"{status.returncode}:\n{text}")
        say("ok", f"SIGKILL to the driver's cgroup: the mount still reads and writes, {scope} is active")

        controller, nodes = node.start_driver()
        nodes.NodeUnpublishVolume(pb.NodeUnpublishVolumeRequest(
            volume_id=volume.volume_id, target_path=TARGET), timeout=RPC_TIMEOUT)
        body = client.get_object(Bucket=bucket, Key="pv-check/after-kill.txt")["Body"].read()
        if body != after:
            raise node.failed(f"S3 holds {body!r} for the file written after the kill")
        table = node.exec("cat", "/proc/self/mountinfo").stdout.decode()
        if f" {TARGET} " in table:
            raise node.failed(f"{TARGET} is still mounted after NodeUnpublishVolume")
        if not support.wait_until(lambda: node.exec("systemctl", "is-active", "--quiet", scope,
                                                     check=False).returncode != 0, timeout=30, interval=0.5):
            raise node.failed(f"{scope} is still active after NodeUnpublishVolume")
        listed = node.exec("systemctl", "list-units", "--all", "--no-legend", "--no-pager", "s3pyfs-csi-*")
        if listed.stdout.strip():
            raise node.failed(f"units left after NodeUnpublishVolume: {listed.stdout.decode()}")
        say("ok", "a restarted driver: NodeUnpublishVolume uploaded the data written after the kill, "
                  f"unmounted, and {scope} is gone")

        controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=volume.volume_id, secrets=secrets),
                                timeout=RPC_TIMEOUT)
        left = client.list_objects_v2(Bucket=bucket, Prefix="pv-check/").get("KeyCount", 0)
        if left:
            raise node.failed(f"DeleteVolume left {left} objects under pv-check/")
        log = node.driver_log()
        if server.secret_key in log:
            raise node.failed("the secret key is in the driver's log")
        for marker in support.CRASH_MARKERS:
            if marker in log:
                raise node.failed(f"the driver's log has {marker!r}")
        summary["csi_systemd"] = "scope survived SIGKILL to the driver's cgroup; unpublished by a restarted driver"
        say("ok", "DeleteVolume emptied the prefix; the driver's log has no secret or traceback")
    except grpc.RpcError as exc:
        raise node.failed(f"gRPC {exc.code().name}: {exc.details()}") from None
    finally:
        node.remove()
        shutil.rmtree(sock_dir, ignore_errors=True)
        support.delete_bucket(client, bucket)


def main() -> int:
    import image_check
    args, podman = image_check.command_line(__doc__.split("\n\n")[0])
    summary: dict = {}
    with tempfile.TemporaryDirectory(prefix="s3pyfs-image-check-") as tmp:
        server = support.SeaweedServer(Path(tmp) / "seaweed")
        try:
            server.start()
            check_systemd_mounter(podman, args.image, server, summary, image_check.say, image_check.CheckFailed)
        except image_check.CheckFailed as exc:
            image_check.say("FAIL", str(exc))
            return 1
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
