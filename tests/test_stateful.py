"""Random operation sequences on a mount, checked against an in-memory POSIX model.

Responsibility: a hypothesis RuleBasedStateMachine drives one s3pyfs mount (FUSE on
SeaweedFS) and a small model of a POSIX tree side by side.  Every operation's
outcome is compared: file bytes, sizes, permission bits, directory listings,
symlink targets, and the errno of failures (ENOENT, EEXIST, ENOTEMPTY, EISDIR,
ENOTDIR, EINVAL, ELOOP).  One file handle may stay open across steps (writes
through it, reads beside it, rename or unlink of its file meanwhile, then close).
A rule compares S3 out of band with the model: every closed file's object has the
model's bytes, symlink objects hold their targets, and there are no other keys.
Another reads the tree through a second mount without caches (another node's view).

Names come from a three-letter alphabet and paths are at most two deep, so
operations collide often.  Runs are reproducible (derandomize, no example
database) and bounded (max_examples, stateful_step_count), no shrinking so that a
failure is reported in bounded time with its full step list.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import os
import stat

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, precondition, rule, run_state_machine_as_test

pytestmark = pytest.mark.mounted

MiB = 1024 * 1024
NAMES = ("a", "b", "c")
paths = st.lists(st.sampled_from(NAMES), min_size=1, max_size=2).map(tuple)
# Offsets and lengths around the 1 MiB staging-block boundary and small ones.
offsets = st.sampled_from((0, 1, 100, 4095, MiB - 2, MiB + 7, 2 * MiB))
lengths = st.sampled_from((0, 1, 5, 4096, 70_000, MiB + 3))
fill = st.integers(0, 255)
modes = st.sampled_from((0o600, 0o644, 0o640, 0o755, 0o700))
# Dangling targets: every operation that follows the link fails with ENOENT.
targets = st.sampled_from(("/nonexistent-s3pyfs/t", "../nonexistent-x/y", "nonexistent-z/w"))

SETTINGS = settings(max_examples=100, stateful_step_count=50, deadline=None, derandomize=True,
                    database=None, phases=(Phase.explicit, Phase.generate),
                    suppress_health_check=list(HealthCheck))


def payload(seed: int, length: int) -> bytes:
    """Deterministic bytes that differ with position, so misplaced data shows."""
    block = bytes((seed + i * 7) % 256 for i in range(256))
    return (block * (length // 256 + 1))[:length]


class File:
    def __init__(self, mode=0o644):
        self.data = bytearray()
        self.mode = mode


class Dir:
    def __init__(self, mode=0o755):
        self.children: dict[str, object] = {}
        self.mode = mode


class Link:
    def __init__(self, target: str):
        self.target = target


class Fail(Exception):
    """The model's answer: the operation fails with this errno."""

    def __init__(self, code: int):
        super().__init__(errno.errorcode[code])
        self.code = code


def m_rename(model: Model, src, dst) -> None:
    """rename(2) in the model: both parents resolve first, as in the kernel."""
    sparent = model.parent(src)
    dparent = model.parent(dst)
    node = model.existing(src)
    if isinstance(node, Dir) and dst[:len(src)] == src and dst != src:
        raise Fail(errno.EINVAL)
    if src[:len(dst)] == dst and dst != src:
        raise Fail(errno.ENOTEMPTY)     # the target is a directory above the source (the kernel's answer)
    old = dparent.children.get(dst[-1])
    if old is node:
        return
    if old is not None:
        if isinstance(node, Dir) and not isinstance(old, Dir):
            raise Fail(errno.ENOTDIR)
        if not isinstance(node, Dir) and isinstance(old, Dir):
            raise Fail(errno.EISDIR)
        if isinstance(old, Dir) and old.children:
            raise Fail(errno.ENOTEMPTY)
    del sparent.children[src[-1]]
    dparent.children[dst[-1]] = node


def outcome(fn):
    """Run `fn`; return ("ok", value) or ("err", errno)."""
    try:
        return "ok", fn()
    except Fail as exc:
        return "err", exc.code
    except OSError as exc:
        return "err", exc.errno


class Model:
    def __init__(self):
        self.root = Dir()

    def parent(self, path) -> Dir:
        node = self.root
        for name in path[:-1]:
            child = node.children.get(name)
            if child is None or isinstance(child, Link):   # links dangle
                raise Fail(errno.ENOENT)
            if not isinstance(child, Dir):
                raise Fail(errno.ENOTDIR)
            node = child
        return node

    def get(self, path):
        return self.parent(path).children.get(path[-1])

    def existing(self, path):
        node = self.get(path)
        if node is None:
            raise Fail(errno.ENOENT)
        return node

    def followed(self, path):
        """The node an operation that follows symlinks acts on."""
        node = self.existing(path)
        if isinstance(node, Link):
            raise Fail(errno.ENOENT)
        return node

    def walk(self, node=None, prefix=()):
        node = node or self.root
        for name, child in node.children.items():
            yield prefix + (name,), child
            if isinstance(child, Dir):
                yield from self.walk(child, prefix + (name,))


