"""Mode bits and owners seen by a second user (uid 1234) on a mount made by root.

Responsibility: with `allow_other`, the kernel enforces the mode bits
(`default_permissions` is always on): other users read only what the modes
allow, may not chmod what they do not own, and files they create are theirs
in S3 (x-amz-meta-uid/gid); without `allow_other` they cannot reach the mount.
Commands run as the other user through setpriv(1).
"""

from __future__ import annotations

import os
import stat
import subprocess

import pytest
from test_lifecycle import open_point, start  # noqa: F401  (a mount point other users can reach)

pytestmark = pytest.mark.mounted

OTHER = 1234


def as_other(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(["setpriv", f"--reuid={OTHER}", f"--regid={OTHER}", "--clear-groups", *argv],
                          capture_output=True, text=True, timeout=60)


def python_as_other(code: str) -> subprocess.CompletedProcess:
    """Run Python code as the other user; it prints the errno name of what it tried, or OK."""
    import sys
    wrapper = ("import errno, os, sys\ntry:\n" + "".join(f"    {line}\n" for line in code.splitlines())
               + "    print('OK')\nexcept OSError as exc:\n    print(errno.errorcode[exc.errno])\n")
    return as_other(sys.executable, "-c", wrapper)


@pytest.fixture
def shared_mount(seaweed, bucket, open_point, tmp_path):  # noqa: F811
    m = start(seaweed, bucket, open_point, "allow_other", log=tmp_path / "log")
    yield m
    assert m.unmount() == 0
    assert not m.close()


def test_default_permissions_is_in_effect(shared_mount):
    import support
    options = support.mount_entry(shared_mount.path)["line"].split(" - ")[1].split()[2].split(",")
    assert "default_permissions" in options and "allow_other" in options


def test_modes_decide_what_another_user_may_read_and_write(shared_mount):
    root = shared_mount.path
    (root / "secret.txt").write_text("root only")
    os.chmod(root / "secret.txt", 0o600)
    (root / "public.txt").write_text("everyone reads")
    os.chmod(root / "public.txt", 0o644)

    assert python_as_other(f"open({str(root / 'secret.txt')!r}).read()").stdout.strip() == "EACCES"
    assert as_other("cat", str(root / "public.txt")).stdout == "everyone reads"
    assert python_as_other(f"open({str(root / 'public.txt')!r}, 'a')").stdout.strip() == "EACCES"
    # root's 0755 mount root: no new names for others either
    assert python_as_other(f"open({str(root / 'intruder')!r}, 'w')").stdout.strip() == "EACCES"
    # unchanged for root, and in S3
    assert (root / "secret.txt").read_text() == "root only"
    assert (root / "public.txt").read_text() == "everyone reads"
    assert not (root / "intruder").exists()


def test_another_user_creates_files_it_owns_in_a_shared_directory(shared_mount, s3, bucket):
    root = shared_mount.path
    (root / "shared").mkdir()
    os.chmod(root / "shared", 0o777)
    created = python_as_other(f"open({str(root / 'shared' / 'mine.txt')!r}, 'w').write('by 1234')\n"
                              f"os.mkdir({str(root / 'shared' / 'subdir')!r})")
    assert created.stdout.strip() == "OK", created.stderr
    st = os.stat(root / "shared" / "mine.txt")
    assert (st.st_uid, st.st_gid) == (OTHER, OTHER)
    head = s3.head_object(Bucket=bucket, Key="shared/mine.txt")
    assert (head["Metadata"]["uid"], head["Metadata"]["gid"]) == (str(OTHER), str(OTHER))
    assert s3.get_object(Bucket=bucket, Key="shared/mine.txt")["Body"].read() == b"by 1234"
    assert os.stat(root / "shared" / "subdir").st_uid == OTHER

    # the owner may chmod its file; another user (not root) may not chmod root's
    assert python_as_other(f"os.chmod({str(root / 'shared' / 'mine.txt')!r}, 0o600)").stdout.strip() == "OK"
    assert stat.S_IMODE(os.stat(root / "shared" / "mine.txt").st_mode) == 0o600
    assert python_as_other(f"os.chmod({str(root / 'shared')!r}, 0o700)").stdout.strip() == "EPERM"
    assert python_as_other(f"os.chown({str(root / 'shared' / 'mine.txt')!r}, 0, 0)").stdout.strip() == "EPERM"
    assert stat.S_IMODE(os.stat(root / "shared").st_mode) == 0o777
    head = s3.head_object(Bucket=bucket, Key="shared/mine.txt")
    assert stat.S_IMODE(int(head["Metadata"]["mode"])) == 0o600 and head["Metadata"]["uid"] == str(OTHER)


def test_without_allow_other_another_user_reaches_nothing(seaweed, s3, bucket, open_point, tmp_path):  # noqa: F811
    s3.put_object(Bucket=bucket, Key="open.txt", Body=b"mode 0644, still unreachable",
                  Metadata={"mode": str(stat.S_IFREG | 0o644)})
    m = start(seaweed, bucket, open_point, log=tmp_path / "log")
    try:
        for code in (f"os.stat({str(m.path / 'open.txt')!r})", f"open({str(m.path / 'open.txt')!r}).read()",
                     f"os.listdir({str(m.path)!r})"):
            assert python_as_other(code).stdout.strip() == "EACCES", code
        assert (m.path / "open.txt").read_bytes() == b"mode 0644, still unreachable"
    finally:
        assert m.unmount() == 0
        assert not m.close()
