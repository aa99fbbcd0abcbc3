"""Extended attributes are off unless `use_xattr` is given, as in s3fs.

Off, the kernel is told once (ENOSYS) and then answers every xattr call itself:
`ls -l`'s security.selinux probe and write()'s security.capability probe stop
costing a request to the mount per file.  Attributes stored by a mount with
`use_xattr` (or by s3fs) must survive a mount without it.
"""

from __future__ import annotations

import base64
import errno
import json
import os
import urllib.parse

import pytest
import support
from test_monitoring_mounted import scrape, value

pytestmark = pytest.mark.mounted


def _xattr_header(s3, bucket, key) -> dict:
    raw = s3.head_object(Bucket=bucket, Key=key)["Metadata"]["xattr"]
    return {k: base64.b64decode(v) for k, v in json.loads(urllib.parse.unquote(raw)).items()}


def test_without_use_xattr_the_kernel_stops_asking_and_calls_say_not_supported(bucket, mount):
    port = support.free_ports(1)[0]
    m = mount(bucket, f"metrics=127.0.0.1:{port}")
    for i in range(30):
        (m.path / f"f{i}").write_bytes(b"x" * i)
    for call in (lambda p: os.getxattr(p, "user.tag"), lambda p: os.setxattr(p, "user.tag", b"1"),
                 lambda p: os.listxattr(p), lambda p: os.removexattr(p, "user.tag")):
        with pytest.raises(OSError) as info:
            call(m.path / "f1")
        assert info.value.errno == errno.EOPNOTSUPP
    before = scrape(port)
    for i in range(30):
        path = m.path / f"f{i}"
        os.lstat(path)
        for name in ("security.selinux", "user.tag"):
            with pytest.raises(OSError):
                os.getxattr(path, name, follow_symlinks=False)
        with open(path, "ab") as fh:          # write(): the kernel's security.capability probe
            fh.write(b"y")
    after = scrape(port)
    asked = sum(value(after, "s3pyfs_fuse_operations_total", operation=op) -
                value(before, "s3pyfs_fuse_operations_total", operation=op)
                for op in ("getxattr", "setxattr", "listxattr", "removexattr"))
    assert asked == 0, f"{asked} xattr requests reached the mount after ENOSYS"
    assert value(after, "s3pyfs_fuse_operations_total", operation="write") > \
        value(before, "s3pyfs_fuse_operations_total", operation="write")     # the counters do count


def test_attributes_stored_with_use_xattr_survive_a_mount_without_it(s3, bucket, mount):
    with_xattrs = mount(bucket, "use_xattr")
    (with_xattrs.path / "kept").write_bytes(b"first")
    os.setxattr(with_xattrs.path / "kept", "user.origin", b"camera\x00")
    with_xattrs.unmount()
    plain = mount(bucket)
    path = plain.path / "kept"
    path.write_bytes(b"second version")
    os.chmod(path, 0o600)
    os.rename(path, plain.path / "moved")
    assert s3.get_object(Bucket=bucket, Key="moved")["Body"].read() == b"second version"
    assert _xattr_header(s3, bucket, "moved") == {"user.origin": b"camera\x00"}
    plain.unmount()
    again = mount(bucket, "use_xattr")
    assert os.getxattr(again.path / "moved", "user.origin") == b"camera\x00"
