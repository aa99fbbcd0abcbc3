"""Open file and directory handles.

Responsibility: number the handles the kernel holds and keep their per-open
state (read-ahead buffer of a file, listing snapshot of a directory).
Invariants: handle numbers are never reused while open; a handle holds its
node's `open_handles` count from open to release (the filesystem core does
the counting); only the trio thread touches handles.
"""

from __future__ import annotations

import dataclasses
import itertools

from .errors import FSError
from .inodes import Node
from .reader import ObjectReader


@dataclasses.dataclass(eq=False)
class FileHandle:
    fh: int
    node: Node
    writable: bool
    reader: ObjectReader | None = None
    wrote: bool = False            # this handle changed the file: its flush/fsync/release commits
    direct_io: bool = False        # reads a newer version than the node's other handles: no page cache


@dataclasses.dataclass(eq=False)
class DirHandle:
    fh: int
    node: Node
    entries: list[tuple[str, Node]] | None = None   # snapshot taken at the first readdir
    verified: frozenset[int] = frozenset()           # inodes whose headers the snapshot checked


class HandleTable:
    def __init__(self) -> None:
        self._numbers = itertools.count(1)
        self._open: dict[int, FileHandle | DirHandle] = {}

    def add_file(self, node: Node, writable: bool) -> FileHandle:
        handle = FileHandle(next(self._numbers), node, writable)
        self._open[handle.fh] = handle
        return handle

    def add_dir(self, node: Node) -> DirHandle:
        handle = DirHandle(next(self._numbers), node)
        self._open[handle.fh] = handle
        return handle

    def file(self, fh: int) -> FileHandle:
        handle = self._open.get(fh)
        if not isinstance(handle, FileHandle):
            raise FSError(f"no open file handle {fh}", errno=9)  # EBADF
        return handle

    def dir(self, fh: int) -> DirHandle:
        handle = self._open.get(fh)
        if not isinstance(handle, DirHandle):
            raise FSError(f"no open directory handle {fh}", errno=9)
        return handle

    def pop(self, fh: int) -> FileHandle | DirHandle | None:
        return self._open.pop(fh, None)

    def files_of(self, node: Node) -> list[FileHandle]:
        return [h for h in self._open.values() if isinstance(h, FileHandle) and h.node is node]

    def __len__(self) -> int:
        return len(self._open)
