"""Who may change where a file's data lives, and when.

Responsibility: serialize, per file, every operation that decides whether or
under which key an object exists (upload from flush/fsync/release/background
retry/drain, unlink, rename of the file, truncate and metadata copies), and
keep a directory rename from racing with any of them anywhere below it.

Model:
  * `hold(*nodes, lock=...)` is taken by an operation that reads a key from
    the namespace and then awaits S3 with it.  It waits until no directory
    above (or equal to) any of `nodes` is being renamed, takes the per-file
    locks of `lock` (in inode order, so two holders never deadlock), and
    registers every node as busy until the block ends.  The key must be read
    from the namespace inside the block, never before it.
  * `moving(directory, *others)` is taken by a directory rename.  It is a
    `hold` of the directory itself (and of the target's parent), and then a
    gate: holders that arrive later for anything below the directory wait at
    the gate, and the rename waits until every holder already registered
    below it has finished.  So an upload and the rename of a directory above
    it never interleave: the upload either completed before the rename listed
    the keys, or it starts after the subtree moved and reads the new key.
  * Holders wait at gates before taking any lock, and a registered holder
    never waits for a gate, so a rename can take the locks of files below its
    directory (to upload their dirty data) without deadlock.

Waits for gates and locks end with RemoteTimeout at the system call's deadline
(concurrency.waiting).  Only the trio thread uses this module.  Nothing here touches S3 or disk.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import trio

from .concurrency import waiting
from .inodes import ROOT_INODE, InodeTable, Node


class Owners:
    def __init__(self, inodes: InodeTable):
        self._inodes = inodes
        self._locks: dict[int, trio.Lock] = {}
        self._lock_users: dict[int, int] = {}
        self._busy: dict[int, int] = {}            # ino -> holders registered on it
        self._gates: dict[int, trio.Event] = {}    # directory ino -> set when its rename ends
        self._released = trio.Event()              # set (and replaced) whenever a holder ends

    # ---------------------------------------------------------------- queries
    def _ancestors(self, node: Node) -> list[int]:
        """Inodes from `node` up to the root (a detached node: itself only)."""
        chain = [node.ino]
        current = node
        while current.ino != ROOT_INODE and current.parent != 0:
            chain.append(current.parent)
            parent = self._inodes.get(current.parent)
            if parent is None:
                break
            current = parent
        return chain

    def _gate_for(self, nodes: tuple[Node, ...]) -> trio.Event | None:
        for node in nodes:
            for ino in self._ancestors(node):
                gate = self._gates.get(ino)
                if gate is not None:
                    return gate
        return None

    def _busy_below(self, directory: Node, own: dict[int, int]) -> bool:
        for ino, count in self._busy.items():
            if count - own.get(ino, 0) <= 0:
                continue
            node = self._inodes.get(ino)
            if node is not None and directory.ino in self._ancestors(node):
                return True
        return False

    def is_busy(self, node: Node) -> bool:
        return self._busy.get(node.ino, 0) > 0

    # ---------------------------------------------------------------- locks
    def _lock(self, ino: int) -> trio.Lock:
        lock = self._locks.get(ino)
        if lock is None:
            lock = self._locks[ino] = trio.Lock()
        self._lock_users[ino] = self._lock_users.get(ino, 0) + 1
        return lock

    def _unlock_ref(self, ino: int) -> None:
        left = self._lock_users[ino] - 1
        if left:
            self._lock_users[ino] = left
        else:
            del self._lock_users[ino]
            del self._locks[ino]

    # ---------------------------------------------------------------- holding
    @contextlib.asynccontextmanager
    async def hold(self, *nodes: Node, lock: tuple[Node, ...] = ()) -> AsyncIterator[None]:
        """Register `nodes` as busy and take the locks of `lock`, once no rename above
        them is in progress.  Read keys inside the block."""
        order = sorted({n.ino for n in lock})
        everything = tuple(nodes) + tuple(lock)
        with waiting("another upload, rename or copy of this file"):   # the system call's deadline
            while True:
                gate = self._gate_for(everything)
                if gate is not None:
                    await gate.wait()
                    continue
                locks = [self._lock(ino) for ino in order]
                taken: list[int] = []
                try:
                    for ino, each in zip(order, locks, strict=True):
                        await each.acquire()
                        taken.append(ino)
                except BaseException:
                    self._release_locks(taken, order)
                    raise
                if self._gate_for(everything) is None:
                    break
                self._release_locks(taken, order)      # a rename began while we waited: go around
        for n in everything:
            self._busy[n.ino] = self._busy.get(n.ino, 0) + 1
        try:
            yield
        finally:
            for n in everything:
                left = self._busy[n.ino] - 1
                if left:
                    self._busy[n.ino] = left
                else:
                    del self._busy[n.ino]
            self._release_locks(order, order)
            self._released.set()
            self._released = trio.Event()

    def _release_locks(self, taken: list[int], order: list[int]) -> None:
        for ino in taken:
            self._locks[ino].release()
        for ino in order:
            self._unlock_ref(ino)

    @contextlib.asynccontextmanager
    async def moving(self, directory: Node, *others: Node) -> AsyncIterator[None]:
        """Held by a directory rename for its whole duration (see the module docstring)."""
        async with self.hold(directory, *others):
            gate = trio.Event()
            self._gates[directory.ino] = gate
            own = {directory.ino: 1}
            for n in others:
                own[n.ino] = own.get(n.ino, 0) + 1
            try:
                while self._busy_below(directory, own):
                    await self._released.wait()
                yield
            finally:
                del self._gates[directory.ino]
                gate.set()

    @contextlib.asynccontextmanager
    async def locked(self, node: Node) -> AsyncIterator[None]:
        """The file's lock alone, for a holder of `moving` that uploads a file below it."""
        lock = self._lock(node.ino)
        try:
            async with lock:
                yield
        finally:
            self._unlock_ref(node.ino)
