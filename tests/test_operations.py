"""The FUSE adapter: errors become errnos, bugs become EIO instead of a dead mount."""

from __future__ import annotations

import errno

import pyfuse3
import pytest

from s3pyfs.core import Config
from s3pyfs.errors import NotEmpty
from s3pyfs.metadata import Defaults
from s3pyfs.operations import Operations

pytestmark = pytest.mark.trio


class ExplodingCore:
    """Stands in for Filesystem: one method raises a bug, one a filesystem error."""

    def __init__(self):
        self.cfg = Config(defaults=Defaults(0, 0))
        self.invalidate_entry = None

    async def getattr(self, ino):
        raise KeyError("a bug in the core")

    async def rmdir(self, parent, name):
        raise NotEmpty(name)


async def test_unexpected_exception_is_logged_once_and_answered_with_eio(caplog):
    ops = Operations(ExplodingCore())
    with pytest.raises(pyfuse3.FUSEError) as info:
        await ops.getattr(1, None)
    assert info.value.errno == errno.EIO
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 1 and "getattr" in tracebacks[0].getMessage()


async def test_filesystem_errors_keep_their_errno():
    ops = Operations(ExplodingCore())
    with pytest.raises(pyfuse3.FUSEError) as info:
        await ops.rmdir(1, b"full", None)
    assert info.value.errno == errno.ENOTEMPTY


async def test_tests_can_ask_for_bugs_to_be_raised():
    ops = Operations(ExplodingCore())
    ops.reraise_unexpected = True
    with pytest.raises(KeyError):
        await ops.getattr(1, None)
