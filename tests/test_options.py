"""Command line, -o options, credentials files and metadata encoding (no S3 needed)."""

from __future__ import annotations

import os
import stat

import pytest

from s3pyfs.cli import main, parse_args
from s3pyfs.credentials import read_passwd_file, resolve_static_keys
from s3pyfs.errors import CredentialsError
from s3pyfs.metadata import Defaults, attrs_from_object, decode_xattrs, encode_xattrs, user_metadata
from s3pyfs.options import split_option_string


def test_source_with_prefix_and_options(tmp_path):
    opts = parse_args(["my-bucket:/some/prefix/", str(tmp_path), "-f", "-o",
                       "url=http://127.0.0.1:9000/,use_path_request_style,uid=1000,umask=0027,allow_other,_netdev"])
    assert (opts.bucket, opts.prefix) == ("my-bucket", "some/prefix/")
    assert opts.url == "http://127.0.0.1:9000" and opts.path_style and opts.foreground
    assert (opts.uid, opts.umask, opts.allow_other) == (1000, 0o027, True)


def test_selinux_context_with_mcs_commas_kept_for_the_kernel(tmp_path):
    opts = parse_args(["b12", str(tmp_path), "-o", r'context="system_u:object_r:container_file_t:s0:c1\,c2",ro'])
    assert opts.kernel_options == ['context="system_u:object_r:container_file_t:s0:c1,c2"']
    assert opts.read_only


@pytest.mark.parametrize("argv, message", [
    (["b12", "/mnt", "-o", "bogus=1"], "unknown option 'bogus'"),
    (["b12", "/mnt", "-o", "uid=abc"], "uid= needs a whole number"),
    (["b12", "/mnt", "-o", "umask=999"], "octal"),
    (["b12", "/mnt", "-o", "url=ftp://x"], "http:// or https://"),
    (["b12", "/mnt", "-o", "allow_other=1"], "takes no value"),
    (["Bad Bucket!", "/mnt"], "not a valid bucket name"),
    (["b12:prefix", "/mnt"], "must start with '/'"),
    (["b12"], "expected BUCKET"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.startswith("s3pyfs: ") and "Traceback" not in err


def test_help_lists_every_option(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("url=", "use_path_request_style", "passwd_file=", "allow_other", "uid=", "gid=", "umask=", "ro"):
        assert name in out


def test_split_keeps_quotes_and_escapes():
    assert split_option_string('a,b="x,y",c=1\\,2') == ["a", 'b="x,y"', "c=1\\,2"]


def _passwd(tmp_path, text, mode=0o600):
    path = tmp_path / "passwd"
    path.write_text(text)
    os.chmod(path, mode)
    return str(path)


def test_passwd_file_bucket_line_wins(tmp_path):
    path = _passwd(tmp_path, "DEFAULTKEY:defaultsecret\nmybucket:BUCKETKEY:bucketsecret\n")
    assert read_passwd_file(path, "mybucket").access_key == "BUCKETKEY"
    assert read_passwd_file(path, "other").access_key == "DEFAULTKEY"


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o700, 0o604])
def test_passwd_file_readable_by_others_is_refused(tmp_path, mode):
    path = _passwd(tmp_path, "AK:SECRETVALUE\n", mode)
    with pytest.raises(CredentialsError) as info:
        read_passwd_file(path, "b")
    assert "chmod 600" in str(info.value) and "SECRETVALUE" not in str(info.value)


def test_malformed_passwd_line_never_echoes_the_secret(tmp_path):
    path = _passwd(tmp_path, "only-one-field-SECRETVALUE\n")
    with pytest.raises(CredentialsError) as info:
        read_passwd_file(path, "b")
    assert "SECRETVALUE" not in str(info.value)


def test_environment_keys_used_when_no_passwd_file():
    keys = resolve_static_keys(None, None, "b", {"AWS_ACCESS_KEY_ID": "AK", "AWS_SECRET_ACCESS_KEY": "SK"})
    assert keys.access_key == "AK" and "SK" not in repr(keys)


def test_s3fs_headers_round_trip():
    headers = {"mode": str(stat.S_IFREG | 0o640), "uid": "7", "gid": "8", "mtime": "1700000000",
               "ctime": "1700000001", "atime": "1700000002", "xattr": encode_xattrs({"user.a": b"\x00\x01"}),
               "color": "blue"}
    attrs = attrs_from_object(key_is_dir=False, size=3, etag="e", last_modified_ns=0, metadata=headers,
                              content_type=None, defaults=Defaults(0, 0))
    assert attrs.mode == stat.S_IFREG | 0o640 and (attrs.uid, attrs.gid) == (7, 8)
    assert attrs.mtime_ns == 1_700_000_000 * 10**9
    assert user_metadata(attrs) == headers


def test_unreadable_xattr_header_is_ignored():
    assert decode_xattrs("%7Bnot-json") == {}


def test_man_page_documents_exactly_the_option_table():
    import re
    from pathlib import Path

    from s3pyfs.options import OPTIONS
    page = (Path(__file__).resolve().parent.parent / "man" / "s3pyfs.1").read_text()
    section = page.split(".SH OPTIONS", 1)[1].split(".SH ", 1)[0]
    documented = re.findall(r"^\.TP\n\\fB([a-z0-9_.]+)", section, flags=re.M)
    assert documented == [opt.name for opt in OPTIONS]
    from s3pyfs.options import man_rows
    assert man_rows() in section, "man page rows are stale: run scripts/update-man-options.py"


def test_man_page_renders_without_warnings():
    import shutil
    import subprocess
    from pathlib import Path
    page = Path(__file__).resolve().parent.parent / "man" / "s3pyfs.1"
    assert shutil.which("groff"), "groff is needed to check the man page (apt-get install groff-base)"
    result = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", str(page)], capture_output=True, text=True)
    assert result.returncode == 0 and result.stderr == ""
