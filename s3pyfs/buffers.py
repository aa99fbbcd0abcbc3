"""Reused part buffers for downloads.

Responsibility: a new 8 MiB bytearray is zero-filled (and its pages faulted
in) before a GET body overwrites it: about an eighth of the mounter's CPU on
a cold sequential read.  `take(n)` hands out a kept buffer of exactly n bytes
when there is one, `give(buf)` keeps a buffer nobody else refers to.
Invariants:
  * A buffer is kept only when the caller's reference is the last one
    (reference count checked; a memoryview of it, e.g. a FUSE reply, holds a
    reference), so a kept buffer is never visible to anyone while it is
    overwritten.  Callers drop their own references when they give.
  * At most `KEEP` buffers of at most `LARGEST` bytes are kept (process-wide:
    a process serves one mount); they are outside the memory budget, which
    charges buffers only while they are in use.
  * Trio thread only (no locking).
"""

from __future__ import annotations

import sys

KEEP = 4
LARGEST = 16 * 1024 * 1024
_kept: list[bytearray] = []


def take(size: int) -> bytearray:
    for i, buf in enumerate(_kept):
        if len(buf) == size:
            return _kept.pop(i)
    return bytearray(size)


def give(buf) -> None:
    """Keep `buf` for a later `take` if nothing else refers to it (the caller's own
    reference, the argument and getrefcount's make three)."""
    if (type(buf) is bytearray and len(buf) <= LARGEST and len(_kept) < KEEP
            and sys.getrefcount(buf) <= 3):
        _kept.append(buf)
