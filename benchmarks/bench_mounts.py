"""Mounting s3pyfs and s3fs-fuse for the benchmark, with bounded waits.

A ``Mounter`` knows how to mount one bucket in the foreground (the process we
start is the filesystem process, so its /proc entry gives peak RSS and CPU),
unmount it, and, when it stops answering, tear it down by force: abort the
FUSE connection, kill the process, detach the mount point lazily.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import bench_server  # noqa: F401  (puts tests/ on sys.path)
import support

REPO = Path(__file__).resolve().parent.parent


class MountFailed(RuntimeError):
    pass


# support.mount_entry/force_unmount resolve the path with realpath(), which
# stats the mount point itself: a FUSE request that never returns when the
# mounter is hung.  These take the path as given (already resolved) and only
# read /proc/self/mountinfo.
def mount_entry(path: Path) -> dict | None:
    found = None
    for entry in support.mountinfo():
        if entry["mountpoint"] == str(path):
            found = entry
    return found


def force_unmount(path: Path) -> None:
    """Lazy unmount, whatever the state of the FUSE process."""
    for cmd in (["fusermount3", "-u", "-z", str(path)], ["umount", "-l", str(path)]):
        if mount_entry(path) is None:
            return
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=30)


def fuse_connection(path: Path) -> Path | None:
    """/sys/fs/fuse/connections/N of the FUSE mount at ``path``, if any."""
    entry = mount_entry(path)
    if entry is None:
        return None
    fields = entry["line"].split()
    try:
        minor = fields[2].split(":")[1]
    except IndexError:
        return None
    conn = Path("/sys/fs/fuse/connections") / minor
    return conn if conn.exists() else None


def proc_status_kib(pid: int, field: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def proc_cpu_seconds(pid: int) -> float | None:
    """user + system CPU of a process (all its threads)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


