"""One bound per system call: with the endpoint hanging, each call that needs S3 ends with
EIO about `request_timeout` seconds after it began, whatever it does inside (lookup then
listing, HEAD then GET, an upload behind a background retry holding the file's lock), and
dirty data refused that way stays staged and reaches S3 once the endpoint is back.

Two ways of hanging: a proxy that accepts connections and never answers ("blackhole"), and
the SeaweedFS server stopped with SIGSTOP ("sigstop": the kernel still accepts
connections; SIGCONT in the fixture's teardown, whatever happens).  The old code took at
least twice `request_timeout` for these calls, or hung.  The unit tests below check the
deadline plumbing itself (concurrency.py, operations.py) on trio's autojump clock.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import threading
import time
import types

import pyfuse3
import pytest
import trio
from support import wait_until

from s3pyfs.concurrency import Deadline, Progress, background_spawner, bounded, carry, current_deadline, drop, waiting
from s3pyfs.core import Config
from s3pyfs.errors import RemoteTimeout
from s3pyfs.metadata import Defaults
from s3pyfs.operations import Operations

T = 6                 # request_timeout of these mounts
FAST = f"retries=3,connect_timeout=1,readwrite_timeout=2,request_timeout={T},stat_cache_expire=0.5"
BOUND = 1.5 * T + 2   # T (+ 2 s for the kernel's second try), slack for a loaded machine; the old code took 2 T
GIVE_UP = 120         # a call still blocked after this long counts as hung (it is released at teardown)


@contextlib.contextmanager
def carrying(deadline):
    """The block runs as a system call with `deadline` (what operations._guard does)."""
    token = carry(deadline)
    try:
        yield
    finally:
        drop(token)


@pytest.fixture(params=["blackhole", "sigstop"])
def outage(request, seaweed, proxy):
    """`.url` to mount; `.begin()` makes the endpoint hang, `.end()` brings it back."""
    down = {"now": False}
    if request.param == "blackhole":
        url, hang, back = proxy.url, proxy.stall, proxy.forward
    else:
        url = seaweed.endpoint
        hang = lambda: os.kill(seaweed.proc.pid, signal.SIGSTOP)     # noqa: E731
        back = lambda: os.kill(seaweed.proc.pid, signal.SIGCONT)     # noqa: E731

    def begin():
        down["now"] = True
        hang()

    def end():
        back()
        down["now"] = False
    yield types.SimpleNamespace(url=url, begin=begin, end=end, kind=request.param)
    if down["now"]:             # a failed test: the endpoint comes back before the unmount
        end()


def blocked_call(fn) -> tuple[int | None, float]:
    """(errno of the OSError `fn` raised, or None; seconds it took), `fn` run in a thread
    so a call that hangs fails the test instead of blocking it (inf seconds then)."""
    result: list = []

    def run():
        started = time.monotonic()
        try:
            fn()
            result.append((None, time.monotonic() - started))
        except OSError as exc:
            result.append((exc.errno, time.monotonic() - started))
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(GIVE_UP)
    outcome = result[0] if result else (None, float("inf"))
    return outcome


def test_each_call_gets_eio_within_one_request_timeout_and_dirty_data_survives(s3, bucket, mount, outage):
    s3.put_object(Bucket=bucket, Key="seen/unread", Body=b"never read")
    s3.put_object(Bucket=bucket, Key="seen/opened", Body=b"opened, never read")
    s3.put_object(Bucket=bucket, Key="unlisted/file", Body=b"payload")
    m = mount(bucket, f"url={outage.url}", FAST)
    assert (m.path / "seen" / "unread").stat().st_size == len(b"never read")    # known, never read
    reader = os.open(m.path / "seen" / "opened", os.O_RDONLY)
    writer = os.open(m.path / "dirty", os.O_CREAT | os.O_WRONLY, 0o644)
    os.write(writer, b"written before; ")
    os.fsync(writer)                                       # in S3: the rest is new dirty data
    results = {}
    try:
        outage.begin()
        time.sleep(1)                                      # cached attributes expire (0.5 s)
        results["ls of an unlisted directory"] = blocked_call(lambda: os.listdir(m.path / "unlisted"))
        results["cat of an unread file"] = blocked_call(lambda: (m.path / "seen" / "unread").read_bytes())
        results["read of an open, unread file"] = blocked_call(lambda: os.read(reader, 4096))

        def write_and_fsync():
            os.write(writer, b"written during the outage")
            os.fsync(writer)
        results["write+fsync"] = blocked_call(write_and_fsync)
        time.sleep(3)                                      # the background retry of the upload has begun
    finally:
        results["close of the dirty file"] = blocked_call(lambda: os.close(writer))
        os.close(reader)
    outage.end()
    print(outage.kind, {what: (code, round(took, 1)) for what, (code, took) in results.items()})
    late = {what: (code, round(took, 1)) for what, (code, took) in results.items()
            if code != errno.EIO or took >= BOUND}
    assert not late, f"{outage.kind}: calls without EIO within {BOUND} s: {late}"
    # the mount works again by itself, and the refused data was kept, not dropped
    assert wait_until(lambda: _lists(m.path / "unlisted"), timeout=60, interval=0.5)
    assert (m.path / "seen" / "unread").read_bytes() == b"never read"
    assert m.unmount(timeout=120) == 0
    body = s3.get_object(Bucket=bucket, Key="dirty")["Body"].read()
    assert body == b"written before; written during the outage"


def _lists(path) -> bool:
    try:
        return os.listdir(path) == ["file"]
    except OSError:
        return False


# ---------------------------------------------------------------------------------- unit tests
# (trio's autojump clock: "seconds" below are virtual, the assertions exact)

async def hang() -> None:
    await trio.sleep(1000)


@pytest.mark.trio
async def test_one_deadline_bounds_a_chain_of_requests(autojump_clock):
    """Two requests one after the other, each allowed 10 s: together they end by the
    system call's 10 s, not after 20."""
    start = trio.current_time()
    with carrying(Deadline(10, Progress())):
        for _ in range(2):
            with pytest.raises(trio.TooSlowError):
                with bounded(trio.current_time() + 10):
                    await hang()
    assert trio.current_time() - start == pytest.approx(10)