def make_machine(mnt, fresh, s3, bucket):
    counter = itertools.count()

    class FsMachine(RuleBasedStateMachine):
        def __init__(self):
            super().__init__()
            self.top = f"ex{next(counter)}"
            self.base = mnt.path / self.top
            os.mkdir(self.base)
            self.model = Model()
            self.fd = None        # one handle kept open across steps
            self.fd_node = None   # the model File it writes to (survives rename/unlink)

        # -- helpers ----------------------------------------------------------
        def real(self, path) -> str:
            return os.path.join(self.base, *path)

        def check(self, what, real_fn, model_fn):
            got, want = outcome(real_fn), outcome(model_fn)
            if want[0] == "err":
                assert got == want, f"{what}: got {fmt(got)}, model says {fmt(want)}"
                return None
            assert got[0] == "ok", f"{what}: got {fmt(got)}, model says success"
            return got[1]

        def teardown(self):
            if self.fd is not None:
                os.close(self.fd)

        # -- namespace ----------------------------------------------------------
        @rule(path=paths)
        def mkdir(self, path):
            def model():
                parent = self.model.parent(path)
                if path[-1] in parent.children:
                    raise Fail(errno.EEXIST)
                parent.children[path[-1]] = Dir()
            self.check(f"mkdir {path}", lambda: os.mkdir(self.real(path), 0o755), model)

        @rule(path=paths)
        def rmdir(self, path):
            def model():
                node = self.model.existing(path)
                if not isinstance(node, Dir):
                    raise Fail(errno.ENOTDIR)
                if node.children:
                    raise Fail(errno.ENOTEMPTY)
                del self.model.parent(path).children[path[-1]]
            self.check(f"rmdir {path}", lambda: os.rmdir(self.real(path)), model)

        @rule(path=paths)
        def unlink(self, path):
            def model():
                node = self.model.existing(path)
                if isinstance(node, Dir):
                    raise Fail(errno.EISDIR)
                del self.model.parent(path).children[path[-1]]
            self.check(f"unlink {path}", lambda: os.unlink(self.real(path)), model)

        @rule(link_to=targets, path=paths)
        def symlink(self, link_to, path):
            def model():
                parent = self.model.parent(path)
                if path[-1] in parent.children:
                    raise Fail(errno.EEXIST)
                parent.children[path[-1]] = Link(link_to)
            self.check(f"symlink {path}", lambda: os.symlink(link_to, self.real(path)), model)

        @rule(path=paths)
        def readlink(self, path):
            def model():
                node = self.model.existing(path)
                if not isinstance(node, Link):
                    raise Fail(errno.EINVAL)
                return node.target
            got = self.check(f"readlink {path}", lambda: os.readlink(self.real(path)), model)
            want = outcome(model)
            if want[0] == "ok":
                assert got == want[1], f"readlink {path}"

        @rule(src=paths, dst=paths)
        def rename(self, src, dst):
            def model():
                m_rename(self.model, src, dst)
            got, want = outcome(lambda: os.rename(self.real(src), self.real(dst))), outcome(model)
            if want == ("err", errno.ENOTEMPTY):
                # POSIX allows either for a non-empty target directory.
                assert got in (want, ("err", errno.EEXIST)), f"rename {src} {dst}: {fmt(got)}"
            elif want[0] == "err":
                assert got == want, f"rename {src} -> {dst}: got {fmt(got)}, model says {fmt(want)}"
            else:
                assert got[0] == "ok", f"rename {src} -> {dst}: got {fmt(got)}, model says success"

        # -- data -----------------------------------------------------------------
        def _open_for_write(self, path, flags):
            """Model of open(path, O_WRONLY|O_CREAT|flags): the File written to."""
            parent = self.model.parent(path)
            node = parent.children.get(path[-1])
            if isinstance(node, Link):
                raise Fail(errno.ENOENT)      # dangling target in a missing directory
            if isinstance(node, Dir):
                raise Fail(errno.EISDIR)
            if node is None:
                node = parent.children[path[-1]] = File()
            if flags & os.O_TRUNC:
                del node.data[:]
            return node

        def _write_real(self, path, flags, offset, data):
            fd = os.open(self.real(path), os.O_WRONLY | os.O_CREAT | flags, 0o644)
            try:
                if flags & os.O_APPEND:
                    assert os.write(fd, data) == len(data)
                else:
                    assert os.pwrite(fd, data, offset) == len(data)
            finally:
                os.close(fd)

        @rule(path=paths, seed=fill, length=lengths)
        def write_whole(self, path, seed, length):
            data = payload(seed, length)

            def model():
                node = self._open_for_write(path, os.O_TRUNC)
                node.data[:] = data
            self.check(f"write_whole {path} {length}",
                       lambda: self._write_real(path, os.O_TRUNC, 0, data), model)

        @rule(path=paths, offset=offsets, seed=fill, length=lengths)
        def write_at(self, path, offset, seed, length):
            data = payload(seed, length)

            def model():
                node = self._open_for_write(path, 0)
                write_into(node, offset, data)
            self.check(f"pwrite {path} @{offset} {length}",
                       lambda: self._write_real(path, 0, offset, data), model)

        @rule(path=paths, seed=fill, length=lengths)
        def append(self, path, seed, length):
            data = payload(seed, length)

            def model():
                node = self._open_for_write(path, os.O_APPEND)
                node.data += data
            self.check(f"append {path} {length}",
                       lambda: self._write_real(path, os.O_APPEND, 0, data), model)

        @rule(path=paths, length=st.sampled_from((0, 3, 4096, MiB + 1, 3 * MiB)))
        def truncate(self, path, length):
            def model():
                node = self.model.followed(path)
                if isinstance(node, Dir):
                    raise Fail(errno.EISDIR)
                resize(node, length)
            self.check(f"truncate {path} {length}", lambda: os.truncate(self.real(path), length), model)

        @rule(path=paths)
        def read(self, path):
            def real():
                fd = os.open(self.real(path), os.O_RDONLY)
                try:
                    chunks = []
                    while chunk := os.read(fd, MiB):
                        chunks.append(chunk)
                    return b"".join(chunks)
                finally:
                    os.close(fd)

            def model():
                node = self.model.followed(path)
                if isinstance(node, Dir):
                    raise Fail(errno.EISDIR)
                return bytes(node.data)
            got = self.check(f"read {path}", real, model)
            want = outcome(model)
            if want[0] == "ok":
                assert_same_bytes(got, want[1], f"read {path}")

        @rule(path=paths, mode=modes)
        def chmod(self, path, mode):
            def model():
                self.model.followed(path).mode = mode
            self.check(f"chmod {path} {mode:o}", lambda: os.chmod(self.real(path), mode), model)

        @rule(path=paths)
        def stat(self, path):
            got = outcome(lambda: os.lstat(self.real(path)))
            want = outcome(lambda: self.model.existing(path))
            if want[0] == "err":
                assert got == want, f"lstat {path}: got {fmt(got)}, model says {fmt(want)}"
                return
            assert got[0] == "ok", f"lstat {path}: got {fmt(got)}, model says success"
            st_, node = got[1], want[1]
            if isinstance(node, File):
                assert stat.S_ISREG(st_.st_mode), f"{path} is not a regular file: {st_.st_mode:o}"
                assert st_.st_size == len(node.data), f"size of {path}"
                assert stat.S_IMODE(st_.st_mode) == node.mode, f"mode of {path}"
            elif isinstance(node, Dir):
                assert stat.S_ISDIR(st_.st_mode), f"{path} is not a directory: {st_.st_mode:o}"
                assert stat.S_IMODE(st_.st_mode) == node.mode, f"mode of {path}"
            else:
                assert stat.S_ISLNK(st_.st_mode), f"{path} is not a symlink: {st_.st_mode:o}"
                assert st_.st_size == len(node.target.encode()), f"size of link {path}"

        @rule(path=st.one_of(st.just(()), paths))
        def listdir(self, path):
            def model():
                node = self.model.root if not path else self.model.followed(path)
                if not isinstance(node, Dir):
                    raise Fail(errno.ENOTDIR)
                return sorted(node.children)
            got = self.check(f"listdir {path}", lambda: sorted(os.listdir(self.real(path))), model)
            want = outcome(model)
            if want[0] == "ok":
                assert got == want[1], f"listdir {path}"

        # -- a handle kept open across steps -----------------------------------------
        @precondition(lambda self: self.fd is None)
        @rule(path=paths)
        def open_handle(self, path):
            def real():
                return os.open(self.real(path), os.O_RDWR | os.O_CREAT, 0o644)
            fd = self.check(f"open {path}", real, lambda: self._open_for_write(path, 0))
            if fd is not None:
                self.fd = fd
                self.fd_node = self.model.get(path)

        @precondition(lambda self: self.fd is not None)
        @rule(offset=offsets, seed=fill, length=lengths)
        def write_handle(self, offset, seed, length):
            data = payload(seed, length)
            assert os.pwrite(self.fd, data, offset) == len(data)
            write_into(self.fd_node, offset, data)

        @precondition(lambda self: self.fd is not None)
        @rule()
        def read_handle(self):
            size = os.fstat(self.fd).st_size
            assert size == len(self.fd_node.data), "fstat size of the open handle"
            assert_same_bytes(os.pread(self.fd, size + 10, 0), bytes(self.fd_node.data), "pread handle")

        @precondition(lambda self: self.fd is not None)
        @rule()
        def close_handle(self):
            fd, self.fd, self.fd_node = self.fd, None, None
            os.close(fd)

        # -- S3 seen out of band -------------------------------------------------------
        @rule()
        def compare_with_s3(self):
            """Every closed file's object equals the model; no stray keys."""
            prefix = self.top + "/"
            keys = {}
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                for obj in page.get("Contents", []):
                    if not obj["Key"].endswith("/"):
                        keys[obj["Key"][len(prefix):]] = obj["Size"]
            expected = {}
            for path, node in self.model.walk():
                if isinstance(node, File):
                    expected["/".join(path)] = node
                elif isinstance(node, Link):
                    expected["/".join(path)] = node
            open_key = next((k for k, n in expected.items() if n is self.fd_node), None)
            # The open handle's file may not be uploaded yet (or may be, from an
            # earlier write): it is checked at close instead.
            if open_key is not None:
                expected.pop(open_key)
                keys.pop(open_key, None)
            assert sorted(keys) == sorted(expected), "keys in S3 differ from the model"
            for key, node in expected.items():
                body = s3.get_object(Bucket=bucket, Key=prefix + key)["Body"].read()
                want = node.target.encode() if isinstance(node, Link) else bytes(node.data)
                assert_same_bytes(body, want, f"object {key}")

        @rule()
        def compare_through_fresh_mount(self):
            """A mount without caches lists and reads every closed file as the model says."""
            base = os.path.join(fresh.path, self.top)
            for path, node in [((), self.model.root), *self.model.walk()]:
                real = os.path.join(base, *path)
                if isinstance(node, Dir):
                    # the open handle's file may not be uploaded yet: it may be missing
                    open_names = {n for n, c in node.children.items() if c is self.fd_node}
                    listed = set(os.listdir(real)) - open_names
                    assert sorted(listed) == sorted(set(node.children) - open_names), \
                        f"fresh listdir {path}"
                elif isinstance(node, Link):
                    assert os.readlink(real) == node.target, f"fresh readlink {path}"
                elif node is not self.fd_node:
                    with open(real, "rb") as f:
                        assert_same_bytes(f.read(), bytes(node.data), f"fresh read {path}")
                    assert stat.S_IMODE(os.stat(real).st_mode) == node.mode, f"fresh mode {path}"

    return FsMachine


