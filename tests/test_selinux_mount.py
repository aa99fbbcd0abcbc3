"""SELinux context options as mount(2) receives them, traced with strace.

This host has no SELinux: the kernel refuses `context=` here, so the test that
shows the exact mount data replaces s3pyfs's SELinux check (selinux_enabled ->
True) and expects the kernel's EINVAL (exit 5).  The other tests use the real
check: contexts dropped with one warning, or refused with strict_selinux.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest
import support

pytestmark = pytest.mark.mounted

MCS = "system_u:object_r:container_file_t:s0:c1,c2"
PRETEND_SELINUX = ("import sys, s3pyfs.selinux as s; s.selinux_enabled = lambda: True; "
                   "from s3pyfs.cli import main; sys.exit(main(sys.argv[1:]))")


@pytest.fixture
def strace():
    path = shutil.which("strace")
    assert path, "strace is needed (apt-get install strace, or run scripts/bootstrap.sh)"
    return path


def passwd(tmp_path, seaweed):
    path = tmp_path / "passwd"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, f"{seaweed.access_key}:{seaweed.secret_key}\n".encode())
    os.close(fd)
    return path


def command(strace, trace, program, bucket, point, options, foreground=True):
    return [strace, "-f", "-qq", "-e", "trace=mount", "-s", "4096", "-o", str(trace),
            *program, bucket, str(point), *(["-f"] if foreground else []), "-o", options]


def mount_calls(trace):
    """(source, target, fstype, flags, data, outcome) of each mount(2) in an strace log."""
    calls = []
    for line in trace.read_text().splitlines():
        if "mount(" not in line:
            continue
        # strace shows the data string in C syntax: \" is a quote inside it
        match = re.search(r'mount\("([^"]*)", "([^"]*)", "([^"]*)", ([A-Z_|]+), "((?:[^"\\]|\\.)*)"\) = (.*)$', line)
        assert match, line
        fields = list(match.groups())
        fields[4] = fields[4].replace('\\"', '"')
        calls.append(tuple(fields))
    return calls


def env():
    e = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    e["AWS_EC2_METADATA_DISABLED"] = "true"
    return e


def test_mcs_context_reaches_mount_2_quoted_and_whole(seaweed, bucket, tmp_path, strace):
    point = tmp_path / "mnt"
    point.mkdir()
    trace = tmp_path / "trace"
    options = (f"url={seaweed.endpoint},use_path_request_style,passwd_file={passwd(tmp_path, seaweed)},"
               f'allow_other,context="{MCS}"')
    result = subprocess.run(command(strace, trace, [sys.executable, "-c", PRETEND_SELINUX], bucket, point, options),
                            capture_output=True, text=True, timeout=60, env=env())
    if os.path.ismount(point):
        support.force_unmount(point)
    calls = mount_calls(trace)
    assert len(calls) == 1, trace.read_text()
    source, target, fstype, flags, data, outcome = calls[0]
    assert (source, target, fstype, flags) == (bucket, str(point), "fuse.s3pyfs", "MS_NOSUID|MS_NODEV")
    # split as the kernel's SELinux parser does: at commas outside double quotes
    options = re.findall(r'(?:[^,"]|"[^"]*")+', data)
    assert f'context="{MCS}"' in options, data                 # one option, quotes kept, comma inside
    assert {"allow_other", "default_permissions", "user_id=0", "group_id=0"} <= set(options), data
    # no SELinux in this kernel: it refuses the option, s3pyfs says so with exit 5
    assert outcome.startswith("-1 EINVAL"), calls
    assert result.returncode == 5, result.stderr
    assert "mounting on" in result.stderr and "failed" in result.stderr


def test_without_selinux_contexts_are_dropped_with_a_warning(seaweed, bucket, tmp_path, strace):
    point = tmp_path / "mnt"
    trace = tmp_path / "trace"
    options = (f"url={seaweed.endpoint},use_path_request_style,passwd_file={passwd(tmp_path, seaweed)},"
               rf"context=system_u:object_r:container_file_t:s0:c1\,c2,fscontext=system_u:object_r:fusefs_t:s0")
    m = support.Mount(point, command(strace, trace, [sys.executable, "-m", "s3pyfs"], bucket, point, options),
                      env(), tmp_path / "log")
    m.start()
    try:
        m.wait_mounted(30)
        (m.path / "f").write_text("mounted without contexts")
    finally:
        code = m.unmount()
        problems = m.close()
    assert code == 0 and not problems, problems
    warnings = [line for line in m.log_text().splitlines() if "SELinux" in line]
    assert warnings == ["s3pyfs: warning: SELinux is not enabled on this host: ignoring context=, fscontext= "
                        "(add strict_selinux to fail instead)"]
    calls = mount_calls(trace)
    assert len(calls) == 1 and "context" not in calls[0][4] and calls[0][5] == "0", calls


def test_strict_selinux_fails_before_any_mount(seaweed, bucket, tmp_path, strace):
    point = tmp_path / "mnt"
    point.mkdir()
    trace = tmp_path / "trace"
    options = (f"url={seaweed.endpoint},use_path_request_style,passwd_file={passwd(tmp_path, seaweed)},"
               f'context="{MCS}",strict_selinux')
    result = subprocess.run(command(strace, trace, [sys.executable, "-m", "s3pyfs"], bucket, point, options,
                                    foreground=False), capture_output=True, text=True, timeout=60, env=env())
    assert result.returncode == 5
    assert result.stderr.strip() == ("s3pyfs: SELinux is not enabled on this host, so context= cannot be applied "
                                     "(strict_selinux is set; remove it to mount without the contexts)")
    assert mount_calls(trace) == [] and not os.path.ismount(point)
