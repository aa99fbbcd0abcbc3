"""Two mounts of one bucket under a state machine, with steps that run two operations at once.

Responsibility: a hypothesis RuleBasedStateMachine drives mount A and mount B of one
bucket (FUSE on SeaweedFS, each behind its own fault proxy, stat and negative cache
TTL 0.5 s, each with its own state directory through `tmpdir=`) against the POSIX
model of tests/test_stateful.py, read as one shared namespace.

Model of two mounts (close-to-open, as README "What to expect" promises):
  * A mount sees its own changes at once.
  * A change made through the other mount is seen once the TTLs have passed: the
    machine sleeps out `SETTLE` before a step that depends on the other mount's
    names or attributes, and only then compares.
  * Data is close-to-open: a read or write of a file whose bytes the other mount
    has just rewritten (same name, no namespace change) does NOT wait: open()
    must revalidate and see the new version whole.

Concurrent steps run two operations on the SAME file or directory at once: one
in a thread, the other once the first one's S3 write reached the server (its
answer is held by the fault proxy for `HOLD` seconds, so the two really overlap,
in the order the `held` parameter picks):
  * write+close of d/f on a mount while that mount renames d;
  * write+close on one mount while the other mount unlinks the file;
  * rename over a name on one mount while the other writes and closes that name;
  * write+close while a chmod (same mount or the other) changes the file's mode;
  * two whole-file (O_TRUNC) writes of one name, one on each mount.
Each step lists the outcomes the rules allow (either order; between mounts the
loser of a conditional commit gets EIO from close(), its bytes are NOT in S3 and
ARE in its mount's lost+found); S3 read out of band picks the outcome that
happened, and the model continues from it.  No outcome fits: the test fails.

Invariants after every step, from S3 out of band: every file object holds exactly
the bytes the model says (so: no mixed object, no acknowledged close lost, no
unlinked name resurrected, no stray key), every model directory exists, and no
lost+found entry appeared that no EIO close accounts for.

Bounded: derandomized, no example database, no shrinking, `SETTINGS` below (20
examples of 25 steps; S3PYFS_SHARED_EXAMPLES changes the number of examples): about
2.5 minutes on a loaded 2-core machine, most of it sleeping out TTLs.  With -s the
run prints what it did (steps, outcomes picked, overlaps, seconds slept) and, when it
failed, the first failure with its steps (a replay that fails elsewhere would hide it).
"""

from __future__ import annotations

import collections
import contextlib
import copy
import dataclasses
import errno
import functools
import hashlib
import itertools
import os
import stat
import threading
import time
import traceback
import urllib.parse
from pathlib import Path

import pytest
from fault_proxy import FaultProxy
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test
from support import wait_until
from test_stateful import (
    Dir,
    Fail,
    File,
    Link,
    Model,
    assert_same_bytes,
    fmt,
    m_rename,
    outcome,
    payload,
    resize,
    write_into,
)

pytestmark = pytest.mark.mounted

MiB = 1024 * 1024
TTL = 0.5                       # stat_cache_expire and negative_cache_expire of both mounts
SETTLE = TTL + 0.3              # the other mount's caches have expired after this
HOLD = 0.3                      # seconds the proxy holds the answer to the first operation's write
NAMES = ("a", "b")
LABEL = ("A", "B")

mounts = st.sampled_from((0, 1))
names = st.sampled_from(NAMES)
paths = st.lists(names, min_size=1, max_size=2).map(tuple)
offsets = st.sampled_from((0, 100, MiB - 2))
lengths = st.sampled_from((0, 1, 5000, 70_000, MiB + 3))
fill = st.integers(0, 255)
modes = st.sampled_from((0o600, 0o640, 0o755))

SETTINGS = settings(max_examples=int(os.environ.get("S3PYFS_SHARED_EXAMPLES", "20")), stateful_step_count=25,
                    deadline=None, derandomize=True,
                    database=None, phases=(Phase.explicit, Phase.generate),
                    suppress_health_check=list(HealthCheck))

# what the run did, printed at the end (pytest -s): steps, outcomes, overlaps, seconds slept
STATS: collections.Counter = collections.Counter()

# the first failure of the run with the steps that led to it: hypothesis replays a failing
# example to report it, and a replay that fails at another step hides the first report
FIRST_FAILURE: list[str] = []

