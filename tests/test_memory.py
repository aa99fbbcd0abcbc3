"""Memory and request bounds of the whole mount (budget.py, S3Client's request limiter,
Stream.kick's cost per write) and the peak RSS of a mount under many readers/writers.

Unit tests run without FUSE; the RSS tests mount SeaweedFS at the default options and read
the s3pyfs process's VmHWM (peak resident set) from /proc.
"""

from __future__ import annotations

import asyncio
import threading

import pytest
import trio

from s3pyfs.budget import MemoryBudget
from s3pyfs.reader import ObjectReader
from s3pyfs.streaming import Stream

MiB = 1024 * 1024


# ---------------------------------------------------------------------- budget.py
@pytest.mark.trio
async def test_waiters_are_admitted_in_arrival_order(autojump_clock):
    budget = MemoryBudget(10)
    budget.reserve(8)
    order = []

    async def want(name, n):
        await budget.acquire(n)
        order.append(name)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(want, "big", 6)
        await trio.sleep(1)
        nursery.start_soon(want, "small", 1)     # fits now, but must not overtake "big"
        await trio.sleep(1)
        assert order == []
        assert budget.waiting == 2
        budget.release(4)                        # room for "big" only (4 + 6 = 10)
        await trio.sleep(1)
        assert order == ["big"]
        assert budget.waiting == 1
        budget.release(6)
    assert order == ["big", "small"]
    assert budget.used == 5


@pytest.mark.trio
async def test_request_larger_than_the_budget_is_admitted_alone(autojump_clock):
    budget = MemoryBudget(10)
    budget.reserve(3)
    admitted = trio.Event()

    async def huge():
        await budget.acquire(100)
        admitted.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(huge)
        await trio.sleep(1)
        assert not admitted.is_set()             # not while anything else is held
        budget.release(3)
        await admitted.wait()
        assert budget.used == 100
        assert not budget.try_acquire(1)         # and nothing joins it
        budget.release(100)
    assert budget.used == 0


@pytest.mark.trio
async def test_cancelled_waiter_leaves_the_queue_and_lets_the_next_in(autojump_clock):
    budget = MemoryBudget(10)
    budget.reserve(5)
    got = []

    async def want(n):
        await budget.acquire(n)
        got.append(n)

    big = trio.CancelScope()

    async def cancellable(n):
        with big:
            await want(n)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(cancellable, 9)
        await trio.sleep(1)
        nursery.start_soon(want, 4)
        await trio.sleep(1)
        assert got == []                         # 4 fits, but waits behind 9
        big.cancel()
    assert got == [4]
    assert budget.used == 9


class FakeObject:
    """An object of `size` bytes: fetch(start, end[, etag]) counting requests."""

    def __init__(self, size):
        self.size = size
        self.requests = []

    async def fetch(self, start, end, etag=None):
        self.requests.append((start, end))
        await trio.sleep(0.01)
        return _pattern(start, end)


