"""s3fs's option set without mounting: parsing, request arguments, credentials choice, SELinux pipeline."""

from __future__ import annotations

import base64
import os
import re

import pytest

from s3pyfs import mount as mount_mod
from s3pyfs import selinux
from s3pyfs.cli import main, parse_args
from s3pyfs.errors import CredentialsError, MountError, UsageError
from s3pyfs.s3args import request_args


def opts_for(tmp_path, options: str, source: str = "b12"):
    return parse_args([source, str(tmp_path), "-o", options])


# ---------------------------------------------------------------- parsing
def test_s3fs_bucket_option_form(tmp_path):
    opts = parse_args([str(tmp_path), "-o", "bucket=photos:/2024,use_path_request_style"])
    assert (opts.bucket, opts.prefix, opts.mountpoint) == ("photos", "2024/", str(tmp_path))
    with pytest.raises(UsageError, match="given twice"):
        parse_args(["photos", str(tmp_path), "-o", "bucket=other"])


@pytest.mark.parametrize("text, expected", [
    ("use_sse", ("s3", "")), ("use_sse=1", ("s3", "")), ("use_sse=kmsid", ("kms", "")),
    ("use_sse=kmsid:key-1", ("kms", "key-1")), ("use_sse=k:key-2", ("kms", "key-2")),
    ("use_sse=custom", ("custom", "")), ("use_sse=c:/etc/k", ("custom", "/etc/k")),
    ("use_sse=/etc/old-form", ("custom", "/etc/old-form")),
])
def test_use_sse_forms(tmp_path, text, expected):
    assert opts_for(tmp_path, text).sse == expected


@pytest.mark.parametrize("text, attr, value", [
    ("storage_class=standard_ia", "storage_class", "STANDARD_IA"),
    ("storage_class=intelligent_tiering", "storage_class", "INTELLIGENT_TIERING"),
    ("storage_class=COLD", "storage_class", "COLD"),                 # Ceph RGW custom class
    ("default_acl=bucket-owner-full-control", "default_acl", "bucket-owner-full-control"),
    ("requester_pays", "requester_pays", True),
    ("iam_role", "iam_role", "auto"), ("iam_role=my-node-role", "iam_role", "my-node-role"),
    ("ecs", "iam_role", True),
    ("public_bucket=1", "public_bucket", True), ("public_bucket=0", "public_bucket", False),
    ("endpoint=eu-west-1", "region", "eu-west-1"), ("profile=prod", "profile", "prod"),
    ("allow_root", "allow_root", True), ("mp_umask=002", "mp_umask", 0o002),
    ("retries=7", "retries", 7), ("connect_timeout=2.5", "connect_timeout", 2.5),
    ("readwrite_timeout=9", "readwrite_timeout", 9.0), ("dbglevel=info", "log_level", "INFO"),
    ("use_cache=/var/cache/s3", "use_cache", "/var/cache/s3"), ("cache_size=2048", "cache_size", 2048),
    ("ensure_diskfree=500", "ensure_diskfree", 500), ("del_cache", "del_cache", True),
    ("check_cache_dir_exist", "check_cache_dir_exist", True),
    ("strict_selinux", "strict_selinux", True), ("auto_unmount", "auto_unmount", True),
    ("sigv2", "sigv2", True), ("no_check_certificate", "no_check_certificate", True),
    ("instance_name=node7", "instance_name", "node7"), ("no_time_stamp_msg", "no_time_stamp", True),
])
def test_s3fs_option_values(tmp_path, text, attr, value):
    assert getattr(opts_for(tmp_path, text), attr) == value


def test_relative_paths_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    opts = opts_for(tmp_path, "logfile=s3.log,tmpdir=stage,use_cache=cache,passwd_file=pw")
    assert opts.logfile == str(tmp_path / "s3.log") and opts.tmpdir == str(tmp_path / "stage")
    assert opts.use_cache == str(tmp_path / "cache") and opts.passwd_file == str(tmp_path / "pw")


def test_accepted_without_effect_and_fstab_words(tmp_path):
    opts = opts_for(tmp_path, "sigv4,listobjectsv2,complement_stat,enable_noobj_cache,imdsv1only,"
                              "notsup_compat_dir,kernel_cache,max_background=1000,multireq_max=20,curldbg,"
                              "curldbg=body,default_permissions,_netdev,nofail,noauto,dev,suid,rw,user=alice,"
                              "x-systemd.automount,comment=foo")
    assert opts.kernel_options == [] and not opts.read_only


def test_use_xattr_spellings(tmp_path):
    assert not opts_for(tmp_path, "ro").use_xattr            # off by default, as in s3fs
    assert opts_for(tmp_path, "use_xattr").use_xattr
    assert opts_for(tmp_path, "use_xattr=1").use_xattr
    assert not opts_for(tmp_path, "use_xattr,use_xattr=0").use_xattr


