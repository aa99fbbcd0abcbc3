"""s3fs drop-in details of the command line (issue 15): region=, the k8s-csi-s3 command line with
~/.passwd-s3fs, octal mode headers, the `-f` "mounted" line, and --help's exit codes matching
README and the man page."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import support

from s3pyfs.cli import main, parse_args
from s3pyfs.metadata import Defaults, attrs_from_object

ROOT = Path(__file__).resolve().parent.parent
S3PYFS = [sys.executable, "-m", "s3pyfs"]        # this checkout's code (PYTHONPATH is passed on)


# ---------------------------------------------------------------- without mounting
def test_region_is_an_alias_of_endpoint(tmp_path):
    assert parse_args(["b12", str(tmp_path), "-o", "region=eu-central-1"]).region == "eu-central-1"
    assert parse_args(["b12", str(tmp_path), "-o", "endpoint=eu-west-1"]).region == "eu-west-1"
    # the later one wins, whichever spelling, as with any repeated option
    assert parse_args(["b12", str(tmp_path), "-o", "endpoint=a-1", "-o", "region=b-2"]).region == "b-2"


def test_region_without_value_is_refused_by_its_name(tmp_path, capsys):
    assert main(["b12", str(tmp_path), "-o", "region="]) == 2
    assert capsys.readouterr().err.strip() == "s3pyfs: option region= needs a value"


@pytest.mark.parametrize("header, mode", [
    ("0100750", stat.S_IFREG | 0o750),      # octal with a leading 0, as some tools write it
    ("33256", stat.S_IFREG | 0o750),        # s3fs's own decimal form
    ("0750", stat.S_IFREG | 0o750),         # permission bits only, octal
    ("0x81e8", stat.S_IFREG | 0o750),       # strtol base 0 takes hex too
])
def test_mode_header_is_read_like_s3fs(header, mode):
    attrs = attrs_from_object(key_is_dir=False, size=1, etag=None, last_modified_ns=1, content_type=None,
                              metadata={"mode": header, "uid": "0101", "gid": "7"},
                              defaults=Defaults(uid=0, gid=0))
    assert (attrs.mode, attrs.uid, attrs.gid) == (mode, 0o101, 7)


def _exit_codes_in_help(capsys) -> list[int]:
    assert main(["--help"]) == 0
    line = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("Exit status:")]
    assert len(line) == 1
    return [int(code) for code in re.findall(r"(?:: |, )(\d+) ", line[0])]


def test_help_readme_and_man_page_list_the_same_exit_codes(capsys):
    in_help = _exit_codes_in_help(capsys)
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Exit status", 1)[1].split("\n## ", 1)[0]
    in_readme = [int(code) for code in re.findall(r"^\| (\d+) \|", section, re.M)]
    man = (ROOT / "man" / "s3pyfs.1").read_text()
    man_section = man.split(".SH EXIT STATUS", 1)[1].split("\n.SH ", 1)[0]
    in_man = [int(code) for code in re.findall(r"^\.B (\d+)$", man_section, re.M)]
    assert in_help == in_readme == in_man == [0, 1, 2, 3, 4, 5, 6]


# ---------------------------------------------------------------- mounted
def _bare_env(home: Path) -> dict:
    """What a CSI node plugin's container gives s3fs: HOME, PATH, no AWS settings."""
    env = {"HOME": str(home), "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
           "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": os.devnull,
           "AWS_SHARED_CREDENTIALS_FILE": os.devnull}
    if "PYTHONPATH" in os.environ:
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return env


def _daemon_pid(point: Path) -> int:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if str(point).encode() in argv and any(b"s3pyfs" in a for a in argv):
                return int(entry.name)
    raise AssertionError(f"no s3pyfs process serves {point}")


