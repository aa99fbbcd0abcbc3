"""CSI Node service: NodePublishVolume / NodeUnpublishVolume and the driver's mount records.

Responsibility: one s3pyfs mount process per published target path, started so that it
outlives the driver, and found again by a restarted driver.
  * The mount process is s3pyfs's own daemon (no -f): its parent returns once the mount is
    live (readiness pipe), the daemon has called setsid() and is nobody's child the driver
    waits for, so `kill -9` of the driver leaves it serving.  With `--mounter systemd-run`
    (auto: when systemd is PID 1) it starts inside `systemd-run --scope`, a scope unit of
    its own outside the driver's cgroup, which survives a restart of the driver's container.
  * Secrets reach it through its environment only (AWS_ACCESS_KEY_ID, ...), never argv;
    its environment is built from nothing but PATH/LANG and the secrets.
  * Records: STATE/mounts/<sha256 of target>.json (0600 in a 0700 directory, no secrets)
    name the volume, target and options of each publication.  A restarted driver reads
    them and /proc/self/mountinfo (fuse.s3pyfs at the target): live ones are kept, others
    dropped.  Unpublish needs neither: it finds the mount's process through the statistics
    file s3pyfs keeps for it (status.load), sends SIGTERM (upload dirty data, then unmount)
    and waits for the mount to leave the mount table and the process to end.
  * A target whose s3pyfs process is gone ("Transport endpoint is not connected") is
    detached (umount -l) by unpublish, and by publish, which then mounts it afresh.
Invariants: the mount table is read, never the target path stat()ed while it might be a
dead FUSE mount; publish and unpublish of one target never run at once (ABORTED).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import grpc

from .. import kernel, status
from . import csi_pb2 as pb
from . import csi_pb2_grpc as pbg
from .volumes import CsiError, check_capability, invalid, mount_flags, parse_secrets, parse_volume_id, scrub

log = logging.getLogger("s3pyfs.csi")

FSTYPE = "fuse.s3pyfs"
MOUNT_TIMEOUT = 120.0          # seconds for s3pyfs to report the mount live
EXIT_CODES = {2: grpc.StatusCode.INVALID_ARGUMENT, 3: grpc.StatusCode.UNAUTHENTICATED,
              4: grpc.StatusCode.UNAVAILABLE, 5: grpc.StatusCode.INTERNAL}


def mounted(target: str) -> str | None:
    """The filesystem type mounted at `target` (mount table only), or None."""
    entry = kernel.mount_entry(target)
    return entry[1] if entry else None


def systemd_is_init() -> bool:
    return os.path.isdir("/run/systemd/system") and shutil.which("systemd-run") is not None


class Records:
    """The driver's private record of what it published (no secrets)."""

    def __init__(self, state_dir: str):
        self.dir = os.path.join(state_dir, "mounts")
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        os.chmod(state_dir, 0o700)
        os.chmod(self.dir, 0o700)

    def path(self, target: str) -> str:
        return os.path.join(self.dir, hashlib.sha256(target.encode()).hexdigest() + ".json")

    def get(self, target: str) -> dict | None:
        try:
            with open(self.path(target)) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def put(self, record: dict) -> None:
        path = self.path(record["target_path"])
        tmp = path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(record, f)
        os.replace(tmp, path)

    def drop(self, target: str) -> None:
        try:
            os.unlink(self.path(target))
        except FileNotFoundError:
            pass

    def all(self) -> list[dict]:
        found = []
        for name in sorted(os.listdir(self.dir)):
            if name.endswith(".json"):
                try:
                    with open(os.path.join(self.dir, name)) as f:
                        found.append(json.load(f))
                except (OSError, ValueError):
                    continue
        return found