@pytest.mark.parametrize("argv, message", [
    (["b12", "/mnt", "-o", "nocopyapi"], "s3fs option 'nocopyapi' is not supported by s3pyfs"),
    (["b12", "/mnt", "-o", "host=http://x"], "use url="),
    (["b12", "/mnt", "-o", "use_sse=2"], "use_sse= must be 1, kmsid"),
    (["b12", "/mnt", "-o", "storage_class=cold-ish"], "storage class"),
    (["b12", "/mnt", "-o", "default_acl=everyone"], "canned ACL"),
    (["b12", "/mnt", "-o", "context=not-a-label"], "SELinux context"),
    (["b12", "/mnt", "-o", "requester_pays=1"], "takes no value"),
])
def test_refusals_are_one_line_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


# ---------------------------------------------------------------- request arguments
def _key_file(tmp_path, text, mode=0o600):
    path = tmp_path / "sse-c.key"
    path.write_text(text)
    os.chmod(path, mode)
    return path


def test_request_args_sse_s3_kms_class_acl_payer(tmp_path):
    opts = opts_for(tmp_path, "use_sse,storage_class=onezone_ia,default_acl=private,requester_pays")
    assert request_args(opts, {}) == {"ServerSideEncryption": "AES256", "StorageClass": "ONEZONE_IA",
                                      "ACL": "private", "RequestPayer": "requester"}
    assert request_args(opts_for(tmp_path, "use_sse=kmsid:arn:aws:kms:k1"), {}) == {
        "ServerSideEncryption": "aws:kms", "SSEKMSKeyId": "arn:aws:kms:k1"}
    assert request_args(opts_for(tmp_path, "use_sse=kmsid"), {"AWSSSEKMSID": "from-env"})["SSEKMSKeyId"] == "from-env"
    assert request_args(opts_for(tmp_path, "use_sse=k"), {}) == {"ServerSideEncryption": "aws:kms"}
    assert request_args(opts_for(tmp_path, "use_rrs"), {}) == {"StorageClass": "REDUCED_REDUNDANCY"}


def test_request_args_sse_c_from_file_raw_or_base64_and_env(tmp_path):
    raw = "0123456789abcdef0123456789abcdef"
    path = _key_file(tmp_path, raw + "\nolder-key-ignored\n")
    args = request_args(opts_for(tmp_path, f"use_sse=custom:{path}"), {})
    assert args["SSECustomerKey"] == raw.encode() == args["CopySourceSSECustomerKey"]
    assert args["SSECustomerAlgorithm"] == "AES256"
    key = os.urandom(32)
    _key_file(tmp_path, base64.b64encode(key).decode() + "\n")
    assert request_args(opts_for(tmp_path, f"use_sse={path}"), {})["SSECustomerKey"] == key
    env = {"AWSSSECKEYS": base64.b64encode(key).decode() + ":" + raw}
    assert request_args(opts_for(tmp_path, "use_sse=custom"), env)["SSECustomerKey"] == key


@pytest.mark.parametrize("text, mode, message", [
    ("0123456789abcdef0123456789abcdef", 0o644, "chmod 600"),
    ("too-short-SECRETPART", 0o600, "32 characters"),
    ("", 0o600, "has no key"),
])
def test_bad_sse_c_key_file_is_a_credentials_error_without_the_key(tmp_path, text, mode, message):
    path = _key_file(tmp_path, text, mode)
    with pytest.raises(CredentialsError, match=message) as info:
        request_args(opts_for(tmp_path, f"use_sse=custom:{path}"), {})
    assert "SECRETPART" not in str(info.value) and "0123456789abcdef" not in str(info.value)


def test_client_settings_hide_the_sse_c_key(tmp_path, monkeypatch):
    path = _key_file(tmp_path, "0123456789abcdef0123456789abcdef")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AK")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "SK-SECRETVALUE")
    settings = mount_mod.make_settings(opts_for(tmp_path, f"use_sse=custom:{path}"))
    assert "0123456789abcdef" not in repr(settings) and "SECRETVALUE" not in repr(settings)


# ---------------------------------------------------------------- credentials choice
def test_credential_sources_in_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "ENVKEY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "envsecret")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    s = mount_mod.make_settings(opts_for(tmp_path, "url=http://h:1"))
    assert s.static_keys.access_key == "ENVKEY" and s.credential_providers is None
    s = mount_mod.make_settings(opts_for(tmp_path, "iam_role=node"))
    assert s.static_keys is None and s.profile is None
    assert s.credential_providers == ("assume-role-with-web-identity", "container-role", "iam-role")
    s = mount_mod.make_settings(opts_for(tmp_path, "public_bucket=1"))
    assert s.static_keys is None and s.signature_version == "unsigned"
    s = mount_mod.make_settings(opts_for(tmp_path, "sigv2,no_check_certificate"))
    assert s.signature_version == "s3" and s.verify_tls is False
    with pytest.raises(CredentialsError, match="AWS_SESSION_TOKEN"):
        mount_mod.make_settings(opts_for(tmp_path, "use_session_token"))
    monkeypatch.setenv("AWS_SESSION_TOKEN", "tok")
    assert mount_mod.make_settings(opts_for(tmp_path, "use_session_token")).static_keys.session_token == "tok"