class Mounter:
    """One kind of mount: 's3pyfs', 's3fs', 's3fs-cache' or 's3pyfs-cache'."""

    def __init__(self, kind: str, bucket: str, endpoint: str, passwd: Path, workdir: Path,
                 extra_options: str = "", source_dir: Path | None = None):
        self.kind = kind
        # s3pyfs from this directory (an exported revision) instead of the
        # working tree; None = the repository itself.
        self.source_dir = Path(source_dir) if source_dir else None
        self.bucket = bucket
        self.endpoint = endpoint
        self.passwd = passwd
        self.workdir = Path(workdir)
        self.extra_options = extra_options
        self.path = Path(os.path.realpath(self.workdir / "mnt"))
        self.cache_dir = self.workdir / "s3fs-cache"
        self.log_path = self.workdir / f"{kind}.log"
        self.proc: subprocess.Popen | None = None
        self.mounts = 0

    # -- commands -------------------------------------------------------------
    def options(self) -> str:
        opts = [f"url={self.endpoint}", "use_path_request_style", f"passwd_file={self.passwd}"]
        if self.kind.endswith("-cache"):
            opts.append(f"use_cache={self.cache_dir}")
        if self.extra_options:
            opts.append(self.extra_options)
        return ",".join(opts)

    def command(self) -> list[str]:
        if self.kind.startswith("s3pyfs"):
            return [sys.executable, "-m", "s3pyfs", self.bucket, str(self.path), "-f",
                    "-o", self.options()]
        s3fs = shutil.which("s3fs")
        if not s3fs:
            raise MountFailed("s3fs is not installed (scripts/bootstrap.sh installs it)")
        return [s3fs, self.bucket, str(self.path), "-f", "-o", self.options()]

    def env(self) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(AWS_EC2_METADATA_DISABLED="true", AWS_CONFIG_FILE=os.devnull,
                   AWS_SHARED_CREDENTIALS_FILE=os.devnull, PYTHONUNBUFFERED="1",
                   PYTHONFAULTHANDLER="1")
        if self.source_dir is not None:
            env["PYTHONPATH"] = str(self.source_dir)
        return env

    @property
    def cwd(self) -> Path:
        # `python -m` puts the working directory first on sys.path.
        return self.source_dir or REPO

    def version(self) -> str:
        try:
            if self.kind.startswith("s3pyfs"):
                out = subprocess.run([sys.executable, "-c", "import s3pyfs; print(s3pyfs.__version__)"],
                                     capture_output=True, text=True, timeout=30, cwd=self.cwd,
                                     env=self.env()).stdout.strip()
                if self.source_dir is not None:
                    rev = (self.source_dir / "REVISION").read_text().strip()
                    return f"{out} (git {rev})"
                rev = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"],
                                     capture_output=True, text=True, timeout=30).stdout.strip()
                dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "s3pyfs"],
                                       capture_output=True, text=True, timeout=30).stdout.strip()
                where = "working tree" + (", s3pyfs/ modified" if dirty else "")
                return f"{out} (git {rev}, {where})" if rev else out
            out = subprocess.run(["s3fs", "--version"], capture_output=True, text=True, timeout=30)
            first = (out.stdout or out.stderr).splitlines()[0]
            return first.replace("Amazon Simple Storage Service File System ", "")
        except (OSError, subprocess.TimeoutExpired, IndexError):
            return "?"

    # -- life cycle -----------------------------------------------------------
    @property
    def mounted(self) -> bool:
        return mount_entry(self.path) is not None

    def mount(self, timeout: float = 60.0, fresh_cache: bool = True) -> None:
        if self.proc is not None:
            raise MountFailed("already mounted")
        if self.mounted:
            force_unmount(self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        if self.kind.endswith("-cache") and fresh_cache:
            shutil.rmtree(self.cache_dir, ignore_errors=True)
            self.cache_dir.mkdir(parents=True)
        self.mounts += 1
        with open(self.log_path, "ab") as log:
            log.write(f"=== mount {self.mounts}: {' '.join(self.command())}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(self.command(), env=self.env(), cwd=self.cwd,
                                         stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self.mounted:
                try:
                    # The mount table entry appears before the process serves
                    # requests on some mounters; one stat proves it answers.
                    self._bounded_stat(max(1.0, deadline - time.monotonic()))
                    return
                except MountFailed:
                    pass
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.proc = None
                raise MountFailed(f"{self.kind} exited with code {code} before the mount was "
                                  f"ready; log: {self.log_path}\n{support.tail(self.log_path, 15)}")
            if time.monotonic() >= deadline:
                self.kill()
                raise MountFailed(f"{self.kind} did not mount within {timeout:.0f}s; "
                                  f"log: {self.log_path}")
            time.sleep(0.05)

    def _bounded_stat(self, timeout: float) -> None:
        try:
            subprocess.run(["stat", "-c", "%i", str(self.path)], capture_output=True,
                           timeout=timeout, check=True, stdin=subprocess.DEVNULL)
        except (subprocess.SubprocessError, OSError) as exc:
            raise MountFailed(str(exc)) from None

    def peak_rss_kib(self) -> int | None:
        return proc_status_kib(self.proc.pid, "VmHWM") if self.proc else None

    def cpu_seconds(self) -> float | None:
        return proc_cpu_seconds(self.proc.pid) if self.proc else None

    def unmount(self, timeout: float = 120.0) -> int | None:
        """fusermount3 -u and wait for the process to exit (it may drain data)."""
        if self.proc is None:
            return None
        deadline = time.monotonic() + timeout
        while self.mounted and time.monotonic() < deadline:
            try:
                result = subprocess.run(["fusermount3", "-u", str(self.path)],
                                        capture_output=True, text=True, timeout=30,
                                        stdin=subprocess.DEVNULL)
            except subprocess.TimeoutExpired:
                break
            if result.returncode == 0:
                break
            time.sleep(0.2)      # busy: a killed reader may still hold a file
        try:
            code = self.proc.wait(max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.kill()
            raise MountFailed(f"{self.kind} did not exit within {timeout:.0f}s of unmount; "
                              "killed it") from None
        self.proc = None
        if self.mounted:
            force_unmount(self.path)
        return code

    def kill(self) -> None:
        """Tear down a mount whose process may be hung."""
        conn = fuse_connection(self.path)
        if conn is not None:
            with contextlib.suppress(OSError):
                (conn / "abort").write_text("1")
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
            self.proc = None
        force_unmount(self.path)
