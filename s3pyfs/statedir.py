"""Where a mount keeps local state, and proof that no other local user can steer it.

Responsibility: choose the per-user directory tree that holds dirty data, the
journal (journal.py) and the disk cache (disk_cache.py), create the levels
s3pyfs owns, check every level before it is used, and hand out directory file
descriptors, so that every later open is relative to a checked directory and
a symlink or directory swapped in afterwards is never followed.

Layout (the "base" is private to the mounting uid):
    default     /var/lib/s3pyfs (root); $XDG_STATE_HOME/s3pyfs, else
                ~/.local/state/s3pyfs (other users)
    tmpdir=T    T/s3pyfs-<uid>
    use_cache=D D/s3pyfs-<uid>        (use_cache wins over tmpdir)
    <base>/dirty/<store>/<instance>/  journal.py
    <base>/blocks/                    disk_cache.py (use_cache= only)

Invariants:
  * A level s3pyfs owns (the base and everything below it) is a real
    directory (never a symlink: opened with O_NOFOLLOW and checked with fstat),
    owned by the mounting uid and not writable by group or others.  s3pyfs
    creates such levels 0700.  Anything else is refused with
    `StateDirError` (exit 5) naming the path and what to do.
  * The directory the base lives in (T, D, /var/lib, ~/.local/state) may be
    shared, but then it must be sticky (like /tmp and /var/tmp), so another
    user cannot rename or replace the base; it must be owned by root or the
    mounting uid.
  * Nothing here deletes anything.
"""

from __future__ import annotations

import errno
import os
import stat

from .errors import StateDirError

PREFIX = "s3pyfs-"
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def default_base(uid: int | None = None) -> str:
    """The state directory of `uid` (default: the calling user) when neither
    tmpdir= nor use_cache= is given."""
    uid = os.geteuid() if uid is None else uid
    if uid == 0:
        return "/var/lib/s3pyfs"
    state = os.environ.get("XDG_STATE_HOME")
    if not state or not os.path.isabs(state):
        state = os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(state, "s3pyfs")


def base_for(use_cache: str | None, tmpdir: str | None) -> str:
    """The private base directory of this mount's local state."""
    shared = use_cache or tmpdir
    if shared:
        return os.path.join(os.path.abspath(shared), f"{PREFIX}{os.geteuid()}")
    return default_base()


class Dir:
    """A checked directory: an open fd (all work goes through it) and its path for messages."""

    def __init__(self, fd: int, path: str):
        self.fd = fd
        self.path = path

    def sub(self, name: str, create: bool = True) -> Dir:
        """The private subdirectory `name` (created 0700 when missing and `create`)."""
        return Dir(open_private(self.fd, name, os.path.join(self.path, name), create), os.path.join(self.path, name))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def open_base(base: str) -> Dir:
    """Create (when missing) and check the private base directory; its parent is checked
    too and, for the default base, created 0700 (a fresh ~/.local/state)."""
    base = os.path.abspath(base)
    parent, name = os.path.split(base)
    if not os.path.isdir(parent):
        if os.path.exists(parent) or os.path.islink(parent):
            raise StateDirError(f"{parent} is not a directory; choose another directory with tmpdir= or use_cache=")
        try:
            os.makedirs(parent, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise StateDirError(f"cannot create {parent}: {exc.strerror}") from None
    try:
        parent_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise StateDirError(f"cannot open {parent}: {exc.strerror}") from None
    try:
        check_shared_parent(os.fstat(parent_fd), parent)
        return Dir(open_private(parent_fd, name, base, create=True), base)
    finally:
        os.close(parent_fd)


def check_shared_parent(st: os.stat_result, path: str) -> None:
    """The directory the base lives in: owned by root or us; if others may write to it,
    it must be sticky, else they could move our base away and put their own there."""
    uid = os.geteuid()
    if st.st_uid not in (0, uid):
        raise StateDirError(f"{path} belongs to uid {st.st_uid}, who could replace s3pyfs's files there; "
                            f"choose a directory owned by uid {uid} or root with tmpdir= or use_cache=")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not st.st_mode & stat.S_ISVTX:
        raise StateDirError(f"{path} is writable by other users and not sticky (mode "
                            f"{stat.S_IMODE(st.st_mode):04o}); run chmod +t {path} or chmod go-w {path}, "
                            f"or choose another directory with tmpdir= or use_cache=")


def open_private(parent_fd: int, name: str, path: str, create: bool = True) -> int:
    """fd of the directory `name` in `parent_fd`, proven to be ours and private."""
    if create:
        try:
            os.mkdir(name, 0o700, dir_fd=parent_fd)
        except FileExistsError:
            pass
        except OSError as exc:
            raise StateDirError(f"cannot create {path}: {exc.strerror}") from None
    try:
        fd = os.open(name, DIR_FLAGS, dir_fd=parent_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise StateDirError(f"{path} is a symbolic link or not a directory; remove it (s3pyfs "
                                f"creates it itself) or choose another directory with tmpdir= or use_cache=") from None
        raise StateDirError(f"cannot open {path}: {exc.strerror}") from None
    try:
        check_private(os.fstat(fd), path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def private_problem(st: os.stat_result) -> str | None:
    """Why a directory s3pyfs owns is not safe to use, or None."""
    uid = os.geteuid()
    if not stat.S_ISDIR(st.st_mode):
        return "is not a directory"
    if st.st_uid != uid:
        return f"belongs to uid {st.st_uid}, not to uid {uid} that mounts"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"is writable by other users (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def check_private(st: os.stat_result, path: str) -> None:
    problem = private_problem(st)
    if problem:
        raise StateDirError(f"{path} {problem}; s3pyfs keeps its files only in directories of its own user: "
                            f"remove {path} (s3pyfs creates it again, mode 0700) or choose another directory "
                            f"with tmpdir= or use_cache=")
