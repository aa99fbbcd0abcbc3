"""Bad options, credentials and mount points: one clear line, the documented exit code.

Responsibility: what a user sees when the command line, the passwd file, the
keys, the bucket or the mount point is wrong — exactly one `s3pyfs: ...` line
on stderr, the exit status of the man page's EXIT STATUS section (2 usage,
3 credentials, 4 endpoint or bucket, 5 mount point), no traceback, and the
secret key nowhere in stdout, stderr or the log file.
(Cases already covered elsewhere: tests/test_options.py, test_daemon.py,
test_s3fs_options.py.)
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from s3pyfs.cli import main

SECRET = "Sup3r-Secret-Value-0123456789abcdef"


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("s3pyfs: ") and "Traceback" not in err, err
    return lines[0]


# ------------------------------------------------------------------------------ -o strings
@pytest.mark.parametrize("option_string, words", [
    ("=x", "needs an option name"),
    ("=", "needs an option name"),
    ("a=b=c", "unknown option 'a'"),
    ("ro,,bogus", "unknown option 'bogus'"),
    ("uid=", "uid= needs a whole number"),
    ("gid=", "gid= needs a whole number"),
    ("umask=", "umask= needs an octal number"),
    ("url=", "url= needs an http"),
    ("uid=-1", "out of range"),
    ("gid=4294967295", "out of range"),
    ("uid=" + "9" * 5000, "out of range"),                 # int() itself refuses > 4300 digits
    ("uid=1.5", "needs a whole number"),
    ("uid=1e3", "needs a whole number"),
    ("uid=0x10", "needs a whole number"),
    ("uid=+5", "needs a whole number"),
    ("uid=1_000", "needs a whole number"),
    ("uid=\u0663", "needs a whole number"),                 # ARABIC-INDIC DIGIT THREE
    ("multipart_size=4", "out of range (5 to 5120)"),
    ("multipart_size=99999999999", "out of range"),
    ("parallel_count=0", "out of range"),
    ("parallel_count=two", "needs a whole number"),
    ("umask=0o22", "octal number"),
    ("umask=8", "octal number"),
    ("umask=-1", "octal number"),
    ("umask=17777", "out of range"),
    ("stat_cache_expire=-1", "out of range"),
    ("stat_cache_expire=nan", "needs a number"),
    ("stat_cache_expire=inf", "needs a number"),
    ("stat_cache_expire=1_0", "needs a number"),
    ("connect_timeout=0", "out of range"),
    ("retries=1.5", "needs a whole number"),
    ("ro=1", "takes no value"),
    ("nonempty=yes", "takes no value"),
    ("passwd_file", "needs a value"),
    ("bogus", "unknown option 'bogus'"),
    ("BOGUS=1", "unknown option 'BOGUS'"),
    ("nocopyapi", "not supported by s3pyfs"),
    ('url="http://x', "unbalanced quote"),
])
def test_malformed_or_out_of_range_options_exit_2_with_one_line(option_string, words, tmp_path, capsys):
    assert main(["b12", str(tmp_path), "-o", option_string]) == 2
    captured = capsys.readouterr()
    line = one_line(captured.err)
    assert words in line and captured.out == ""
    assert len(line) < 300


@pytest.mark.parametrize("option_string", [",,", "ro,", ",ro", "ro,,", " ro , uid=7 "])
def test_empty_items_and_spaces_around_commas_are_ignored(option_string, tmp_path):
    from s3pyfs.cli import parse_args
    plain = parse_args(["b12", str(tmp_path), "-o", "ro,uid=7" if "uid" in option_string else
                        ("ro" if "ro" in option_string else "")])
    opts = parse_args(["b12", str(tmp_path), "-o", option_string])
    assert (opts.read_only, opts.uid) == (plain.read_only, plain.uid)


def test_an_option_given_twice_takes_the_last_value(tmp_path):
    from s3pyfs.cli import parse_args
    assert parse_args(["b12", str(tmp_path), "-o", "uid=5,uid=6", "-o", "gid=1", "-ogid=2"]).gid == 2
    assert parse_args(["b12", str(tmp_path), "-o", "uid=5,uid=6"]).uid == 6


@pytest.mark.parametrize("argv, words", [
    (["-o"], "-o needs an option list"),
    (["-x"], "unknown flag '-x'"),
    (["b12", "/mnt", "extra"], "expected BUCKET"),
    (["b12..x", "/mnt"], "not a valid bucket name"),
    (["b12:/a/../b", "/mnt"], "'.' or '..'"),
    (["/mnt", "-o", "bucket=b12", "b13"], "given twice"),
    (["b12:/" + "p" * 1100, "/mnt"], "no name fits below it"),
    (["b12:/" + "p" * 300, "/mnt", "-o", "key_max=301"], "no name fits below it"),
])
def test_bad_command_lines_exit_2(argv, words, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert words in err and err.startswith("s3pyfs: ") and "Traceback" not in err


# ------------------------------------------------------------------------------ mounting for real
def run_s3pyfs(seaweed, tmp_path, source, point, passwd_text, mode=0o600, extra=""):
    passwd = tmp_path / "passwd"
    fd = os.open(passwd, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(passwd_text)
    os.chmod(passwd, mode)
    return run_with_existing_passwd(seaweed, tmp_path, source, point, extra)


def run_with_existing_passwd(seaweed, tmp_path, source, point, extra=""):
    """`s3pyfs SOURCE POINT` in daemon mode with tmp_path/passwd; (result, log text)."""
    passwd = tmp_path / "passwd"
    log = tmp_path / "s3pyfs.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_EC2_METADATA_DISABLED="true", AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull,
               HOME=str(tmp_path))                      # no ~/.passwd-s3fs of the real user
    options = f"url={seaweed.endpoint},use_path_request_style,passwd_file={passwd},logfile={log},retries=1{extra}"
    result = subprocess.run([sys.executable, "-m", "s3pyfs", source, str(point), "-o", options],
                            capture_output=True, text=True, timeout=60, env=env)
    if os.path.ismount(point):
        subprocess.run(["fusermount3", "-u", str(point)], capture_output=True, timeout=30)
    log_text = log.read_text(errors="replace") if log.exists() else ""
    return result, log_text


# case -> (passwd file text, its mode, exit code, words of the one line)
# placeholders: {access} {real} (the admin keys), {denied_access} {denied_secret}, {secret} (a fake one)
BAD_SETUPS = {
    "unknown-access-key": ("NO-SUCH-ACCESS-KEY:{secret}\n", 0o600, 3, "credentials rejected"),
    "access-denied": ("{denied_access}:{denied_secret}\n", 0o600, 3, "access denied"),
    "passwd-group-readable": ("{access}:{real}\n", 0o640, 3, "chmod 600"),
    "passwd-other-readable": ("{access}:{real}\n", 0o604, 3, "chmod 600"),
    "passwd-empty": ("", 0o600, 3, "no ACCESS:SECRET line"),
    "passwd-only-comments": ("# {access}:{secret}\n\n", 0o600, 3, "no ACCESS:SECRET line"),
    "passwd-empty-secret": ("{access}:\n{secret}\n", 0o600, 3, "expected ACCESS:SECRET"),
    "passwd-four-fields": ("{bucket}:{access}:{secret}:extra\n", 0o600, 3, "expected ACCESS:SECRET"),
    "passwd-ini-syntax": ("[default]\naws_access_key_id={access}\naws_secret_access_key={secret}\n",
                          0o600, 3, "profile="),
    "passwd-other-bucket-only": ("some-other-bucket:{access}:{secret}\n", 0o600, 3, "no line for bucket"),
    "passwd-not-utf8": (None, 0o600, 3, "not UTF-8"),
    "passwd-is-a-directory": (None, 0o700, 3, "not a regular file"),
    "mountpoint-is-a-file": ("{access}:{real}\n", 0o600, 5, "not a directory"),
}


@pytest.mark.mounted
@pytest.mark.parametrize("case", sorted(BAD_SETUPS))
def test_bad_credentials_and_mount_points(seaweed, bucket, tmp_path, case):
    template, mode, code, words = BAD_SETUPS[case]
    point = tmp_path / "mnt"
    point.mkdir()
    access = seaweed.access_key
    text = (template or "").format(access=access, real=seaweed.secret_key, secret=SECRET, bucket=bucket,
                                   denied_access=seaweed.denied_access_key,
                                   denied_secret=seaweed.denied_secret_key)
    if case == "mountpoint-is-a-file":
        point.rmdir()
        point.write_text("a file")
    if case == "passwd-not-utf8":
        fd = os.open(tmp_path / "passwd", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.write(fd, f"{access}:{SECRET}".encode() + b"\xff\n")
        os.close(fd)
        result, log = run_with_existing_passwd(seaweed, tmp_path, bucket, point)
    elif case == "passwd-is-a-directory":
        (tmp_path / "passwd").mkdir(mode=mode)
        result, log = run_with_existing_passwd(seaweed, tmp_path, bucket, point)
    else:
        result, log = run_s3pyfs(seaweed, tmp_path, bucket, point, text, mode)
    assert result.returncode == code, result.stderr
    line = one_line(result.stderr)
    assert words in line, line
    for secret in (SECRET, seaweed.secret_key, seaweed.denied_secret_key):
        assert secret not in result.stdout + result.stderr + log
    assert "Traceback" not in log
    assert not os.path.ismount(point)


@pytest.mark.mounted
def test_nonempty_mount_point_needs_the_nonempty_option(seaweed, s3, bucket, tmp_path):
    """As s3fs: refused (exit 5) unless -o nonempty, which hides the local files while mounted."""
    s3.put_object(Bucket=bucket, Key="remote.txt", Body=b"from the bucket")
    point = tmp_path / "mnt"
    point.mkdir()
    (point / "local.txt").write_text("local, hidden while mounted")
    text = f"{seaweed.access_key}:{seaweed.secret_key}\n"
    refused, _ = run_s3pyfs(seaweed, tmp_path, bucket, point, text)
    assert refused.returncode == 5 and "-o nonempty" in one_line(refused.stderr)
    passwd = tmp_path / "passwd"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    result = subprocess.run([sys.executable, "-m", "s3pyfs", bucket, str(point), "-o",
                             f"url={seaweed.endpoint},use_path_request_style,passwd_file={passwd},nonempty"],
                            capture_output=True, text=True, timeout=60, env=env)
    try:
        assert result.returncode == 0 and result.stderr == "", result.stderr
        assert os.listdir(point) == ["remote.txt"]
    finally:
        subprocess.run(["fusermount3", "-u", str(point)], capture_output=True, timeout=30)
    assert os.listdir(point) == ["local.txt"]                  # the local file was never touched
    assert (point / "local.txt").read_text() == "local, hidden while mounted"
