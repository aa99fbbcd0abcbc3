"""tests/stall_fs.py with the two operations s3fs-fuse needs of its temporary/cache disk.

Usage: python stall_disk.py SOURCE MOUNTPOINT CONTROL_DIR   (as tests/stall_fs.py)

Used by benchmarks/stall.py as the stallable disk for every target.  Adds to
``StallFS`` (same pause/blocked protocol, data I/O still the only thing that
stalls):

* attributes of a file that was unlinked while open: s3fs-fuse without a cache
  keeps written data in an unlinked temporary file of `tmpdir` and truncates
  it, and the kernel then asks for the attributes of a name that is gone; they
  are taken from an open descriptor of the same inode (fstat);
* ``link``: s3fs-fuse with `use_cache` hard-links each cache file into
  `.BUCKET.mirror/` before opening it.

Invariant: nothing here changes what tests/stall_fs.py does for the tests.
"""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path

import pyfuse3

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import stall_fs  # noqa: E402
from stall_fs import StallFS  # noqa: E402


class StallDiskFS(StallFS):
    def _attrs(self, path: str) -> pyfuse3.EntryAttributes:
        try:
            return super()._attrs(path)
        except pyfuse3.FUSEError as exc:
            if exc.errno != errno.ENOENT:
                raise
            entry = self._attrs_of_open_file(path)
            if entry is None:
                raise
            return entry

    def _attrs_of_open_file(self, path: str) -> pyfuse3.EntryAttributes | None:
        inodes = {ino for ino, known in self.paths.items() if known == path}
        for fd in self.fds.values():
            try:
                st = os.fstat(fd)
            except OSError:
                continue
            if st.st_ino in inodes:
                entry = pyfuse3.EntryAttributes()
                entry.st_ino = st.st_ino
                entry.generation = 0
                entry.entry_timeout = 0
                entry.attr_timeout = 0
                for field in ("st_mode", "st_nlink", "st_uid", "st_gid", "st_rdev", "st_size",
                              "st_blksize", "st_blocks", "st_atime_ns", "st_mtime_ns", "st_ctime_ns"):
                    setattr(entry, field, getattr(st, field))
                return entry
        return None

    async def link(self, inode, new_parent_inode, new_name, ctx):
        target = self._child(new_parent_inode, new_name)
        self._os(os.link, self._path(inode), target)
        return self._attrs(target)


def main() -> None:
    stall_fs.main(StallDiskFS, "stalldisk")


if __name__ == "__main__":
    main()
