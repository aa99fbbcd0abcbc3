"""Helpers shared by the deploy/ tests: paths, environments, waiting for mounts."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import support

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
VENV_BIN = Path(sys.executable).parent
S3PYFS_BIN = str(VENV_BIN / "s3pyfs")


def clean_env(**extra: str) -> dict:
    """This process's environment without AWS_* settings, with the tool paths first."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        PATH=f"{VENV_BIN}:{env.get('PATH', '/usr/bin:/bin')}",
        AWS_EC2_METADATA_DISABLED="true",
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None,
             log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: process exited with {proc.returncode}\n"
                                 + (support.tail(log) if log else ""))
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f}s\n" + (support.tail(log) if log else ""))
        time.sleep(0.05)


def fstype(path: os.PathLike | str) -> str | None:
    entry = support.mount_entry(path)
    return entry["fstype"] if entry else None


def mounts_under(path: os.PathLike | str) -> list[dict]:
    base = os.path.realpath(path) + os.sep
    return [e for e in support.mountinfo() if e["mountpoint"].startswith(base)]


def s3pyfs_pids_for(point: os.PathLike | str) -> list[int]:
    """PIDs of processes whose command line contains `point` as an argument."""
    point = str(point)
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            args = (entry / "cmdline").read_bytes().split(b"\0")
            if point.encode() in args and any(b"s3pyfs" in a for a in args):
                pids.append(int(entry.name))
    return pids


def cmdlines_of_tree(pid: int) -> list[str]:
    """Command lines of `pid` and all its descendants."""
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        with contextlib.suppress(OSError):
            out.append((Path(f"/proc/{current}/cmdline").read_bytes()).replace(b"\0", b" ").decode())
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
    return out