OK = ("ok",)
CLOSE_EIO = ("err", errno.EIO, "close")
WRITE_EIO = ("err", errno.EIO, "write")


# ----------------------------------------------------------------------------- the model's operations

def m_open_write(model: Model, path, trunc: bool) -> File:
    """open(path, O_WRONLY|O_CREAT[|O_TRUNC]): the File written to."""
    parent = model.parent(path)
    node = parent.children.get(path[-1])
    if isinstance(node, Link):
        raise Fail(errno.ENOENT)
    if isinstance(node, Dir):
        raise Fail(errno.EISDIR)
    if node is None:
        node = parent.children[path[-1]] = File()
    if trunc:
        del node.data[:]
    return node


def m_mkdir(model: Model, path) -> None:
    parent = model.parent(path)
    if path[-1] in parent.children:
        raise Fail(errno.EEXIST)
    parent.children[path[-1]] = Dir()


def m_rmdir(model: Model, path) -> None:
    node = model.existing(path)
    if not isinstance(node, Dir):
        raise Fail(errno.ENOTDIR)
    if node.children:
        raise Fail(errno.ENOTEMPTY)
    del model.parent(path).children[path[-1]]


def m_unlink(model: Model, path) -> None:
    node = model.existing(path)
    if isinstance(node, Dir):
        raise Fail(errno.EISDIR)
    del model.parent(path).children[path[-1]]


def related(p: tuple, q: tuple) -> bool:
    """One path is the other or lies below it."""
    n = min(len(p), len(q))
    return p[:n] == q[:n]


def same_result(want, got) -> bool:
    # POSIX allows EEXIST for a rename over a non-empty directory
    if want == ("err", errno.ENOTEMPTY) and got == ("err", errno.EEXIST):
        return True
    return want == got


def as_result(result) -> tuple:
    return OK if result[0] == "ok" else ("err", result[1])


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:12]


def lost_entries(state: Path) -> dict[str, bytes]:
    """lost+found entries under a mount's state directory: directory -> data."""
    found = {}
    for record in state.rglob("lost+found/*/record.json"):
        data = record.parent / "data"
        found[str(record.parent)] = data.read_bytes() if data.exists() else b""
    return found


@dataclasses.dataclass
class Outcome:
    """One legal result of a concurrent step."""
    label: str
    model: Model
    results: tuple                               # expected result of each operation
    lost: tuple[bytes, ...] = ()                 # data that must have gone to lost+found
    modes: dict = dataclasses.field(default_factory=dict)   # path -> allowed modes


def logged(fn):
    """Record each step of an example; keep the first failure with its steps."""
    @functools.wraps(fn)
    def step(self, **kwargs):
        self.steps.append(f"{fn.__name__}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})")
        try:
            return fn(self, **kwargs)
        except BaseException:
            if not FIRST_FAILURE:
                FIRST_FAILURE.append("\n".join(self.steps) + "\n" + traceback.format_exc())
            raise
    return step


def in_thread(fn):
    box: dict = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as exc:           # noqa: BLE001 - reported to the test
            box["error"] = exc
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box


def writer(fd: int, offset: int, data: bytes):
    """Write through an open fd and close it: OK, WRITE_EIO-like or CLOSE_EIO-like."""
    def run():
        try:
            if data:
                assert os.pwrite(fd, data, offset) == len(data)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.close(fd)
            return ("err", exc.errno, "write")
        try:
            os.close(fd)
        except OSError as exc:
            return ("err", exc.errno, "close")
        return OK
    return run


def plain(fn):
    def run():
        try:
            fn()
        except OSError as exc:
            return ("err", exc.errno)
        return OK
    return run


# ----------------------------------------------------------------------------- the machine