def test_unwritable_logfile_is_refused_before_forking(tmp_path):
    with pytest.raises(UsageError, match="cannot write logfile"):
        mount_mod.check_local_dirs(opts_for(tmp_path, f"logfile={tmp_path}/no/such/dir/log,tmpdir={tmp_path}"))


def test_check_cache_dir_exist_needs_the_directory(tmp_path):
    mount_mod.check_local_dirs(opts_for(tmp_path, f"cache_size=100,del_cache,tmpdir={tmp_path}"))   # as s3fs: no cache
    with pytest.raises(UsageError, match="does not exist"):
        mount_mod.check_local_dirs(opts_for(tmp_path, f"use_cache={tmp_path}/none,check_cache_dir_exist"))
    mount_mod.check_local_dirs(opts_for(tmp_path, f"use_cache={tmp_path},check_cache_dir_exist,tmpdir={tmp_path}"))


# ---------------------------------------------------------------- SELinux pipeline
def libfuse_split(option: str) -> list[str]:
    """What libfuse's fuse_opt_parse makes of one `-o` argument (split at `,`, unescape `\\x`)."""
    items, current, i = [], "", 0
    while i < len(option):
        if option[i] == "\\" and i + 1 < len(option):
            current += option[i + 1]
            i += 2
            continue
        if option[i] == ",":
            items.append(current)
            current = ""
        else:
            current += option[i]
        i += 1
    return items + [current]


@pytest.fixture
def selinux_host(monkeypatch):
    state = {"enabled": True, "root": True}
    monkeypatch.setattr(selinux, "selinux_enabled", lambda: state["enabled"])
    monkeypatch.setattr(selinux, "can_mount_directly", lambda: state["root"])
    return state


MCS = "system_u:object_r:container_file_t:s0:c1,c2"


@pytest.mark.parametrize("written", [
    f'context="{MCS}"',                                     # quoted
    r"context=system_u:object_r:container_file_t:s0:c1\,c2",  # escaped
    r'context="system_u:object_r:container_file_t:s0:c1\,c2"',  # both
    f"context='{MCS}'",                                     # single quotes (shell-style)
])
def test_mcs_context_reaches_the_kernel_quoted(tmp_path, selinux_host, written):
    opts = opts_for(tmp_path, f"ro,{written},allow_other")
    assert selinux.settle(opts) is None
    to_libfuse = [o for o in mount_mod.fuse_options(opts) if o.startswith("context")]
    assert to_libfuse == [r'context="system_u:object_r:container_file_t:s0:c1\,c2"']
    assert libfuse_split(to_libfuse[0]) == [f'context="{MCS}"']      # one option, as mount(2) gets it


def test_plain_contexts_pass_unchanged(tmp_path, selinux_host):
    opts = opts_for(tmp_path, "fscontext=system_u:object_r:fusefs_t:s0,rootcontext=system_u:object_r:tmp_t:s0,"
                              "defcontext=system_u:object_r:openshift_rw_file_t:s0")
    selinux.settle(opts)
    chosen = mount_mod.fuse_options(opts)
    assert {"fscontext=system_u:object_r:fusefs_t:s0", "rootcontext=system_u:object_r:tmp_t:s0",
            "defcontext=system_u:object_r:openshift_rw_file_t:s0"} <= chosen


def test_without_selinux_contexts_are_dropped_with_one_warning(tmp_path, selinux_host):
    selinux_host["enabled"] = False
    opts = opts_for(tmp_path, f'context="{MCS}",ro')
    warning = selinux.settle(opts)
    assert "SELinux is not enabled" in warning and "context=" in warning and "\n" not in warning
    assert not [o for o in mount_mod.fuse_options(opts) if "context" in o] and opts.read_only


def test_strict_selinux_refuses_before_mounting(tmp_path, selinux_host):
    selinux_host["enabled"] = False
    with pytest.raises(MountError, match="strict_selinux"):
        selinux.settle(opts_for(tmp_path, f'context="{MCS}",strict_selinux'))
    assert selinux.settle(opts_for(tmp_path, "strict_selinux")) is None      # nothing to apply


def test_contexts_refused_where_fusermount3_would_mount(tmp_path, selinux_host):
    with pytest.raises(UsageError, match="auto_unmount"):
        selinux.settle(opts_for(tmp_path, f'context="{MCS}",auto_unmount'))
    selinux_host["root"] = False
    with pytest.raises(MountError, match="CAP_SYS_ADMIN"):
        selinux.settle(opts_for(tmp_path, "context=system_u:object_r:tmp_t:s0"))


def test_host_checks_read_the_kernel_state():
    enabled = selinux.selinux_enabled()
    with open("/proc/filesystems") as fh:
        assert enabled == (os.path.exists("/sys/fs/selinux/enforce")
                           or bool(re.search(r"\bselinuxfs\b", fh.read())))
    with open("/proc/self/status") as fh:
        cap_eff = int(re.search(r"^CapEff:\s*([0-9a-f]+)", fh.read(), re.M).group(1), 16)
    assert selinux.can_mount_directly() == bool(cap_eff & (1 << 21))
