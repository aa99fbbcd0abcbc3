"""Reused part buffers (buffers.py) never change bytes a reader already answered with.

The reader answers memoryview slices of its part buffers and gives parts back
for reuse when it moves on; a reply still held (as pyfuse3 holds it until
the kernel has it) must keep its bytes while later parts are received.
"""

from __future__ import annotations

import os

import pytest

from s3pyfs import buffers
from s3pyfs.reader import ObjectReader

pytestmark = pytest.mark.trio

MiB = 1024 * 1024


async def test_give_keeps_only_unreferenced_buffers():
    buffers._kept.clear()
    held = bytearray(10)
    view = memoryview(held)[2:4]
    buffers.give(held)              # a view refers to it: not kept
    assert buffers._kept == []
    view.release()
    buffers.give(bytearray(10))     # nobody else refers to it: kept, and handed out again
    assert len(buffers._kept) == 1
    again = buffers.take(10)
    assert len(again) == 10 and buffers._kept == []


async def test_answers_keep_their_bytes_while_parts_are_reused():
    part = 1 * MiB
    source = os.urandom(12 * part)
    fetched = []

    async def fetch(start: int, end: int) -> bytearray:
        buf = buffers.take(end - start)       # as s3get.py receives bodies
        buf[:] = source[start:end]
        fetched.append(start)
        return buf

    buffers._kept.clear()
    reader = ObjectReader(fetch, len(source), part=part, max_ahead=2, parallel=2)
    kept = []
    step = 128 * 1024
    for offset in range(0, len(source), step):
        answer = await reader.read(offset, step)
        assert bytes(answer) == source[offset:offset + step]
        if offset % (3 * part) == 0:
            kept.append((offset, answer))     # held on, like a reply not yet sent
    reader.close()
    assert len(fetched) >= 10                 # parts really were fetched (and buffers recycled)
    for offset, answer in kept:
        assert bytes(answer) == source[offset:offset + step], offset
