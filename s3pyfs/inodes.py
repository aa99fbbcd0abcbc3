"""Inode table: inode numbers <-> (parent, name), attributes, kernel lookup counts.

Responsibility: the in-memory tree of the names the kernel knows about.
Invariants:
  * A node's key is derived from its parent chain, so renaming a directory is
    O(1) here: its descendants follow without being touched.
  * `children[parent][name]` and `node.parent/node.name` always agree; a node
    that was unlinked or replaced is detached (parent = 0) but stays in `nodes`
    while the kernel holds a lookup on it or a handle is open.
  * A node leaves the table only when lookups == 0, no handle is open and it
    has no unsaved data (`forget_if_unused`).
  * Only the trio thread touches the table; no method awaits, so each method is
    atomic with respect to other tasks.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from .metadata import Attrs

if TYPE_CHECKING:
    from .writeback import Staging

ROOT_INODE = 1  # pyfuse3.ROOT_INODE; kept here so the core does not import pyfuse3


@dataclasses.dataclass(eq=False)
class Node:
    ino: int
    parent: int
    name: str
    attrs: Attrs
    lookups: int = 0
    open_handles: int = 0
    expires: float = 0.0          # attrs are fresh until this monotonic time
    has_marker: bool = False      # a `dir/` object exists for this directory
    legacy_dir_key: bool = False  # directory stored as a key without '/' (old s3fs)
    in_s3: bool = True            # False while a created file was never uploaded
    staging: Staging | None = None  # writeback.Staging while the file has local data
    symlink_target: str | None = None
    page_cache_etag: str | None = None   # ETag the kernel's page cache was filled from
    # (etag, size, Last-Modified in whole seconds) of the object whose headers `attrs` hold:
    # a listing showing the same version revalidates the node without a HEAD
    version: tuple[str | None, int, int] | None = None

    @property
    def is_dir(self) -> bool:
        return self.attrs.is_dir()

    def attached(self) -> bool:
        return self.parent != 0 or self.ino == ROOT_INODE


class InodeTable:
    def __init__(self, root_attrs: Attrs, prefix: str):
        self.prefix = prefix
        self._numbers = itertools.count(ROOT_INODE + 1)
        self.nodes: dict[int, Node] = {}
        self.children: dict[int, dict[str, int]] = {}
        root = Node(ROOT_INODE, 0, "", root_attrs, lookups=1, expires=float("inf"), has_marker=True)
        self.nodes[ROOT_INODE] = root

    def __getitem__(self, ino: int) -> Node:
        return self.nodes[ino]

    def get(self, ino: int) -> Node | None:
        return self.nodes.get(ino)

    def child(self, parent: int, name: str) -> Node | None:
        ino = self.children.get(parent, {}).get(name)
        return self.nodes[ino] if ino is not None else None

    def path(self, node: Node) -> str:
        """Path below the mount root, without leading '/', '' for the root."""
        parts = []
        while node.ino != ROOT_INODE:
            if node.parent == 0:
                raise KeyError(f"inode {node.ino} is detached")
            parts.append(node.name)
            node = self.nodes[node.parent]
        return "/".join(reversed(parts))

    def file_key(self, node: Node) -> str:
        return self.prefix + self.path(node)

    def dir_prefix(self, node: Node) -> str:
        path = self.path(node)
        return self.prefix + (path + "/" if path else "")

    def key_for(self, parent: Node, name: str) -> str:
        return self.dir_prefix(parent) + name

    def add(self, parent: int, name: str, attrs: Attrs, ttl: float) -> Node:
        """Attach a new node (replacing any node of that name, which is detached)."""
        self.detach(parent, name)
        node = Node(next(self._numbers), parent, name, attrs, expires=time.monotonic() + ttl)
        self.nodes[node.ino] = node
        self.children.setdefault(parent, {})[name] = node.ino
        return node

    def detach(self, parent: int, name: str) -> Node | None:
        ino = self._unlink_name(parent, name)
        if ino is None:
            return None
        node = self.nodes[ino]
        node.parent = 0
        self.forget_if_unused(node)
        return node

    def _unlink_name(self, parent: int, name: str) -> int | None:
        names = self.children.get(parent)
        if not names:
            return None
        ino = names.pop(name, None)
        if not names:
            del self.children[parent]
        return ino

    def move(self, node: Node, new_parent: int, new_name: str) -> None:
        self._unlink_name(node.parent, node.name)
        self.detach(new_parent, new_name)
        node.parent, node.name = new_parent, new_name
        self.children.setdefault(new_parent, {})[new_name] = node.ino

    def children_of(self, parent: int) -> Iterator[Node]:
        for ino in list(self.children.get(parent, {}).values()):
            yield self.nodes[ino]

    def descendants(self, node: Node) -> Iterator[Node]:
        stack = [node.ino]
        while stack:
            parent = stack.pop()
            for child in self.children_of(parent):
                yield child
                if child.is_dir:
                    stack.append(child.ino)

    def forget_if_unused(self, node: Node) -> None:
        if node.ino == ROOT_INODE or node.lookups > 0 or node.open_handles > 0 or node.staging is not None:
            return
        if self.children.get(node.ino):
            return
        parent = self.nodes.get(node.parent)
        if node.parent != 0:
            self._unlink_name(node.parent, node.name)
        self.nodes.pop(node.ino, None)
        if parent is not None:
            self.forget_if_unused(parent)

    def forget(self, ino: int, count: int) -> None:
        node = self.nodes.get(ino)
        if node is None:
            return
        node.lookups = max(0, node.lookups - count)
        self.forget_if_unused(node)
