"""One bound per system call: with the endpoint hanging, each call that needs S3 ends with
EIO about `request_timeout` seconds after it began, whatever it does inside (lookup then
listing, HEAD then GET, an upload behind a background retry holding the file's lock), and
dirty data refused that way stays staged and reaches S3 once the endpoint is back.

Two ways of hanging: a proxy that accepts connections and never answers ("blackhole"), and
the SeaweedFS server stopped with SIGSTOP ("sigstop": the kernel still accepts
connections; SIGCONT in the fixture's teardown, whatever happens).  The old code took at
least twice `request_timeout` for these calls, or hung.
"""

from __future__ import annotations

import errno
import os
import signal
import threading
import time
import types

import pytest

from support import wait_until

pytestmark = pytest.mark.mounted

T = 6                 # request_timeout of these mounts
FAST = f"retries=3,connect_timeout=1,readwrite_timeout=2,request_timeout={T},stat_cache_expire=0.5"
BOUND = 1.5 * T + 2   # T, plus slack for the kernel and a loaded machine; the old code took 2 T or more
GIVE_UP = 120         # a call still blocked after this long counts as hung (it is released at teardown)


@pytest.fixture(params=["blackhole", "sigstop"])
def outage(request, seaweed, proxy):
    """`.url` to mount; `.begin()` makes the endpoint hang, `.end()` brings it back."""
    state = {"stopped": False}
    if request.param == "blackhole":
        begin, end, url = proxy.stall, proxy.forward, proxy.url
    else:
        def begin():
            os.kill(seaweed.proc.pid, signal.SIGSTOP)
            state["stopped"] = True

        def end():
            os.kill(seaweed.proc.pid, signal.SIGCONT)
            state["stopped"] = False
        url = seaweed.endpoint
    yield types.SimpleNamespace(url=url, begin=begin, end=end, kind=request.param)
    if state["stopped"]:
        os.kill(seaweed.proc.pid, signal.SIGCONT)


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
    print(f"{getattr(fn, '__name__', fn)}: errno {outcome[0]} after {outcome[1]:.1f} s")
    return outcome


def test_each_call_gets_eio_within_one_request_timeout_and_dirty_data_survives(s3, bucket, mount, outage):
    s3.put_object(Bucket=bucket, Key="seen/unread", Body=b"never read")
    s3.put_object(Bucket=bucket, Key="unlisted/file", Body=b"payload")
    m = mount(bucket, f"url={outage.url}", FAST)
    assert (m.path / "seen" / "unread").stat().st_size == len(b"never read")    # known, never read
    fd = os.open(m.path / "dirty", os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        os.write(fd, b"written before; ")
        os.fsync(fd)                                       # in S3: the rest is new dirty data
        outage.begin()
        time.sleep(1)                                      # cached attributes expire (0.5 s)

        code, took = blocked_call(lambda: os.listdir(m.path / "unlisted"))
        assert code == errno.EIO and took < BOUND, ("ls", outage.kind, code, took)
        code, took = blocked_call(lambda: (m.path / "seen" / "unread").read_bytes())
        assert code == errno.EIO and took < BOUND, ("cat", outage.kind, code, took)

        def write_and_fsync():
            os.write(fd, b"written during the outage")
            os.fsync(fd)
        code, took = blocked_call(write_and_fsync)
        assert code == errno.EIO and took < BOUND, ("write+fsync", outage.kind, code, took)
        time.sleep(3)                                      # the background retry of the upload has begun
    finally:
        code, took = blocked_call(lambda: os.close(fd))
    assert code == errno.EIO and took < BOUND, ("close", outage.kind, code, took)

    outage.end()
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