def _pattern(start, end):
    # byte i of the object is (i // 4096) % 251: cheap to build, position dependent
    out = bytearray()
    i = start
    while i < end:
        stop = min(end, (i // 4096 + 1) * 4096)
        out += bytes([(i // 4096) % 251]) * (stop - i)
        i = stop
    return bytes(out)


async def _read_all(reader, size, chunk=MiB, parts=None):
    data = []
    offset = 0
    while offset < size:
        piece = await reader.read(offset, chunk)
        assert piece, "short read"
        data.append(piece)
        offset += len(piece)
        if parts is not None:
            parts.append(len(reader._parts))
    return b"".join(data)


@pytest.mark.trio
@pytest.mark.parametrize("room_parts", [64, 0])
async def test_pressure_shrinks_read_ahead_but_the_reader_still_progresses(autojump_clock, room_parts):
    part = MiB
    size = 24 * MiB
    obj = FakeObject(size)
    budget = MemoryBudget(64 * part)
    budget.reserve(64 * part - room_parts * part)       # someone else holds the rest
    async with trio.open_nursery() as nursery:
        reader = ObjectReader(obj.fetch, size, spawn=nursery.start_soon, part=part, max_ahead=6,
                              parallel=4, budget=budget)
        parts_held = []
        data = await _read_all(reader, size, parts=parts_held)
        reader.close()
    assert data == _pattern(0, size)
    assert budget.used == 64 * part - room_parts * part      # every part given back
    if room_parts:
        assert max(parts_held) >= 5                            # the window grew with room
    else:
        assert max(parts_held) <= 2                            # current part + one behind only
        assert budget.peak <= 64 * part + 2 * part             # overshoot: the parts being read


@pytest.mark.trio
async def test_many_readers_and_writers_on_a_tiny_budget_do_not_deadlock(autojump_clock):
    """Readers reserve, read ahead when they can, writers wait: all finish (a deadlock
    would leave them waiting until the deadline, which the autojump clock reaches at once)."""
    part = MiB
    budget = MemoryBudget(3 * part)
    size = 12 * MiB
    results = {}

    async def reader(n, nursery):
        obj = FakeObject(size)
        r = ObjectReader(obj.fetch, size, spawn=nursery.start_soon, part=part, max_ahead=6, parallel=3,
                         budget=budget)
        results[n] = await _read_all(r, size, chunk=256 * 1024) == _pattern(0, size)
        r.close()

    async def writer(n):
        for _ in range(6):
            async with budget.held(2 * part):
                await trio.sleep(0.05)
        results[f"w{n}"] = True

    with trio.fail_after(3600):
        async with trio.open_nursery() as background:
            async with trio.open_nursery() as nursery:
                for n in range(8):
                    nursery.start_soon(reader, n, background)
                    nursery.start_soon(writer, n)
    assert len(results) == 16 and all(results.values())
    assert budget.used == 0


# ---------------------------------------------------------------------- Stream.kick
class _NoClient:
    memory = MemoryBudget(1 << 40)


def test_stream_kick_examines_a_bounded_number_of_parts_per_write():
    """A 100 GiB file written sequentially must not rescan every earlier part on each
    write: count the parts `kick` examines per write (not the time it takes)."""
    part = 8 * MiB
    started = []
    stream = Stream(_NoClient(), "k", {}, part, parallel=4, spawn=lambda fn, fd, index: started.append(index))
    examined = 0
    real_current = stream._current

    def counting(index):
        nonlocal examined
        examined += 1
        return real_current(index)
    stream._current = counting
    writes = 0
    chunk = MiB
    for offset in range(0, 2000 * part, chunk):       # ~16 GiB worth of 1 MiB writes
        stream.note_write(offset, offset + chunk, writes + 1)
        stream.kick(fd=-1)
        writes += 1
        for index in list(stream.inflight):          # the uploads finish at once
            stream.done[index] = (stream.part_gen.get(index, 0), "etag")
            stream.inflight.pop(index)
    assert sorted(started) == list(range(2000))        # every full part went up exactly once
    assert examined <= 2 * writes, f"{examined} parts examined for {writes} writes"


# ---------------------------------------------------------------------- request limiter
@pytest.mark.trio
async def test_one_request_limiter_and_the_deadline_starts_with_a_slot(moto_server):
    """16 requests through a client with 2 slots: never more than 2 run at once, and those
    that waited for a slot longer than request_timeout still succeed."""
    from s3pyfs.credentials import StaticKeys
    from s3pyfs.s3client import ClientSettings, open_client
    settings = ClientSettings(bucket="none", endpoint_url=moto_server.endpoint, path_style=True,
                              static_keys=StaticKeys("test", "test"), retries=1, request_timeout=2,
                              max_connections=2)
    lock = threading.Lock()
    running = 0
    most = 0

    async def op():
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        await asyncio.sleep(0.3)
        with lock:
            running -= 1
        return "ok"

    async with open_client(settings) as client:
        results = []

        async def one():
            results.append(await client._do("TEST", op))
        async with trio.open_nursery() as nursery:
            for _ in range(16):
                nursery.start_soon(one)
    assert results == ["ok"] * 16
    assert most == 2


def test_multipart_size_must_fit_the_memory_budget_twice():
    from s3pyfs.cli import parse_args
    from s3pyfs.errors import UsageError
    with pytest.raises(UsageError, match="max_memory"):
        parse_args(["bucket", "/mnt", "-o", "multipart_size=200,max_memory=256"])
    opts = parse_args(["bucket", "/mnt", "-o", "multipart_size=128,max_memory=256"])
    assert opts.max_memory == 256


# ---------------------------------------------------------------------- peak RSS of a mount
RSS_LIMIT_MIB = 512


def test_peak_rss_of_16_concurrent_sequential_readers(mount, bucket, s3):
    import memory_load
    sizes, data = memory_load.put_reader_objects(s3, bucket, 16)
    m = mount(bucket)
    memory_load.reset_peak_rss(m.proc.pid)
    memory_load.read_concurrently(m.path, sizes, data)
    peak = memory_load.peak_rss_mib(m.proc.pid)
    print(f"peak RSS, 16 readers of 64-79 MiB: {peak:.0f} MiB")
    assert peak < RSS_LIMIT_MIB, f"peak RSS {peak:.0f} MiB with 16 concurrent readers"


def test_peak_rss_of_32_concurrent_writers(mount, bucket, s3):
    import memory_load
    m = mount(bucket)
    memory_load.reset_peak_rss(m.proc.pid)
    names = memory_load.write_concurrently(m.path / "out", 32, 64 * MiB)
    peak = memory_load.peak_rss_mib(m.proc.pid)
    print(f"peak RSS, 32 writers of 64 MiB: {peak:.0f} MiB")
    for name in names:                           # every file arrived whole
        assert s3.head_object(Bucket=bucket, Key=f"out/{name}")["ContentLength"] == 64 * MiB
    assert peak < RSS_LIMIT_MIB, f"peak RSS {peak:.0f} MiB with 32 concurrent writers"
