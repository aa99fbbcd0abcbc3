"""A pass-through FUSE filesystem whose data I/O the test can stall (a throttled disk).

Usage: python stall_fs.py SOURCE MOUNTPOINT CONTROL_DIR

Mirrors the directory SOURCE at MOUNTPOINT.  While the file CONTROL_DIR/pause
exists, every read, write and fsync waits (the request stays unanswered, as on a
disk that stopped responding); metadata operations keep working.  A request
that starts waiting creates CONTROL_DIR/blocked, so a test knows the stall has
caught something.  Written for tests/test_disk_stall.py; pyfuse3 + trio, one
process, no caching of attributes or entries (every operation reaches here).
"""

from __future__ import annotations

import errno
import os
import stat
import sys

import pyfuse3
import trio


class StallFS(pyfuse3.Operations):
    def __init__(self, source: str, control: str):
        super().__init__()
        self.paths: dict[int, str] = {pyfuse3.ROOT_INODE: source}
        self.root_ino = os.lstat(source).st_ino
        self.pause = os.path.join(control, "pause")
        self.blocked = os.path.join(control, "blocked")
        self.fds: dict[int, int] = {}
        self.dirs: dict[int, str] = {}
        self._next_fh = 1

    # ---- helpers ------------------------------------------------------------
    async def _maybe_stall(self) -> None:
        if not os.path.exists(self.pause):
            return
        with open(self.blocked, "w"):
            pass
        while os.path.exists(self.pause):
            await trio.sleep(0.05)

    def _path(self, inode: int) -> str:
        try:
            return self.paths[inode]
        except KeyError:
            raise pyfuse3.FUSEError(errno.ESTALE) from None

    def _child(self, parent: int, name: bytes) -> str:
        return os.path.join(self._path(parent), os.fsdecode(name))

    def _attrs(self, path: str) -> pyfuse3.EntryAttributes:
        try:
            st = os.lstat(path)
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno) from None
        ino = pyfuse3.ROOT_INODE if st.st_ino == self.root_ino else st.st_ino
        self.paths[ino] = path
        entry = pyfuse3.EntryAttributes()
        entry.st_ino = ino
        entry.generation = 0
        entry.entry_timeout = 0
        entry.attr_timeout = 0
        for field in ("st_mode", "st_nlink", "st_uid", "st_gid", "st_rdev", "st_size", "st_blksize",
                      "st_blocks", "st_atime_ns", "st_mtime_ns", "st_ctime_ns"):
            setattr(entry, field, getattr(st, field))
        return entry

    def _fh(self) -> int:
        self._next_fh += 1
        return self._next_fh

    @staticmethod
    def _os(fn, *args):
        try:
            return fn(*args)
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None

    # ---- namespace ----------------------------------------------------------
    async def lookup(self, parent_inode, name, ctx=None):
        return self._attrs(self._child(parent_inode, name))

    async def getattr(self, inode, ctx=None):
        return self._attrs(self._path(inode))

    async def setattr(self, inode, attr, fields, fh, ctx):
        path = self._path(inode)
        if fields.update_size:
            if fh is not None and fh in self.fds:
                await self._maybe_stall()
                self._os(os.ftruncate, self.fds[fh], attr.st_size)
            else:
                self._os(os.truncate, path, attr.st_size)
        if fields.update_mode:
            self._os(os.chmod, path, stat.S_IMODE(attr.st_mode))
        if fields.update_uid or fields.update_gid:
            self._os(os.lchown, path, attr.st_uid if fields.update_uid else -1,
                     attr.st_gid if fields.update_gid else -1)
        if fields.update_atime or fields.update_mtime:
            st = os.lstat(path)
            self._os(os.utime, path, None, (attr.st_atime_ns if fields.update_atime else st.st_atime_ns,
                                            attr.st_mtime_ns if fields.update_mtime else st.st_mtime_ns))
        return self._attrs(path)

    async def mkdir(self, parent_inode, name, mode, ctx):
        path = self._child(parent_inode, name)
        self._os(os.mkdir, path, stat.S_IMODE(mode))
        self._os(os.chmod, path, stat.S_IMODE(mode))
        return self._attrs(path)

    async def rmdir(self, parent_inode, name, ctx):
        self._os(os.rmdir, self._child(parent_inode, name))

    async def unlink(self, parent_inode, name, ctx):
        self._os(os.unlink, self._child(parent_inode, name))

    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        if flags:
            raise pyfuse3.FUSEError(errno.EINVAL)
        old, new = self._child(parent_inode_old, name_old), self._child(parent_inode_new, name_new)
        self._os(os.rename, old, new)
        for ino, path in list(self.paths.items()):
            if path == old or path.startswith(old + "/"):
                self.paths[ino] = new + path[len(old):]

    async def statfs(self, ctx):
        fs = self._os(os.statvfs, self.paths[pyfuse3.ROOT_INODE])
        out = pyfuse3.StatvfsData()
        for field in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree",
                      "f_favail", "f_namemax"):
            setattr(out, field, getattr(fs, field))
        return out

    async def forget(self, inode_list):
        pass

    # ---- directories --------------------------------------------------------
    async def opendir(self, inode, ctx):
        fh = self._fh()
        self.dirs[fh] = self._path(inode)
        return fh

    async def readdir(self, fh, start_id, token):
        path = self.dirs[fh]
        names = sorted(os.listdir(path))
        for index, name in enumerate(names[start_id:], start_id):
            try:
                attrs = self._attrs(os.path.join(path, name))
            except pyfuse3.FUSEError:
                continue
            if not pyfuse3.readdir_reply(token, os.fsencode(name), attrs, index + 1):
                break

    async def releasedir(self, fh):
        self.dirs.pop(fh, None)

    # ---- files ----------------------------------------------------------------
    async def open(self, inode, flags, ctx):
        fd = self._os(os.open, self._path(inode), flags & ~(os.O_CREAT | os.O_EXCL | os.O_TRUNC | os.O_NOFOLLOW))
        fh = self._fh()
        self.fds[fh] = fd
        return pyfuse3.FileInfo(fh=fh)

    async def create(self, parent_inode, name, mode, flags, ctx):
        path = self._child(parent_inode, name)
        fd = self._os(os.open, path, (flags | os.O_CREAT) & ~os.O_NOFOLLOW, stat.S_IMODE(mode))
        fh = self._fh()
        self.fds[fh] = fd
        return pyfuse3.FileInfo(fh=fh), self._attrs(path)

    async def read(self, fh, off, size):
        await self._maybe_stall()
        return self._os(os.pread, self.fds[fh], size, off)

    async def write(self, fh, off, buf):
        await self._maybe_stall()
        return self._os(os.pwrite, self.fds[fh], buf, off)

    async def fsync(self, fh, datasync):
        await self._maybe_stall()

    async def flush(self, fh):
        pass

    async def release(self, fh):
        fd = self.fds.pop(fh, None)
        if fd is not None:
            os.close(fd)


def main(fs_class: type = None, fsname: str = "stallfs") -> None:
    """`SOURCE MOUNTPOINT CONTROL` from argv: serve `fs_class` (StallFS) until unmounted."""
    source, mountpoint, control = sys.argv[1:4]
    fs = (fs_class or StallFS)(os.path.abspath(source), os.path.abspath(control))
    options = set(pyfuse3.default_options) | {f"fsname={fsname}"}
    pyfuse3.init(fs, mountpoint, options)
    with open(os.path.join(control, "ready"), "w"):
        pass
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=True)


if __name__ == "__main__":
    main()
