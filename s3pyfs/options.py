"""The one option table: parsing of `-o` strings, defaults, --help text, man page check.

Responsibility: turn `-o a,b=c` strings into a validated `MountOptions`.
Invariants:
  * Every option s3pyfs accepts is a row of `OPTIONS`; `--help` and the test
    that compares the table with `man/s3pyfs.1` read the same rows.
  * Options meant for the kernel (`allow_other`, `context=`...) are collected in
    `MountOptions.fuse_options`; fstab/helper words (`_netdev`, `nofail`, `x-*`...)
    are consumed here and never reach libfuse, which rejects unknown options.
  * A bad value raises `UsageError` naming the option; nothing else is raised.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable

from .errors import UsageError


def _int(lo: int | None = None, hi: int | None = None) -> Callable[[str, str], int]:
    def parse(name: str, text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            raise UsageError(f"option {name}= needs a whole number, got {text!r}") from None
        if lo is not None and value < lo or hi is not None and value > hi:
            raise UsageError(f"option {name}={value} is out of range ({lo} to {hi})")
        return value
    return parse


def _octal(name: str, text: str) -> int:
    try:
        value = int(text, 8)
    except ValueError:
        raise UsageError(f"option {name}= needs an octal number such as 022, got {text!r}") from None
    if not 0 <= value <= 0o7777:
        raise UsageError(f"option {name}={text} is out of range (0 to 7777)")
    return value


def _float(lo: float, hi: float) -> Callable[[str, str], float]:
    def parse(name: str, text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise UsageError(f"option {name}= needs a number, got {text!r}") from None
        if not lo <= value <= hi:
            raise UsageError(f"option {name}={text} is out of range ({lo:g} to {hi:g})")
        return value
    return parse


def _url(name: str, text: str) -> str:
    if not re.match(r"^https?://[^/\s]+(/.*)?$", text):
        raise UsageError(f"option {name}= needs an http:// or https:// URL, got {text!r}")
    return text.rstrip("/")


def _text(name: str, text: str) -> str:
    if not text:
        raise UsageError(f"option {name}= needs a value")
    return text


def _loglevel(name: str, text: str) -> str:
    levels = {"crit": "CRITICAL", "critical": "CRITICAL", "err": "ERROR", "error": "ERROR",
              "warn": "WARNING", "warning": "WARNING", "info": "INFO", "dbg": "DEBUG", "debug": "DEBUG"}
    try:
        return levels[text.lower()]
    except KeyError:
        raise UsageError(f"option {name}= must be one of crit, err, warn, info, dbg; got {text!r}") from None


@dataclasses.dataclass(frozen=True)
class Option:
    name: str                 # as written after -o
    attr: str | None          # MountOptions field it sets (None: consumed or kernel-only)
    parse: Callable[[str, str], Any] | None  # None: a flag without value
    help: str
    kernel: bool = False      # also handed to libfuse / the kernel unchanged


OPTIONS: tuple[Option, ...] = (
    Option("url", "url", _url, "S3 endpoint URL (default https://s3.amazonaws.com or AWS_ENDPOINT_URL)"),
    Option("endpoint", "region", _text, "region used for request signing (default us-east-1)"),
    Option("use_path_request_style", "path_style", None, "address the bucket as URL/BUCKET instead of BUCKET.host"),
    Option("passwd_file", "passwd_file", _text, "file with ACCESS:SECRET or BUCKET:ACCESS:SECRET lines (mode 600)"),
    Option("profile", "profile", _text, "profile of the AWS shared config/credentials files"),
    Option("allow_other", "allow_other", None, "let other users access the mount", kernel=True),
    Option("allow_root", "allow_root", None, "let root access the mount", kernel=True),
    Option("default_permissions", None, None, "kernel checks mode bits (always on; accepted for compatibility)"),
    Option("uid", "uid", _int(0, 2**32 - 2), "owner reported for every file (default: from metadata, else the mounting user)"),
    Option("gid", "gid", _int(0, 2**32 - 2), "group reported for every file (default: from metadata, else the mounting group)"),
    Option("umask", "umask", _octal, "mask applied to every reported mode (default 022 for objects without mode metadata)"),
    Option("mp_umask", "mp_umask", _octal, "mask applied to the mount point directory's mode"),
    Option("ro", "read_only", None, "mount read-only", kernel=True),
    Option("rw", None, None, "mount read-write (the default)"),
    Option("nonempty", "nonempty", None, "allow mounting over a non-empty directory"),
    Option("fsname", "fsname", _text, "source shown in /proc/mounts (default: BUCKET[:/PREFIX] as given)"),
    Option("tmpdir", "tmpdir", _text, "directory for staging files of written data (default /var/tmp)"),
    Option("multipart_size", "multipart_size", _int(5, 5120), "part size in MiB of multipart uploads; larger files use multipart (default 10)"),
    Option("parallel_count", "parallel_count", _int(1, 128), "parallel requests for multipart transfers and directory renames (default 8)"),
    Option("max_thread_count", "parallel_count", _int(1, 128), "alias of parallel_count"),
    Option("stat_cache_expire", "stat_cache_expire", _float(0, 86400), "seconds a looked-up attribute or name stays cached (default 5)"),
    Option("max_stat_cache_size", "max_stat_cache_size", _int(0, 10_000_000), "entries of the stat and negative-lookup caches (default 100000)"),
    Option("retries", "retries", _int(1, 20), "attempts of one S3 request, including the first (default 3)"),
    Option("connect_timeout", "connect_timeout", _float(0.1, 600), "seconds to connect to the endpoint (default 5)"),
    Option("readwrite_timeout", "readwrite_timeout", _float(0.1, 3600), "seconds of silence on a connection before it is given up (default 30)"),
    Option("request_timeout", "request_timeout", _float(1, 86400), "upper bound in seconds of one S3 call with all its retries (default 120)"),
    Option("logfile", "logfile", _text, "write the log to this file instead of stderr/syslog"),
    Option("dbglevel", "log_level", _loglevel, "log level: crit, err, warn, info or dbg (default warn)"),
    Option("context", None, _text, "SELinux context of all files (passed to the kernel)", kernel=True),
    Option("fscontext", None, _text, "SELinux context of the filesystem (passed to the kernel)", kernel=True),
    Option("defcontext", None, _text, "SELinux default context (passed to the kernel)", kernel=True),
    Option("rootcontext", None, _text, "SELinux context of the root inode (passed to the kernel)", kernel=True),
)

# Words fstab, mount(8) and s3fs command lines carry that mean nothing to s3pyfs.
CONSUMED_FLAGS = frozenset({
    "_netdev", "nofail", "user", "users", "nouser", "auto", "noauto", "defaults", "dev", "nodev",
    "suid", "nosuid", "exec", "noexec", "atime", "noatime", "relatime", "norelatime",
    "strictatime", "diratime", "nodiratime", "big_writes", "async", "sync",
})
CONSUMED_PREFIXES = ("x-", "comment=", "helper=")

_BY_NAME = {opt.name: opt for opt in OPTIONS}


@dataclasses.dataclass
class MountOptions:
    bucket: str = ""
    prefix: str = ""              # "" or "some/prefix/" (always ends with '/')
    source: str = ""              # the source argument as written
    mountpoint: str = ""
    foreground: bool = False
    debug: bool = False
    url: str | None = None
    region: str | None = None
    path_style: bool = False
    passwd_file: str | None = None
    profile: str | None = None
    allow_other: bool = False
    allow_root: bool = False
    uid: int | None = None
    gid: int | None = None
    umask: int | None = None
    mp_umask: int | None = None
    read_only: bool = False
    nonempty: bool = False
    fsname: str | None = None
    tmpdir: str = "/var/tmp"
    multipart_size: int = 10
    parallel_count: int = 8
    stat_cache_expire: float = 5.0
    max_stat_cache_size: int = 100_000
    retries: int = 3
    connect_timeout: float = 5.0
    readwrite_timeout: float = 30.0
    request_timeout: float = 120.0
    logfile: str | None = None
    log_level: str = "WARNING"
    kernel_options: list[str] = dataclasses.field(default_factory=list)


def split_option_string(text: str) -> list[str]:
    """Split `a,b=c` at commas that are not escaped (`\\,`) or inside quotes.

    Escapes and quotes are kept in the items so that kernel options such as
    `context="system_u:object_r:x_t:s0:c1,c2"` reach libfuse as written.
    """
    items, current, quote, i = [], [], "", 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            current.append(text[i:i + 2])
            i += 2
            continue
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch == ",":
            items.append("".join(current))
            current = []
            i += 1
            continue
        current.append(ch)
        i += 1
    if quote:
        raise UsageError(f"unbalanced quote in -o {text!r}")
    items.append("".join(current))
    return [item for item in (s.strip() for s in items) if item]


def apply_option_string(opts: MountOptions, text: str) -> None:
    for item in split_option_string(text):
        apply_option(opts, item)


def apply_option(opts: MountOptions, item: str) -> None:
    name, has_value, value = item.partition("=")
    if name in CONSUMED_FLAGS or item.startswith(CONSUMED_PREFIXES):
        return
    opt = _BY_NAME.get(name)
    if opt is None:
        raise UsageError(f"unknown option {name!r} (see s3pyfs --help for the supported options)")
    if opt.parse is None:
        if has_value:
            raise UsageError(f"option {name} takes no value")
        if opt.attr:
            setattr(opts, opt.attr, True)
        if name == "rw":
            opts.read_only = False
    else:
        if not has_value:
            raise UsageError(f"option {name} needs a value: {name}=...")
        parsed = opt.parse(name, value)
        if opt.attr:
            setattr(opts, opt.attr, parsed)
    if opt.kernel and opt.parse is not None:
        opts.kernel_options.append(item)


def help_text() -> str:
    width = max(len(_label(opt)) for opt in OPTIONS)
    rows = [f"    {_label(opt):<{width}}  {opt.help}" for opt in OPTIONS]
    return "\n".join(rows)


def _label(opt: Option) -> str:
    return opt.name if opt.parse is None else f"{opt.name}=..."