def make_machine(mnts, proxies, states, s3, bucket):
    counter = itertools.count()
    lost_known: set[str] = set()
    for state in states:
        lost_known.update(lost_entries(state))

    class SharedMachine(RuleBasedStateMachine):
        def __init__(self):
            super().__init__()
            self.top = f"sx{next(counter)}"
            os.mkdir(mnts[0].path / self.top)
            self.model = Model()
            self.steps = [f"example {self.top}"]
            # changes made through each mount: (time, path, whether names or attributes changed)
            self.changes = [[(time.monotonic(), (), True)], []]

        # -- helpers ----------------------------------------------------------------
        def real(self, m, path) -> str:
            return os.path.join(mnts[m].path, self.top, *path)

        def key(self, path) -> str:
            return "/".join((self.top, *path))

        def settle(self, m, *scope, data_only=False):
            """Wait until mount m sees what the other mount changed at, above or below the
            paths of `scope` (names and attributes: the TTL; bytes of a file that existed
            before: no wait, open() revalidates)."""
            latest = rewritten = 0.0
            for when, path, names_too in self.changes[1 - m]:
                if any(related(path, p) for p in scope):
                    if names_too or not data_only:
                        latest = max(latest, when)
                    else:
                        rewritten = max(rewritten, when)
            if rewritten + SETTLE > time.monotonic() > latest + SETTLE:
                STATS["close-to-open: data steps right after the other mount rewrote the file"] += 1
            wait = latest + SETTLE - time.monotonic()
            if wait > 0:
                STATS["seconds slept for the TTL"] += wait
                time.sleep(wait)

        def changed(self, m, *scope, names_too=True):
            now = time.monotonic()
            self.changes[m] = [c for c in self.changes[m] if c[0] + SETTLE > now]
            self.changes[m].extend((now, path, names_too) for path in scope)

        def check(self, what, real_fn, model_fn):
            got, want = outcome(real_fn), outcome(model_fn)
            STATS[f"step {what.split(' ')[0]} " + ("failing" if want[0] == "err" else "succeeding")] += 1
            if want[0] == "err":
                assert same_result(want, got), f"{what}: got {fmt(got)}, model says {fmt(want)}"
                return None
            assert got[0] == "ok", f"{what}: got {fmt(got)}, model says success"
            return got[1]

        def node_at(self, path):
            try:
                return self.model.get(path)
            except Fail:
                return Fail

        def hold(self, m, **filters):
            return proxies[m].add("delay", delay=HOLD, **filters)

        # -- S3 out of band ---------------------------------------------------------------
        def listing(self) -> tuple[dict[str, str], set[str]]:
            files, markers = {}, set()
            prefix = self.top + "/"
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                for obj in page.get("Contents", []):
                    name = obj["Key"][len(prefix):]
                    if not name:
                        continue            # the example's own directory
                    if name.endswith("/"):
                        markers.add(name[:-1])
                    else:
                        files[name] = obj["ETag"].strip('"')
            return files, markers

        def body(self, name: str) -> bytes:
            return s3.get_object(Bucket=bucket, Key=f"{self.top}/{name}")["Body"].read()

        def mismatch(self, model: Model) -> str | None:
            """None when S3 holds exactly the model's files and directories, else why not."""
            files, markers = self.listing()
            want_files, want_dirs = {}, set()
            for path, node in model.walk():
                if isinstance(node, File):
                    want_files["/".join(path)] = bytes(node.data)
                elif isinstance(node, Dir):
                    want_dirs.add("/".join(path))
            if sorted(files) != sorted(want_files):
                return (f"keys in S3 {sorted(files)} but the model has {sorted(want_files)} "
                        f"(missing: {sorted(set(want_files) - set(files))}, "
                        f"extra: {sorted(set(files) - set(want_files))})")
            for name, want in want_files.items():
                if files[name] == hashlib.md5(want).hexdigest():
                    continue
                got = self.body(name)
                if got != want:
                    return (f"object {name}: {len(got)} bytes (sha {digest(got)}), model has "
                            f"{len(want)} (sha {digest(want)})")
            keyed = set(files) | markers
            for d in want_dirs:
                if d not in markers and not any(k.startswith(d + "/") for k in keyed):
                    return f"directory {d} has no marker and no key below it in S3"
            for d in markers - want_dirs:
                return f"S3 holds a directory marker {d}/ the model does not have"
            return None

        def mode_in_s3(self, path) -> int:
            head = s3.head_object(Bucket=bucket, Key=self.key(path))
            return stat.S_IMODE(int(head["Metadata"].get("mode", "0")))

        def new_lost(self) -> list[tuple[str, bytes]]:
            found = []
            for state in states:
                for where, data in lost_entries(state).items():
                    if where not in lost_known:
                        found.append((where, data))
            return found

        @invariant()
        @logged
        def s3_matches_the_model(self):
            problem = self.mismatch(self.model)
            assert problem is None, problem
            stray = self.new_lost()
            assert not stray, f"lost+found entries no failed close accounts for: {[w for w, _ in stray]}"

        # -- sequential steps on one mount --------------------------------------------------
        @rule(m=mounts, path=paths)
        @logged
        def mkdir(self, m, path):
            self.settle(m, path)
            self.check(f"mkdir {LABEL[m]} {path}", lambda: os.mkdir(self.real(m, path), 0o755),
                       lambda: m_mkdir(self.model, path))
            self.changed(m, path)

        @rule(m=mounts, path=paths)
        @logged
        def rmdir(self, m, path):
            self.settle(m, path)
            self.check(f"rmdir {LABEL[m]} {path}", lambda: os.rmdir(self.real(m, path)),
                       lambda: m_rmdir(self.model, path))
            self.changed(m, path)

        @rule(m=mounts, path=paths)
        @logged
        def unlink(self, m, path):
            self.settle(m, path)
            self.check(f"unlink {LABEL[m]} {path}", lambda: os.unlink(self.real(m, path)),
                       lambda: m_unlink(self.model, path))
            self.changed(m, path)

        @rule(m=mounts, src=paths, dst=paths)
        @logged
        def rename(self, m, src, dst):
            self.settle(m, src, dst)
            self.check(f"rename {LABEL[m]} {src} -> {dst}", lambda: os.rename(self.real(m, src), self.real(m, dst)),
                       lambda: m_rename(self.model, src, dst))
            self.changed(m, src, dst)

        def _write(self, m, path, flags, offset, data, what):
            before = self.node_at(path)
            self.settle(m, path, data_only=isinstance(before, File))

            def real():
                fd = os.open(self.real(m, path), os.O_WRONLY | os.O_CREAT | flags, 0o644)
                try:
                    if flags & os.O_APPEND:
                        assert os.write(fd, data) == len(data)
                    elif data:
                        assert os.pwrite(fd, data, offset) == len(data)
                finally:
                    os.close(fd)

            def model():
                node = m_open_write(self.model, path, bool(flags & os.O_TRUNC))
                if flags & os.O_APPEND:
                    node.data += data
                else:
                    write_into(node, offset, data)
            self.check(f"{what} {LABEL[m]} {path} @{offset} {len(data)}", real, model)
            self.changed(m, path, names_too=not isinstance(before, File))

        @rule(m=mounts, path=paths, seed=fill, length=lengths)
        @logged
        def write_whole(self, m, path, seed, length):
            self._write(m, path, os.O_TRUNC, 0, payload(seed, length), "write_whole")

        @rule(m=mounts, path=paths, offset=offsets, seed=fill, length=lengths)
        @logged
        def pwrite(self, m, path, offset, seed, length):
            self._write(m, path, 0, offset, payload(seed, length), "pwrite")

        @rule(m=mounts, path=paths, seed=fill, length=lengths)
        @logged
        def append(self, m, path, seed, length):
            self._write(m, path, os.O_APPEND, 0, payload(seed, length), "append")

        @rule(m=mounts, path=paths, length=st.sampled_from((0, 3, MiB + 1)))
        @logged
        def truncate(self, m, path, length):
            self.settle(m, path)

            def model():
                node = self.model.followed(path)
                if isinstance(node, Dir):
                    raise Fail(errno.EISDIR)
                resize(node, length)
            self.check(f"truncate {LABEL[m]} {path} {length}", lambda: os.truncate(self.real(m, path), length), model)
            self.changed(m, path, names_too=False)

        @rule(m=mounts, path=paths, mode=modes)
        @logged
        def chmod(self, m, path, mode):
            if isinstance(self.node_at(path), Dir):
                return      # directory modes live in the mount's memory on SeaweedFS (ARCHITECTURE.md)
            self.settle(m, path)

            def model():
                self.model.followed(path).mode = mode
            self.check(f"chmod {LABEL[m]} {path} {mode:o}", lambda: os.chmod(self.real(m, path), mode), model)
            self.changed(m, path)

        @rule(m=mounts, path=paths)
        @logged
        def read(self, m, path):
            """Close-to-open: no wait for the other mount's rewrite of these bytes."""
            self.settle(m, path, data_only=True)

            def real():
                with open(self.real(m, path), "rb") as f:
                    return f.read()

            def model():
                node = self.model.followed(path)
                if isinstance(node, Dir):
                    raise Fail(errno.EISDIR)
                return bytes(node.data)
            got = self.check(f"read {LABEL[m]} {path}", real, model)
            want = outcome(model)
            if want[0] == "ok":
                assert_same_bytes(got, want[1], f"read {LABEL[m]} {path}")

        @rule(m=mounts, path=paths)
        @logged
        def stat(self, m, path):
            self.settle(m, path)
            got = outcome(lambda: os.lstat(self.real(m, path)))
            want = outcome(lambda: self.model.existing(path))
            if want[0] == "err":
                assert got == want, f"lstat {LABEL[m]} {path}: got {fmt(got)}, model says {fmt(want)}"
                return
            assert got[0] == "ok", f"lstat {LABEL[m]} {path}: got {fmt(got)}, model says success"
            st_, node = got[1], want[1]
            if isinstance(node, File):
                assert stat.S_ISREG(st_.st_mode), f"{path} is not a regular file on {LABEL[m]}"
                assert st_.st_size == len(node.data), f"size of {path} on {LABEL[m]}"
                assert stat.S_IMODE(st_.st_mode) == node.mode, \
                    f"mode of {path} on {LABEL[m]}: {stat.S_IMODE(st_.st_mode):o}, model {node.mode:o}"
            else:
                assert stat.S_ISDIR(st_.st_mode), f"{path} is not a directory on {LABEL[m]}"

        @rule(m=mounts, path=st.one_of(st.just(()), paths))
        @logged
        def listdir(self, m, path):
            self.settle(m, path)

            def model():
                node = self.model.root if not path else self.model.followed(path)
                if not isinstance(node, Dir):
                    raise Fail(errno.ENOTDIR)
                return sorted(node.children)
            got = self.check(f"listdir {LABEL[m]} {path}", lambda: sorted(os.listdir(self.real(m, path))), model)
            want = outcome(model)
            if want[0] == "ok":
                assert got == want[1], f"listdir {LABEL[m]} {path}: {got}, model {want[1]}"

        # -- set-up helpers of concurrent steps ------------------------------------------------
        def ensure_file(self, m, path, seed) -> bool:
            """Make `path` a file (written through mount m) unless it is one; False if it cannot be."""
            node = self.node_at(path)
            if isinstance(node, File):
                return True
            if node is not None:
                return False
            self._write(m, path, os.O_TRUNC, 0, payload(seed, 3000), "set-up write")
            return isinstance(self.node_at(path), File)

        def ensure_dir(self, m, path) -> bool:
            node = self.node_at(path)
            if isinstance(node, Dir):
                return True
            if node is not None:
                return False
            self.mkdir(m=m, path=path)
            return isinstance(self.node_at(path), Dir)

        def pair(self, first, second):
            """Run `first` in a thread; once its held request reached S3 (or it ended), run
            `second` here.  Returns (result of first, result of second)."""
            thread, box = in_thread(first)
            held = lambda: any(f.hits for p in proxies for f in p.faults)   # noqa: E731
            assert wait_until(lambda: held() or not thread.is_alive(), 60), \
                "the first operation neither reached S3 nor ended"
            STATS["concurrent steps that overlapped" if held() else "concurrent steps run one after the other"] += 1
            second_result = second()
            thread.join(120)
            assert not thread.is_alive(), "the first operation hangs"
            for p in proxies:
                p.clear()
            if "error" in box:
                raise box["error"]
            return box["value"], second_result

        def conclude(self, what, results, outcomes: list[Outcome], involved, scope):
            """Pick the legal outcome S3 shows, check lost+found and modes, continue from it."""
            now_lost = self.new_lost()
            reasons = []
            for o in outcomes:
                if len(o.results) != len(results) or \
                        not all(same_result(w, g) for w, g in zip(o.results, results, strict=False)):
                    reasons.append(f"{o.label}: results would be {o.results}")
                    continue
                if sorted(map(digest, o.lost)) != sorted(digest(d) for _, d in now_lost):
                    reasons.append(f"{o.label}: lost+found would hold {[digest(d) for d in o.lost]}, "
                                   f"holds {[digest(d) for _, d in now_lost]}")
                    continue
                problem = self.mismatch(o.model)
                if problem:
                    reasons.append(f"{o.label}: {problem}")
                    continue
                wrong = {}
                for path, node in o.model.walk():
                    if isinstance(node, File) and any(related(path, p) for p in scope):
                        allowed = o.modes.get(path, {node.mode})
                        mode = self.mode_in_s3(path)
                        if mode not in allowed:
                            wrong[path] = f"{mode:o} (allowed: {' '.join(f'{x:o}' for x in allowed)})"
                        node.mode = mode
                if wrong:
                    reasons.append(f"{o.label}: modes in S3 {wrong}")
                    continue
                self.model = o.model
                STATS[f"outcome: {what.split(' ')[0]} .. {o.label}"] += 1
                lost_known.update(w for w, _ in now_lost)
                for m in involved:
                    self.changed(m, *scope)
                return o.label
            raise AssertionError(f"{what}: results {results}, new lost+found {[digest(d) for _, d in now_lost]}; "
                                 "no legal outcome fits:\n  " + "\n  ".join(reasons))

        # -- concurrent steps ------------------------------------------------------------------
        @rule(m=mounts, d=names, f=names, dst=paths, seed=fill, length=lengths, trunc=st.booleans(),
              held=st.booleans())
        @logged
        def close_during_rename_of_its_directory(self, m, d, f, dst, seed, length, trunc, held):
            """On one mount: write+close of d/f while d is renamed (ownership: the close
            lands under the new name, or before the rename copied it)."""
            if not self.ensure_dir(m, (d,)) or not self.ensure_file(m, (d, f), seed + 1):
                return
            self.settle(m, (d,), dst)
            data = payload(seed, length)
            fd = os.open(self.real(m, (d, f)), os.O_WRONLY | (os.O_TRUNC if trunc else 0))
            model = copy.deepcopy(self.model)
            node = m_open_write(model, (d, f), trunc)
            write_into(node, 0, data)
            rename_result = as_result(outcome(lambda: m_rename(model, (d,), dst)))
            write_close = writer(fd, 0, data)
            rename = plain(lambda: os.rename(self.real(m, (d,)), self.real(m, dst)))
            if held:        # every copy of the rename is held: the close arrives during them
                self.hold(m, header="x-amz-copy-source")
                got_rename, got_close = self.pair(rename, write_close)
            else:           # the close's PUT is held: the rename arrives during the upload
                self.hold(m, method="PUT", path=f"/{bucket}/{self.key((d, f))}")
                got_close, got_rename = self.pair(write_close, rename)
            if rename_result == OK and data:
                STATS["close during dir rename: " + ("close while the copies are held" if held
                                                     else "rename while the PUT is held")] += 1
            self.conclude(f"close of {(d, f)} during rename {(d,)} -> {dst} on {LABEL[m]}",
                          (got_close, got_rename), [Outcome("one mount, owners serialized", model,
                                                            (OK, rename_result))], (m,), ((d,), dst))

        @rule(a=mounts, path=paths, seed=fill, length=lengths, offset=offsets, trunc=st.booleans(),
              held=st.booleans())
        @logged
        def unlink_during_upload(self, a, path, seed, length, offset, trunc, held):
            """Write+close on mount a while mount b unlinks the same file."""
            b = 1 - a
            if not self.ensure_file(a, path, seed + 1):
                return
            self.settle(a, path)
            self.settle(b, path)
            base = bytes(self.model.get(path).data)
            data = payload(seed, length)
            offset = 0 if trunc else offset
            pending = File()
            pending.data = bytearray(b"" if trunc else base)
            write_into(pending, offset, data)
            pending = bytes(pending.data)
            fd = os.open(self.real(a, path), os.O_WRONLY | (os.O_TRUNC if trunc else 0))
            write_close = writer(fd, offset, data)
            unlink = plain(lambda: os.unlink(self.real(b, path)))
            if held:
                self.hold(a, method="PUT", path=f"/{bucket}/{self.key(path)}")
                got_close, got_unlink = self.pair(write_close, unlink)
            else:
                self.hold(b, method="DELETE", path=f"/{bucket}/{self.key(path)}")
                got_unlink, got_close = self.pair(unlink, write_close)

            gone = copy.deepcopy(self.model)
            m_unlink(gone, path)
            outcomes = [Outcome("close, then unlink", gone, (OK, OK)),
                        Outcome("unlink, then the close loses", copy.deepcopy(gone), (CLOSE_EIO, OK), (pending,))]
            whole = trunc or not base or (offset == 0 and len(data) >= len(base))
            if whole:       # nothing of the deleted version in it: the close may create the name again
                again = copy.deepcopy(self.model)
                again.get(path).data = bytearray(pending)
                outcomes.append(Outcome("unlink, then the close creates it again", again, (OK, OK)))
            else:           # the bytes it needs from the deleted version are gone
                outcomes.append(Outcome("unlink, then the write finds its base gone", copy.deepcopy(gone),
                                        (WRITE_EIO, OK)))
            self.conclude(f"write+close {path} on {LABEL[a]} / unlink on {LABEL[b]}",
                          (got_close, got_unlink), outcomes, (a, b), (path,))

        @rule(a=mounts, dst=paths, seed=fill, length=lengths, held=st.booleans())
        @logged
        def rename_over_during_write(self, a, dst, seed, length, held):
            """Mount a publishes a temporary file by renaming it over dst while mount b
            writes dst whole (O_TRUNC) and closes it."""
            b = 1 - a
            src = dst[:-1] + ("t",)
            if not self.ensure_file(a, src, seed + 1) or not self.ensure_file(b, dst, seed + 2):
                return
            self.settle(a, src, dst)
            self.settle(b, src, dst)
            data = payload(seed, length)
            old_dst_mode = self.model.get(dst).mode
            src_mode = self.model.get(src).mode
            fd_box = {}

            def write_close():
                try:
                    fd_box["fd"] = os.open(self.real(b, dst), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                except OSError as exc:
                    return ("err", exc.errno, "open")
                return writer(fd_box["fd"], 0, data)()
            rename = plain(lambda: os.rename(self.real(a, src), self.real(a, dst)))
            if held:
                self.hold(a, header="x-amz-copy-source", path=f"/{bucket}/{self.key(dst)}")
                got_rename, got_write = self.pair(rename, write_close)
            else:
                self.hold(b, method="PUT", path=f"/{bucket}/{self.key(dst)}")
                got_write, got_rename = self.pair(write_close, rename)

            renamed_then_written = copy.deepcopy(self.model)
            m_rename(renamed_then_written, src, dst)
            renamed_then_written.get(dst).data = bytearray(data)
            written_then_renamed = copy.deepcopy(self.model)
            m_rename(written_then_renamed, src, dst)
            self.conclude(f"rename {src} -> {dst} on {LABEL[a]} / write+close {dst} on {LABEL[b]}",
                          (got_rename, got_write),
                          [Outcome("rename, then the write", renamed_then_written, (OK, OK),
                                   modes={dst: {src_mode, old_dst_mode}}),
                           Outcome("write, then the rename", written_then_renamed, (OK, OK))], (a, b), (src, dst))

        @rule(w=mounts, c=mounts, path=paths, seed=fill, length=lengths, offset=offsets, trunc=st.booleans(),
              mode=modes, held=st.booleans())
        @logged
        def chmod_during_write(self, w, c, path, seed, length, offset, trunc, mode, held):
            """Write+close on mount w while mount c (the same or the other) chmods the file."""
            if not self.ensure_file(w, path, seed + 1):
                return
            self.settle(w, path)
            self.settle(c, path)
            node = self.model.get(path)
            base, old_mode = bytes(node.data), node.mode
            data = payload(seed, length)
            offset = 0 if trunc else offset
            pending = File()
            pending.data = bytearray(b"" if trunc else base)
            write_into(pending, offset, data)
            pending = bytes(pending.data)
            fd = os.open(self.real(w, path), os.O_WRONLY | (os.O_TRUNC if trunc else 0))
            write_close = writer(fd, offset, data)
            chmod = plain(lambda: os.chmod(self.real(c, path), mode))
            if held:
                self.hold(w, method="PUT", path=f"/{bucket}/{self.key(path)}")
                got_write, got_chmod = self.pair(write_close, chmod)
            else:
                self.hold(c, header="x-amz-copy-source", path=f"/{bucket}/{self.key(path)}")
                got_chmod, got_write = self.pair(chmod, write_close)

            def state(content, new_mode):
                model = copy.deepcopy(self.model)
                model.get(path).data = bytearray(content)
                model.get(path).mode = new_mode
                return model
            if w == c:      # one owner at a time: both take effect
                outcomes = [Outcome("one mount: data and mode", state(pending, mode), (OK, OK))]
            else:
                outcomes = [Outcome("close, then chmod", state(pending, mode), (OK, OK)),
                            Outcome("chmod, then the close (with its own mode)", state(pending, mode), (OK, OK),
                                    modes={path: {mode, old_mode}}),
                            Outcome("chmod, then the close loses", state(base, mode), (CLOSE_EIO, OK), (pending,)),
                            Outcome("chmod, then the write finds its base changed", state(base, mode),
                                    (WRITE_EIO, OK))]
            self.conclude(f"write+close {path} on {LABEL[w]} / chmod {mode:o} on {LABEL[c]}",
                          (got_write, got_chmod), outcomes, {w, c}, (path,))

        @rule(path=paths, seed_a=fill, seed_b=fill, len_a=lengths, len_b=lengths, held=mounts)
        @logged
        def two_whole_writes(self, path, seed_a, seed_b, len_a, len_b, held):
            """Mount A and mount B both write `path` whole (O_TRUNC) and close at once."""
            node = self.node_at(path)
            if node is Fail or (node is not None and not isinstance(node, File)):
                return
            try:
                self.model.parent(path)
            except Fail:
                return
            self.settle(0, path)
            self.settle(1, path)
            datas = (payload(seed_a, len_a), payload(seed_b ^ 0x5A, len_b))
            existed = isinstance(node, File)

            def whole(m):
                def run():
                    try:
                        fd = os.open(self.real(m, path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                    except OSError as exc:
                        return ("err", exc.errno, "open")
                    return writer(fd, 0, datas[m])()
                return run
            self.hold(held, method="PUT", path=f"/{bucket}/{self.key(path)}")
            first, second = self.pair(whole(held), whole(1 - held))
            got = (first, second) if held == 0 else (second, first)

            def state(content):
                model = copy.deepcopy(self.model)
                m_open_write(model, path, True).data[:] = content
                return model
            outcomes = [Outcome("A, then B", state(datas[1]), (OK, OK)),
                        Outcome("B, then A", state(datas[0]), (OK, OK))]
            if not existed:     # both created the name: If-None-Match lets one win
                outcomes += [Outcome("A created it, B loses", state(datas[0]), (OK, CLOSE_EIO), (datas[1],)),
                             Outcome("B created it, A loses", state(datas[1]), (CLOSE_EIO, OK), (datas[0],))]
            self.conclude(f"O_TRUNC writes of {path} on A and B", got, outcomes, (0, 1), (path,))

    return SharedMachine


def test_two_mounts_with_concurrent_steps_match_the_model(s3, bucket, mount, seaweed, tmp_path):
    target = urllib.parse.urlsplit(seaweed.endpoint)
    proxies = [FaultProxy(target.hostname, target.port), FaultProxy(target.hostname, target.port)]
    mnts = []
    try:
        states = []
        for proxy, name in zip(proxies, ("state-a", "state-b"), strict=True):
            proxy.forward()
            state = tmp_path / name
            state.mkdir()
            states.append(state)
            mnts.append(mount(bucket, f"url={proxy.url}", f"stat_cache_expire={TTL:g}",
                              f"negative_cache_expire={TTL:g}", f"tmpdir={state}"))
        STATS.clear()
        FIRST_FAILURE.clear()
        started = time.monotonic()
        run_state_machine_as_test(make_machine(mnts, proxies, states, s3, bucket), settings=SETTINGS)
        STATS["seconds in all"] = time.monotonic() - started
    finally:
        for what, count in sorted(STATS.items()):
            print(f"{what}: {count:g}")
        if FIRST_FAILURE:
            print(f"first failure of the run, after these steps:\n{FIRST_FAILURE[0]}")
        for m in mnts:
            m.unmount()
        for proxy in proxies:
            proxy.close()
