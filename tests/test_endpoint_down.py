"""A dead or hanging endpoint: calls fail with EIO in bounded time, the mount survives."""

from __future__ import annotations

import errno
import os
import time

import pytest
from support import timed

pytestmark = pytest.mark.mounted

# request_timeout=4 bounds each system call (tests/test_timeouts.py), plus slack for a loaded machine
BOUND = 10


@pytest.mark.parametrize("failure", ["refuse", "stall"])
def test_unreachable_endpoint_gives_eio_then_recovers(s3, bucket, mount, proxy, failure):
    s3.put_object(Bucket=bucket, Key="dir/file", Body=b"payload")
    s3.put_object(Bucket=bucket, Key="other/file", Body=b"payload")
    m = mount(bucket, f"url={proxy.url}", "retries=2,connect_timeout=1,readwrite_timeout=2,request_timeout=4",
              "stat_cache_expire=0.5")
    assert (m.path / "dir" / "file").read_bytes() == b"payload"
    getattr(proxy, failure)()
    time.sleep(1)                                      # let cached attributes expire
    code, took = timed(lambda: os.listdir(m.path / "other"))
    assert code == errno.EIO and took < BOUND, (code, took)
    code, took = timed(lambda: (m.path / "new").write_bytes(b"x"))
    assert code == errno.EIO and took < BOUND, (code, took)
    proxy.forward()
    assert (m.path / "other" / "file").read_bytes() == b"payload"    # same mount works again
    assert m.proc.poll() is None
