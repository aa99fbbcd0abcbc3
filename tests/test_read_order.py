"""A sequential reader whose requests arrive a little out of order streams on.

The kernel sends the FUSE read requests of one read-ahead window together and
they can reach the filesystem out of order (seen with read_ahead_kb of 4-8 MiB:
requests 10, 14..21, then 11..13).  The late ones must be answered from the
parts already fetched, not taken for a seek that drops the parts and fetches
them again (which multiplied the bytes fetched and GETs in flight).
"""

from __future__ import annotations

import os

import pytest
import trio

from s3pyfs import buffers
from s3pyfs.reader import ObjectReader

pytestmark = pytest.mark.trio

MiB = 1024 * 1024
PART = 8 * MiB


def kernel_order(count: int, group: int = 11, late: int = 3) -> list[int]:
    """1 MiB request indexes: in order, except that the first `late` requests of
    every group of `group` arrive after the rest of it."""
    order = list(range(min(3, count)))
    for start in range(3, count, group):
        block = list(range(start, min(start + group, count)))
        order += block[late:] + block[:late]
    return order


async def test_late_read_ahead_requests_do_not_refetch_parts():
    source = os.urandom(12 * PART + 12345)
    fetched: list[tuple[int, int]] = []

    async def fetch(start: int, end: int, etag: str | None = None) -> bytearray:
        await trio.sleep(0.001)            # bodies arrive later than the requests
        buf = buffers.take(end - start)
        buf[:] = source[start:end]
        fetched.append((start, end))
        return buf

    requests = kernel_order((len(source) + MiB - 1) // MiB)
    assert requests != sorted(requests)    # the pattern really is out of order
    async with trio.open_nursery() as nursery:
        reader = ObjectReader(fetch, len(source), spawn=nursery.start_soon, part=PART,
                              max_ahead=6, parallel=6, etag='"e"')
        for index in requests:
            offset = index * MiB
            answer = await reader.read(offset, MiB)
            assert bytes(answer) == source[offset:offset + MiB], index
        reader.close()
    parts = [start for start, end in fetched if end - start > MiB]
    assert sorted(parts) == sorted(set(parts)), "a part was fetched twice"
    total = sum(end - start for start, end in fetched)
    # every part once, plus a few exact 1 MiB reads of requests later than the part kept behind
    assert total < len(source) + PART, total / MiB