class Node(pbg.NodeServicer):

    def __init__(self, node_id: str, state_dir: str, mounter: str = "auto", unpublish_timeout: float = 600.0):
        self.node_id = node_id
        self.state_dir = os.path.abspath(state_dir)
        self.records = Records(self.state_dir)
        # the mounts' statistics files (their pids) live in the driver's state directory, not in
        # /run, which a restarted driver container would not see again
        self.run_dir = os.path.join(self.state_dir, "run")
        os.makedirs(self.run_dir, mode=0o700, exist_ok=True)
        os.environ["S3PYFS_RUN_DIR"] = self.run_dir
        self.use_systemd = mounter == "systemd-run" or (mounter == "auto" and systemd_is_init())
        self.unpublish_timeout = unpublish_timeout
        self._busy: set[str] = set()
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ start-up
    def recover(self) -> list[dict]:
        """Mounts of an earlier driver: keep the records of live ones, drop the rest."""
        live = []
        for record in self.records.all():
            target = record.get("target_path", "")
            if mounted(target) == FSTYPE:
                stats = status.load(target) or {}
                log.info("found published volume %s at %s (s3pyfs pid %s)", record.get("volume_id"), target,
                         stats.get("pid", "unknown"))
                live.append(record)
            else:
                log.info("volume %s at %s is no longer mounted; record dropped", record.get("volume_id"), target)
                self.records.drop(target)
        return live

    # ------------------------------------------------------------------ one call per target at a time
    def _claim(self, target: str) -> None:
        with self._lock:
            if target in self._busy:
                raise CsiError(grpc.StatusCode.ABORTED, f"an operation on {target} is in progress")
            self._busy.add(target)

    def _release(self, target: str) -> None:
        with self._lock:
            self._busy.discard(target)

    # ------------------------------------------------------------------ publish
    def NodePublishVolume(self, request, context):
        volume = parse_volume_id(request.volume_id)
        target = request.target_path
        if not target:
            raise invalid("target_path is missing")
        if not os.path.isabs(target):
            raise invalid("target_path must be absolute")
        target = os.path.normpath(target)
        if not request.HasField("volume_capability"):
            raise invalid("volume_capability is missing")
        check_capability(request.volume_capability)
        ctx = dict(request.volume_context)
        options = [o for o in (ctx.get("options", ""), mount_flags(request.volume_capability)) if o]
        readonly = request.readonly or request.volume_capability.access_mode.mode in (
            pb.VolumeCapability.AccessMode.SINGLE_NODE_READER_ONLY, pb.VolumeCapability.AccessMode.MULTI_NODE_READER_ONLY)
        wanted = {"volume_id": str(volume), "target_path": target, "readonly": readonly, "options": ",".join(options)}
        self._claim(target)
        try:
            fstype = mounted(target)
            if fstype == FSTYPE and serving_pid(target) is None:
                log.warning("%s is a dead s3pyfs mount (its process is gone): detaching it and mounting again", target)
                self._detach(target)
                fstype = mounted(target)
            if fstype == FSTYPE:
                had = self.records.get(target)
                if had is None or all(had.get(k) == v for k, v in wanted.items()):
                    log.info("NodePublishVolume %s at %s: already mounted", volume, target)
                    return pb.NodePublishVolumeResponse()
                raise CsiError(grpc.StatusCode.ALREADY_EXISTS,
                               f"{target} is published with another volume, options or readonly flag")
            if fstype is not None:
                raise CsiError(grpc.StatusCode.FAILED_PRECONDITION, f"{target} is already a {fstype} mount")
            secrets = parse_secrets(request.secrets)
            self._make_target(target)
            self._mount(volume, target, secrets, readonly, options, ctx.get("pathStyle"), request.secrets)
            self.records.put(wanted)
            log.info("NodePublishVolume %s at %s: mounted%s", volume, target, " read-only" if readonly else "")
            return pb.NodePublishVolumeResponse()
        finally:
            self._release(target)

    @staticmethod
    def _make_target(target: str) -> None:
        parent = os.path.dirname(target)
        if not os.path.isdir(parent):
            raise CsiError(grpc.StatusCode.FAILED_PRECONDITION, f"the parent of {target} does not exist")
        try:
            os.mkdir(target, 0o750)
        except FileExistsError:
            if not os.path.isdir(target):
                raise CsiError(grpc.StatusCode.FAILED_PRECONDITION, f"{target} exists and is not a directory") from None

    def _mount(self, volume, target: str, secrets, readonly: bool, options: list[str], path_style: str | None,
               raw_secrets) -> None:
        data_dir = os.path.join(self.state_dir, "data")
        logs = os.path.join(self.state_dir, "logs")
        for d in (data_dir, logs):
            os.makedirs(d, mode=0o700, exist_ok=True)
        name = hashlib.sha256(target.encode()).hexdigest()[:16]
        opts = ["allow_other", f"tmpdir={data_dir}", f"logfile={os.path.join(logs, name + '.log')}", "nonempty"]
        if path_style == "true" or (path_style is None and secrets.plain_http):
            opts.append("use_path_request_style")
        if readonly:
            opts.append("ro")
        opts += options
        cmd = [sys.executable, "-m", "s3pyfs", volume.source, target, "-o", ",".join(opts)]
        if self.use_systemd:
            cmd = ["systemd-run", "--scope", "--collect", "--quiet", f"--unit=s3pyfs-csi-{name}",
                   "--description=s3pyfs CSI volume", *cmd]
        env = {k: os.environ[k] for k in ("PATH", "LANG", "PYTHONPATH", "TZ") if k in os.environ}
        env.update(secrets.environment(), AWS_EC2_METADATA_DISABLED="true", AWS_CONFIG_FILE=os.devnull,
                   AWS_SHARED_CREDENTIALS_FILE=os.devnull, S3PYFS_RUN_DIR=self.run_dir)
        try:
            done = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                                  timeout=MOUNT_TIMEOUT, cwd="/")
        except subprocess.TimeoutExpired:
            raise CsiError(grpc.StatusCode.DEADLINE_EXCEEDED,
                           f"s3pyfs did not report {target} mounted within {MOUNT_TIMEOUT:.0f} s") from None
        if done.returncode != 0:
            text = (done.stderr or done.stdout).decode("utf-8", "replace").strip().splitlines()
            reason = scrub(text[-1] if text else f"exit {done.returncode}", raw_secrets)
            try:
                os.rmdir(target)
            except OSError:
                pass
            code = EXIT_CODES.get(done.returncode, grpc.StatusCode.INTERNAL)
            if done.returncode == 4 and "does not exist" in reason:
                code = grpc.StatusCode.NOT_FOUND          # the volume's bucket is gone
            raise CsiError(code, f"mounting {volume} failed: {reason}")

    # ------------------------------------------------------------------ unpublish
    def NodeUnpublishVolume(self, request, context):
        parse_volume_id(request.volume_id)
        if not request.target_path:
            raise invalid("target_path is missing")
        target = os.path.normpath(request.target_path)
        self._claim(target)
        try:
            if mounted(target) is not None:
                self._unmount(target)
            try:
                os.rmdir(target)
            except FileNotFoundError:
                pass
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    raise CsiError(grpc.StatusCode.INTERNAL, f"cannot remove {target}: {exc.strerror}") from None
            self.records.drop(target)
            log.info("NodeUnpublishVolume %s at %s: done", request.volume_id, target)
            return pb.NodeUnpublishVolumeResponse()
        finally:
            self._release(target)

    def _unmount(self, target: str) -> None:
        """SIGTERM to the mount's process: it uploads dirty data, then unmounts; wait for
        both.  A mount whose process is gone (dead FUSE mount) is detached."""
        pid = serving_pid(target) if mounted(target) == FSTYPE else None
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + self.unpublish_timeout
            while (_alive(pid) or mounted(target) is not None) and time.monotonic() < deadline:
                time.sleep(0.1)
            if mounted(target) is not None:
                raise CsiError(grpc.StatusCode.DEADLINE_EXCEEDED,
                               f"s3pyfs at {target} is still uploading data after {self.unpublish_timeout:.0f} s")
            if _alive(pid):
                log.warning("s3pyfs pid %d unmounted %s but has not exited yet", pid, target)
            return
        log.warning("%s is mounted but its s3pyfs process is gone: detaching the mount", target)
        self._detach(target)

    @staticmethod
    def _detach(target: str) -> None:
        done = subprocess.run(["umount", "-l", target], capture_output=True)
        if done.returncode != 0 and mounted(target) is not None:
            raise CsiError(grpc.StatusCode.INTERNAL, f"cannot unmount {target}: "
                           f"{done.stderr.decode('utf-8', 'replace').strip()}")

    # ------------------------------------------------------------------ info
    def NodeGetInfo(self, request, context):
        return pb.NodeGetInfoResponse(node_id=self.node_id)

    def NodeGetCapabilities(self, request, context):
        return pb.NodeGetCapabilitiesResponse(capabilities=[])


def serving_pid(target: str) -> int | None:
    """The live s3pyfs process serving `target`, from its statistics file, or None."""
    pid = (status.load(target) or {}).get("pid")
    return pid if isinstance(pid, int) and _alive(pid) else None


def _alive(pid: int) -> bool:
    if not status.alive(pid):
        return False
    try:          # a zombie (our own unreaped child) counts as gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