def write_into(node: File, offset: int, data: bytes) -> None:
    if not data:
        return                      # a write of nothing does not extend the file
    if offset > len(node.data):
        node.data += bytes(offset - len(node.data))
    node.data[offset:offset + len(data)] = data


def resize(node: File, length: int) -> None:
    if length < len(node.data):
        del node.data[length:]
    else:
        node.data += bytes(length - len(node.data))


def fmt(result) -> str:
    kind, value = result
    if kind == "err":
        return errno.errorcode.get(value, str(value))
    return "success"


def assert_same_bytes(got: bytes, want: bytes, what: str) -> None:
    if got == want:
        return
    first = next((i for i, (x, y) in enumerate(zip(got, want, strict=False)) if x != y), min(len(got), len(want)))
    raise AssertionError(
        f"{what}: {len(got)} bytes (sha256 {hashlib.sha256(got).hexdigest()[:12]}), expected "
        f"{len(want)} (sha256 {hashlib.sha256(want).hexdigest()[:12]}); first difference at {first}")


def test_random_operation_sequences_match_a_posix_model(s3, bucket, mount):
    m = mount(bucket)
    # A second mount with no caches: another node's view, always read from S3.
    fresh = mount(bucket, "stat_cache_expire=0", "negative_cache_expire=0")
    run_state_machine_as_test(make_machine(m, fresh, s3, bucket), settings=SETTINGS)
