#!/usr/bin/env python3
"""Run the s3pyfs container image against a local SeaweedFS and check what a user would see.

    image_check.py --image localhost/s3pyfs:0.1.0 [--runtime runc] [--nofile N] [--nproc N]

1. SeaweedFS on 127.0.0.1 (tests/support.py's SeaweedServer, the one the tests use), a bucket.
2. The image's own entrypoint, configured by environment only (S3_BUCKET, S3_URL, AWS_KEY,
   AWS_SECRET_KEY; the keys reach podman through its environment, never its argv), with
   --device /dev/fuse --cap-add SYS_ADMIN --network host.  Waits for `s3pyfs-entrypoint ready`.
3. A file written through the mount inside the container is read back from S3 byte for byte;
   an object put into S3 before the container started is read through the mount.
4. The container's processes: the entrypoint (PID 1) and s3pyfs, nothing else long-lived.
5. `podman stop` (SIGTERM): exit code 0, the log has no traceback.
6. The image holds no compiler; its size.
7. The CSI driver from the same image: `s3pyfs csi --help`, and when the driver is there, it
   is started on a unix socket and answers GetPluginInfo (client run inside the container).
8. The driver's `--mounter systemd-run` path under systemd as the container's PID 1: publish,
   write, SIGKILL to the driver's cgroup, the mount and its scope live on, unpublish by a new driver
   (scripts/image_check_systemd.py).

Prints one line per step ("ok ..." / "FAIL ...") and a JSON summary; exit status 1 on failure.
Used by scripts/image.sh and tests/test_image.py.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "scripts"))

import support  # noqa: E402  (SeaweedServer, wait_until)
from image_check_systemd import check_systemd_mounter  # noqa: E402

DRIVER = "csi.s3pyfs.io"
COMPILERS = ("gcc", "cc", "c++", "g++", "clang", "make", "ld")


class CheckFailed(Exception):
    pass


class Podman:
    def __init__(self, runtime: str, nofile: int, nproc: int):
        self.base = ["podman", "--runtime", runtime] if runtime else ["podman"]
        self.ulimits = ["--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", f"nproc={nproc}:{nproc}"]

    def run(self, *args: str, timeout: float = 300, check: bool = True, env: dict | None = None,
            input: bytes | None = None) -> subprocess.CompletedProcess:
        proc = subprocess.run(self.base + list(args), capture_output=True, timeout=timeout,
                              env=env, input=input, stdin=None if input is not None else subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise CheckFailed(f"podman {' '.join(args[:3])} ... exited {proc.returncode}: "
                              f"{proc.stderr.decode(errors='replace')[-2000:]}")
        return proc


def say(status: str, message: str) -> None:
    print(f"{status} {message}", flush=True)


def container_processes(podman: Podman, name: str) -> list[tuple[int, str]]:
    """(pid in the container, command line) of every process in it, read from its /proc."""
    script = ("import os\n"
              "for p in sorted(os.listdir('/proc'), key=lambda s: (len(s), s)):\n"
              "    if p.isdigit() and int(p) != os.getpid():\n"
              "        try: a = open(f'/proc/{p}/cmdline','rb').read()\n"
              "        except OSError: continue\n"
              "        print(p, a.replace(b'\\0', b' ').decode().strip())\n")
    out = podman.run("exec", name, "python3", "-c", script).stdout.decode()
    return [(int(line.split(" ", 1)[0]), line.split(" ", 1)[1] if " " in line else "")
            for line in out.splitlines() if line.strip()]


def check_mount(podman: Podman, image: str, server, summary: dict) -> None:
    client = server.client()
    bucket = f"image-check-{uuid.uuid4().hex[:10]}"
    client.create_bucket(Bucket=bucket)
    # Put before the mount starts: what the mount shows of it does not depend on its caches.
    client.put_object(Bucket=bucket, Key="dir/from-s3.txt", Body=b"put into S3\n")
    name = f"s3pyfs-image-check-{uuid.uuid4().hex[:8]}"
    env = dict(os.environ, AWS_KEY=server.access_key, AWS_SECRET_KEY=server.secret_key)
    started = time.monotonic()
    podman.run("run", "-d", "--name", name, "--network", "host",
               "--device", "/dev/fuse", "--cap-add", "SYS_ADMIN", *podman.ulimits,
               "-e", f"S3_BUCKET={bucket}", "-e", f"S3_URL={server.endpoint}",
               "-e", "AWS_KEY", "-e", "AWS_SECRET_KEY", image, env=env)
    try:
        def ready() -> bool:
            state = podman.run("inspect", "--format", "{{.State.Running}}", name, check=False)
            if state.stdout.decode().strip() != "true":
                raise CheckFailed("the container stopped before the mount was ready:\n"
                                  + podman.run("logs", name, check=False).stderr.decode()[-3000:])
            return podman.run("exec", name, "s3pyfs-entrypoint", "ready", check=False).returncode == 0

        if not support.wait_until(ready, timeout=120, interval=0.5):
            raise CheckFailed("the mount was not ready within 120 s:\n"
                              + podman.run("logs", name, check=False).stderr.decode()[-3000:])
        summary["mount_ready_s"] = round(time.monotonic() - started, 1)
        say("ok", f"container {name} mounted bucket {bucket} at /mnt/s3 "
                  f"({summary['mount_ready_s']} s after podman run)")

        payload = os.urandom(3 * 1024 * 1024 + 123)
        podman.run("exec", "-i", name, "sh", "-c", "cat > /mnt/s3/from-container.bin", input=payload)
        body = client.get_object(Bucket=bucket, Key="from-container.bin")["Body"].read()
        if hashlib.sha256(body).digest() != hashlib.sha256(payload).digest():
            raise CheckFailed(f"S3 holds {len(body)} other bytes than the {len(payload)} written")
        say("ok", f"{len(payload)} bytes written through the container's mount are in S3")

        seen = podman.run("exec", name, "cat", "/mnt/s3/dir/from-s3.txt").stdout
        if seen != b"put into S3\n":
            raise CheckFailed(f"the mount shows {seen!r} for an object put into S3")
        say("ok", "an object put into S3 reads back through the container's mount")

        procs = container_processes(podman, name)
        summary["processes"] = [cmd for _pid, cmd in procs]
        def is_s3pyfs(cmd: str) -> bool:     # "s3pyfs ..." or "python3 .../s3pyfs ..."
            return any(os.path.basename(word) == "s3pyfs" for word in cmd.split()[:2])

        others = [cmd for pid, cmd in procs if pid != 1 and not is_s3pyfs(cmd)]
        if not procs or procs[0][0] != 1 or "s3pyfs-entrypoint" not in procs[0][1] or others:
            raise CheckFailed(f"unexpected processes in the container: {procs}")
        if len(procs) != 2:
            raise CheckFailed(f"expected the entrypoint and one s3pyfs process: {procs}")
        say("ok", "processes: " + " | ".join(f"{pid}: {cmd}" for pid, cmd in procs))

        secrets_seen = [cmd for cmd in summary["processes"] if server.secret_key in cmd]
        if secrets_seen:
            raise CheckFailed("the secret key is on a command line in the container")

        stop_started = time.monotonic()
        podman.run("stop", "-t", "120", name, timeout=180)
        code = podman.run("inspect", "--format", "{{.State.ExitCode}}", name).stdout.decode().strip()
        logs = podman.run("logs", name, check=False)
        text = (logs.stdout + logs.stderr).decode(errors="replace")
        summary["stop_s"] = round(time.monotonic() - stop_started, 1)
        if code != "0":
            raise CheckFailed(f"the container exited {code} after SIGTERM:\n{text[-3000:]}")
        for marker in support.CRASH_MARKERS:
            if marker in text:
                raise CheckFailed(f"the container log has {marker!r}:\n{text[-3000:]}")
        if server.secret_key in text:
            raise CheckFailed("the secret key is in the container log")
        say("ok", f"podman stop: exit code 0 after {summary['stop_s']} s, clean log")
    finally:
        podman.run("rm", "-f", "-t", "0", name, check=False, timeout=120)
        support.delete_bucket(client, bucket)


def check_image(podman: Podman, image: str, summary: dict) -> None:
    size = int(podman.run("image", "inspect", "--format", "{{.Size}}", image).stdout.decode())
    summary["image_bytes"] = size
    probe = " ".join(f"command -v {c};" for c in COMPILERS)
    found = podman.run("run", "--rm", *podman.ulimits, "--network", "none", "--entrypoint", "sh",
                       image, "-c", probe + " true").stdout.decode().split()
    if found:
        raise CheckFailed(f"the runtime image holds build tools: {found}")
    say("ok", f"image {image}: {size / 1e6:.0f} MB, no compiler or make")


GET_PLUGIN_INFO = """
import grpc, sys
from s3pyfs.csi import csi_pb2, csi_pb2_grpc
channel = grpc.insecure_channel("unix:///csi/csi.sock")
grpc.channel_ready_future(channel).result(timeout=60)
info = csi_pb2_grpc.IdentityStub(channel).GetPluginInfo(csi_pb2.GetPluginInfoRequest(), timeout=30)
print(info.name, info.vendor_version)
"""


def check_csi(podman: Podman, image: str, summary: dict) -> None:
    in_tree = (ROOT / "s3pyfs" / "csi" / "__init__.py").exists()
    in_image = podman.run("run", "--rm", *podman.ulimits, "--network", "none",
                          "--entrypoint", "/opt/s3pyfs/bin/python", image, "-c", "import s3pyfs.csi",
                          check=False).returncode == 0
    if not in_tree and not in_image:
        summary["csi"] = "not in this source tree (no s3pyfs/csi): not checked"
        say("NOTE", "`s3pyfs csi` is not in this source tree yet; the CSI driver was not checked")
        return
    if not in_image:
        raise CheckFailed("the source tree has s3pyfs/csi but the image cannot import s3pyfs.csi")
    help_run = podman.run("run", "--rm", *podman.ulimits, "--network", "none",
                          "--entrypoint", "s3pyfs", image, "csi", "--help", check=False)
    text = (help_run.stdout + help_run.stderr).decode(errors="replace")
    if help_run.returncode != 0 or "--endpoint" not in text:
        raise CheckFailed(f"`s3pyfs csi --help` exited {help_run.returncode}: {text[-2000:]}")
    say("ok", "`s3pyfs csi --help` runs from the image")
    name = f"s3pyfs-csi-check-{uuid.uuid4().hex[:8]}"
    podman.run("run", "-d", "--name", name, *podman.ulimits, "--network", "none",
               "--entrypoint", "s3pyfs", image,
               "csi", "--endpoint", "unix:///csi/csi.sock", "--node-id", "image-check")
    try:
        answer = podman.run("exec", name, "/opt/s3pyfs/bin/python", "-c", GET_PLUGIN_INFO,
                            check=False, timeout=120)
        if answer.returncode != 0:
            logs = podman.run("logs", name, check=False)
            raise CheckFailed("GetPluginInfo failed: " + answer.stderr.decode(errors="replace")[-2000:]
                              + "\ndriver log:\n" + (logs.stdout + logs.stderr).decode(errors="replace")[-2000:])
        fields = answer.stdout.decode().split()
        if len(fields) != 2 or fields[0] != DRIVER:
            raise CheckFailed(f"GetPluginInfo answered {answer.stdout!r}")
        summary["csi"] = f"GetPluginInfo: {fields[0]} {fields[1]}"
        say("ok", f"CSI driver from the image answers GetPluginInfo: {fields[0]} {fields[1]}")
    finally:
        podman.run("rm", "-f", "-t", "0", name, check=False, timeout=120)


def csi_systemd(podman: Podman, image: str, server, summary: dict) -> None:
    if not summary.get("csi", "").startswith("GetPluginInfo"):
        return                      # no driver in this tree (check_csi said so)
    check_systemd_mounter(podman, image, server, summary, say, CheckFailed)


def command_line(description: str) -> tuple[argparse.Namespace, Podman]:
    """The options both image checks take (--image, --runtime, --nofile, --nproc) and the
    Podman they describe."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--image", required=True)
    parser.add_argument("--runtime", default="runc")
    parser.add_argument("--nofile", type=int, default=20000)
    parser.add_argument("--nproc", type=int, default=20000)
    args = parser.parse_args()
    return args, Podman(args.runtime, args.nofile, args.nproc)


def main() -> int:
    args, podman = command_line(__doc__.split("\n\n")[0])
    summary: dict = {"image": args.image}
    timings: dict = {}
    with tempfile.TemporaryDirectory(prefix="s3pyfs-image-check-") as tmp:
        server = support.SeaweedServer(Path(tmp) / "seaweed")
        try:
            started = time.monotonic()
            server.start()
            timings["seaweedfs_start_s"] = round(time.monotonic() - started, 1)
            for step, fn in (("mount", lambda: check_mount(podman, args.image, server, summary)),
                             ("image", lambda: check_image(podman, args.image, summary)),
                             ("csi", lambda: check_csi(podman, args.image, summary)),
                             ("csi_systemd", lambda: csi_systemd(podman, args.image, server, summary))):
                started = time.monotonic()
                fn()
                timings[f"{step}_s"] = round(time.monotonic() - started, 1)
        except (CheckFailed, subprocess.TimeoutExpired) as exc:
            say("FAIL", str(exc))
            return 1
        finally:
            server.stop()
    summary["timings"] = timings
    print("summary " + json.dumps(summary, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