@pytest.mark.trio
async def test_an_answer_from_s3_moves_the_deadline_of_a_call_in_flight(autojump_clock):
    progress = Progress()
    start = trio.current_time()

    async def answers_at(seconds):
        await trio.sleep(seconds)
        progress.answered()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(answers_at, 8)
        with carrying(Deadline(10, progress)):
            with pytest.raises(trio.TooSlowError):
                with bounded():
                    await hang()
    assert trio.current_time() - start == pytest.approx(18)


@pytest.mark.trio
async def test_background_work_started_by_a_call_carries_no_deadline(autojump_clock):
    seen = {}

    async def work(who):
        seen[who] = current_deadline()
    async with trio.open_nursery() as nursery:
        spawn = background_spawner(nursery)
        with carrying(Deadline(10, Progress())):
            spawn(work, "background")
            nursery.start_soon(work, "part")     # a part of the call itself (run_all) shares it
    assert seen["background"] is None and isinstance(seen["part"], Deadline)


@pytest.mark.trio
async def test_a_lock_wait_ends_at_the_deadline(autojump_clock):
    lock = trio.Lock()
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        async def holder(task_status=trio.TASK_STATUS_IGNORED):
            async with lock:
                task_status.started()
                await trio.sleep(100)         # e.g. an upload in the background
        await nursery.start(holder)
        with carrying(Deadline(10, Progress())), pytest.raises(RemoteTimeout):
            with waiting("another upload"):
                await lock.acquire()
        nursery.cancel_scope.cancel()
    assert trio.current_time() - start == pytest.approx(10)


class _Client:
    def __init__(self):
        self.progress = Progress()

    def deadline(self):
        return Deadline(10, self.progress)


class _HangingFs:
    """Stands in for Filesystem: every lookup waits for S3 until its deadline."""

    def __init__(self):
        self.cfg = Config(defaults=Defaults(0, 0))
        self.core = type("Core", (), {"client": _Client()})()
        self.lookups = 0

    async def lookup(self, parent, name):
        self.lookups += 1
        try:
            with bounded():
                await hang()
        except trio.TooSlowError:
            raise RemoteTimeout("HEAD: no answer") from None


@pytest.mark.trio
async def test_the_kernels_second_lookup_after_a_timeout_gets_little_time(autojump_clock):
    """The kernel follows a LOOKUP that failed to revalidate a cached entry with a fresh
    LOOKUP of the same name: that one gets 2 s, not another request_timeout (10 s here),
    until S3 answers again.  It is still asked (the endpoint may just have come back)."""
    fs = _HangingFs()
    ops = Operations(fs)
    start = trio.current_time()
    for _ in range(2):
        with pytest.raises(pyfuse3.FUSEError) as info:
            await ops.lookup(1, b"name")
        assert info.value.errno == errno.EIO
    assert trio.current_time() - start == pytest.approx(12) and fs.lookups == 2
    fs.core.client.progress.answered()         # S3 answered since: a whole request_timeout again
    with pytest.raises(pyfuse3.FUSEError):
        await ops.lookup(1, b"name")
    assert fs.lookups == 3 and trio.current_time() - start == pytest.approx(22)