@pytest.mark.mounted
def test_k8s_csi_s3_command_line_with_home_passwd_file(seaweed, s3, bucket, tmp_path, fuse_ready):
    home = tmp_path / "home"
    home.mkdir()
    fd = os.open(home / ".passwd-s3fs", os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, f"{seaweed.access_key}:{seaweed.secret_key}\n".encode())
    os.close(fd)
    s3.put_object(Bucket=bucket, Key="pvc-1/existing.txt", Body=b"from the driver's bucket")
    target = tmp_path / "target"
    target.mkdir()
    # yandex-cloud/k8s-csi-s3's s3fs mounter, with `s3fs` replaced by `s3pyfs`
    argv = [*S3PYFS, f"{bucket}:/pvc-1", str(target), "-o", "use_path_request_style",
            "-o", f"url={seaweed.endpoint}", "-o", "allow_other", "-o", "mp_umask=000",
            "-o", "endpoint=us-east-1"]
    try:
        result = subprocess.run(argv, env=_bare_env(home), capture_output=True, text=True, timeout=120,
                                stdin=subprocess.DEVNULL)
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""                          # daemon mode: silent on success
        entry = support.mount_entry(target)
        assert entry is not None and "allow_other" in entry["line"]
        assert stat.S_IMODE(os.stat(target).st_mode) == 0o777       # mp_umask=000
        assert (target / "existing.txt").read_bytes() == b"from the driver's bucket"
        (target / "written.txt").write_text("by a pod")
        pid = _daemon_pid(target)
        assert subprocess.run(["umount", str(target)], capture_output=True).returncode == 0
        assert support.wait_until(lambda: not os.path.exists(f"/proc/{pid}"), 60), "s3pyfs did not exit"
    finally:
        support.force_unmount(target)
    assert s3.get_object(Bucket=bucket, Key="pvc-1/written.txt")["Body"].read() == b"by a pod"


@pytest.mark.mounted
def test_octal_mode_header_written_by_another_tool(mount, s3, bucket):
    s3.put_object(Bucket=bucket, Key="tool-written.sh", Body=b"#!/bin/sh\n",
                  Metadata={"mode": "0100750", "uid": "0", "gid": "0"})
    s3.put_object(Bucket=bucket, Key="s3fs-written.sh", Body=b"#!/bin/sh\n",
                  Metadata={"mode": str(stat.S_IFREG | 0o750), "uid": "0", "gid": "0"})
    m = mount(bucket)
    for name in ("tool-written.sh", "s3fs-written.sh"):
        st = os.stat(m.path / name)
        assert (stat.S_ISREG(st.st_mode), oct(stat.S_IMODE(st.st_mode))) == (True, oct(0o750)), name


@pytest.mark.mounted
def test_foreground_mount_prints_one_mounted_line(seaweed, bucket, tmp_path, fuse_ready):
    pw = tmp_path / "passwd"
    fd = os.open(pw, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, f"{seaweed.access_key}:{seaweed.secret_key}\n".encode())
    os.close(fd)
    point = tmp_path / "mnt"
    point.mkdir()
    err_path, out_path = tmp_path / "stderr", tmp_path / "stdout"
    argv = [*S3PYFS, f"{bucket}:/sub", str(point), "-f", "-o",
            f"url={seaweed.endpoint},use_path_request_style,passwd_file={pw}"]
    with open(err_path, "wb") as err, open(out_path, "wb") as out:
        proc = subprocess.Popen(argv, env=_bare_env(tmp_path), stdin=subprocess.DEVNULL, stdout=out, stderr=err)
    try:
        expected = f"s3pyfs: mounted {bucket}:/sub at {point}\n"
        assert support.wait_until(lambda: err_path.read_text() == expected or proc.poll() is not None, 60), \
            err_path.read_text()
        assert err_path.read_text() == expected
        assert support.mount_entry(point) is not None
        assert subprocess.run(["umount", str(point)], capture_output=True).returncode == 0
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            support.force_unmount(point)
            proc.wait(timeout=60)
    assert out_path.read_text() == ""
    assert err_path.read_text() == expected                 # nothing more on a clean unmount


@pytest.mark.mounted
def test_objects_and_implicit_directories_without_mode_metadata(mount, s3, bucket):
    """README: 0777/0666 minus umask (0755/0644 by default); umask=027 gives s3fs's 0750/0640."""
    s3.put_object(Bucket=bucket, Key="implicit/plain.txt", Body=b"no metadata")
    for opts, want_dir, want_file in (((), 0o755, 0o644), (("umask=027",), 0o750, 0o640)):
        m = mount(bucket, *opts)
        d, f = os.stat(m.path / "implicit"), os.stat(m.path / "implicit" / "plain.txt")
        assert stat.S_ISDIR(d.st_mode) and stat.S_ISREG(f.st_mode)
        assert (oct(stat.S_IMODE(d.st_mode)), oct(stat.S_IMODE(f.st_mode))) == (oct(want_dir), oct(want_file)), opts
        m.unmount()
