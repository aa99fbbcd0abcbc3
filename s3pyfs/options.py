"""The one option table: parsing of `-o` strings, defaults, --help text, man page check.

Responsibility: turn `-o a,b=c` strings into a validated `MountOptions`.
Invariants:
  * Every option s3pyfs accepts is a row of `OPTIONS`; `--help`, the OPTIONS
    section of `man/s3pyfs.1` (scripts/update-man-options.py) and the test that
    compares them read the same rows.
  * Options meant for the kernel (`context=`...) are collected, in the form the
    kernel must receive, in `MountOptions.kernel_options`; fstab/helper words
    (`_netdev`, `nofail`, `x-*`...) are consumed here and never reach libfuse,
    which rejects unknown options.
  * s3fs options s3pyfs does not implement are refused by name with the reason
    (`UNSUPPORTED`), never silently ignored.
  * A bad value raises `UsageError` naming the option; nothing else is raised.
  * An alias row (`alias_of`) behaves exactly like the row it names (the
    kernel gets the row's name): `region=` is `endpoint=`, `s3pyfs.context=`
    is `context=`; only error messages say the name as written.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from . import option_values as v
from .errors import UsageError


@dataclasses.dataclass(frozen=True)
class Option:
    name: str                 # as written after -o
    attr: str | None          # MountOptions field it sets (None: accepted without effect, or kernel-only)
    parse: Callable[[str, str], Any] | None  # None: a flag without value
    help: str                 # one line for --help and the man page
    kernel: bool = False      # handed to the kernel (kernel_options)
    bare: str | None = None   # value used when written without `=` (`use_sse` = `use_sse=1`)
    details: str = ""         # more text for the man page only
    alias_of: str | None = None  # another row's name: this one is parsed and applied exactly like it


_NO_EFFECT = "accepted for compatibility, no effect: "

OPTIONS: tuple[Option, ...] = (
    # --- where and who
    Option("url", "url", v.url, "S3 endpoint URL (default https://s3.amazonaws.com or AWS_ENDPOINT_URL)"),
    Option("endpoint", "region", v.text, "region used for request signing (default us-east-1 or AWS_REGION)"),
    Option("region", "region", v.text, "alias of endpoint (s3fs's newer name for it)", alias_of="endpoint"),
    Option("use_path_request_style", "path_style", None, "address the bucket as URL/BUCKET instead of BUCKET.host"),
    Option("bucket", "bucket_option", v.text, "BUCKET[:/PREFIX] when the command line gives only the mount point"),
    Option("passwd_file", "passwd_file", v.text, "file with ACCESS:SECRET or BUCKET:ACCESS:SECRET lines (mode 600)"),
    Option("profile", "profile", v.text, "profile of the AWS shared config/credentials files"),
    Option("iam_role", "iam_role", v.text, "use the machine's role (instance, container or web identity) through botocore",
           bare="auto", details="Any value (auto or a role name) skips passwd files and AWS_ACCESS_KEY_ID; "
           "botocore asks the container credentials endpoint, the web identity token or the instance metadata "
           "service (IMDSv2, then v1) and refreshes the keys before they expire."),
    Option("ecs", "iam_role", None, "alias of iam_role (botocore also asks the container credentials endpoint)"),
    Option("imdsv1only", None, None, _NO_EFFECT + "botocore falls back to IMDSv1 by itself"),
    Option("use_session_token", "use_session_token", None, "refuse environment credentials without AWS_SESSION_TOKEN"),
    Option("public_bucket", "public_bucket", v.yes, "send unsigned (anonymous) requests; no credentials are read",
           bare="1"),
    Option("sigv2", "sigv2", None, "sign requests with AWS Signature Version 2 (old stores only)"),
    Option("sigv4", None, None, _NO_EFFECT + "Signature Version 4 is the default"),
    Option("no_check_certificate", "no_check_certificate", None, "do not verify the endpoint's TLS certificate"),
    # --- who may do what
    Option("allow_other", "allow_other", None, "let other users access the mount"),
    Option("allow_root", "allow_root", None, "let root (besides the mounting user) access the mount"),
    Option("default_permissions", None, None, "kernel checks mode bits (always on; accepted for compatibility)"),
    Option("uid", "uid", v.whole(0, 2**32 - 2), "owner reported for every file (default: from metadata, else the mounting user)"),
    Option("gid", "gid", v.whole(0, 2**32 - 2), "group reported for every file (default: from metadata, else the mounting group)"),
    Option("umask", "umask", v.octal, "mask applied to every reported mode (default 022 for objects without mode metadata)"),
    Option("mp_umask", "mp_umask", v.octal, "mask applied to the mount point directory's mode (default: umask)"),
    Option("ro", "read_only", None, "mount read-only"),
    Option("rw", None, None, "mount read-write (the default)"),
    Option("nonempty", "nonempty", None, "allow mounting over a non-empty directory"),
    Option("fsname", "fsname", v.text, "source shown in /proc/mounts (default: BUCKET[:/PREFIX] as given)",
           details="mount -a recognises an fstab line as mounted when this equals the fstab source: leave it unset."),
    Option("auto_unmount", "auto_unmount", None, "let fusermount3 unmount when s3pyfs dies (libfuse option)"),
    Option("use_xattr", "use_xattr", v.yes, "serve user.* extended attributes (get/set/list/remove), kept in the "
           "object's x-amz-meta-xattr header as s3fs keeps them (default off, as in s3fs)", bare="1",
           details="Off, the mount answers the first extended-attribute request with ENOSYS, after which the kernel "
                   "answers every later one itself (EOPNOTSUPP, \"Operation not supported\") without asking: "
                   "`ls -l` and every write() otherwise cost one request to the mount per file for the "
                   "security.selinux or security.capability probe. Attributes already stored on objects are kept "
                   "when files are rewritten, renamed or chmod-ed either way."),
    # --- objects written
    Option("use_sse", "sse", v.sse, "server-side encryption of written objects: 1, kmsid[:KEY_ID] or custom[:KEY_FILE]",
           bare="1", details="1 (or use_sse alone): SSE-S3. kmsid:KEY_ID (or k:KEY_ID): SSE-KMS with that key; "
           "kmsid alone uses $AWSSSEKMSID, else the bucket's default KMS key. custom:KEY_FILE (or c:KEY_FILE, or "
           "an absolute KEY_FILE): SSE-C with the first line of KEY_FILE (32 characters, or the key in base64; "
           "mode 600); custom alone reads the first key of $AWSSSECKEYS. With SSE-C the key is also sent when "
           "reading and copying; objects that are not encrypted with it are read without it."),
    Option("storage_class", "storage_class", v.storage_class, "storage class of written objects (standard, standard_ia, "
           "onezone_ia, intelligent_tiering, glacier_ir, ...)"),
    Option("use_rrs", "use_rrs", v.yes, "old spelling of storage_class=reduced_redundancy", bare="1"),
    Option("default_acl", "default_acl", v.canned_acl, "canned ACL of written objects (private, public-read, "
           "bucket-owner-full-control, ...; default: none sent)"),
    Option("requester_pays", "requester_pays", None, "send x-amz-request-payer: requester (Requester Pays buckets)"),
    # --- local disk
    Option("tmpdir", "tmpdir", v.text, "directory for staging files of written data, kept in DIR/s3pyfs-UID "
           "(default /var/lib/s3pyfs for root, ~/.local/state/s3pyfs for others)",
           details="s3pyfs creates DIR/s3pyfs-UID (mode 0700) and refuses to start when that directory, or a level "
           "below it, is not owned by the mounting user or is writable by others; DIR itself must be owned by "
           "root or that user and, when others may write to it, sticky (like /tmp)."),
    Option("use_cache", "use_cache", v.text, "directory of the local disk cache, kept in DIR/s3pyfs-UID "
           "(default: no disk cache)",
           details="Blocks and dirty data live in DIR/s3pyfs-UID (directories 0700, files 0600), so a shared "
           "DIR such as /tmp is safe; s3pyfs never deletes anything there it did not create. An existing cache in "
           "DIR/s3pyfs-UID is reused."),
    Option("check_cache_dir_exist", "check_cache_dir_exist", None, "refuse to start when the use_cache directory is missing"),
    Option("del_cache", "del_cache", None, "empty the disk cache at start and at unmount"),
    Option("cache_size", "cache_size", v.whole(1, 2**40), "size limit of the disk cache in MiB"),
    Option("ensure_diskfree", "ensure_diskfree", v.whole(0, 2**40), "MiB of free space the disk cache leaves on its filesystem"),
    Option("hydrate_max", "hydrate_max", v.whole(0, 2**40), "with use_cache: objects up to this many MiB are downloaded whole into the disk cache, in the background, once read at random (default a quarter of cache_size, 512 without it; 0: never)",
           details="Random reads are then answered from the cache as its parts arrive. Larger objects, and every "
           "object without use_cache, fetch just the bytes each random read asks for."),
    # --- transfers and caches
    Option("name_max", "name_max", v.whole(1, 1024), "longest name in bytes of a new file, directory or link; longer ones are refused with ENAMETOOLONG before any data is written (default 255: SeaweedFS, MinIO and Linux's NAME_MAX; AWS S3 takes up to 1024 for a whole key). statfs reports it"),
    Option("key_max", "key_max", v.whole(2, 4096), "longest whole S3 key in bytes (prefix included, with the '/' of a directory marker); a name whose key would be longer is refused with ENAMETOOLONG like a name longer than name_max, and a prefix that leaves no room for a name is refused at start (exit 2) (default 1024: AWS S3, MinIO, SeaweedFS)"),
    Option("multipart_size", "multipart_size", v.whole(5, 5120), "part size in MiB of multipart uploads; larger files use multipart (default 10)"),
    Option("max_memory", "max_memory", v.whole(16, 1024 * 1024), "MiB of data buffers (read-ahead, upload parts, fetches) all files together hold in memory (default 256)",
           details="Read-ahead shrinks when the budget is used up and writers wait for room; nothing fails for "
           "lack of it. The process itself needs about 100 MiB on top. multipart_size may be at most half of it."),
    Option("checksum", "checksum", v.one_of("crc32c", "crc32", "md5", "none"),
           "checksum sent with every upload so the store refuses damaged bodies: crc32c (default), crc32, md5 or none",
           details="crc32c and crc32 go in x-amz-checksum-* headers (and CreateMultipartUpload declares them); "
           "md5 is Content-MD5, which costs about 1.7 s of CPU per GiB more. A store that refuses the header "
           "makes the mount fall back to md5 with one WARNING."),
    Option("parallel_count", "parallel_count", v.whole(1, 128), "parallel requests for multipart transfers and directory renames (default 8)"),
    Option("max_thread_count", "parallel_count", v.whole(1, 128), "alias of parallel_count"),
    Option("multireq_max", None, v.whole(1, 1000), _NO_EFFECT + "listing fan-out is bounded by parallel_count"),
    Option("stat_cache_expire", "stat_cache_expire", v.number(0, 86400), "seconds a looked-up attribute or name, and a directory listing (readdir), stays cached (default 5); open() checks the object with one HEAD whatever this says"),
    Option("negative_cache_expire", "negative_cache_expire", v.number(0, 86400), "seconds a name known to be absent stays cached, also when a cached listing says so: a name created by another client is found by lookup within this time (default 1; at most stat_cache_expire)"),
    Option("max_stat_cache_size", "max_stat_cache_size", v.whole(0, 10_000_000), "entries of the stat and negative-lookup caches (default 100000)"),
    Option("enable_noobj_cache", None, None, _NO_EFFECT + "missing names are always cached briefly"),
    Option("listobjectsv2", None, None, _NO_EFFECT + "ListObjectsV2 is always used"),
    Option("complement_stat", None, None, _NO_EFFECT + "objects without mode metadata always get one from umask"),
    Option("notsup_compat_dir", None, None, _NO_EFFECT + "every s3fs directory form is always read"),
    Option("kernel_cache", None, None, _NO_EFFECT + "s3pyfs decides page cache use per open"),
    Option("cipher_suites", None, v.ignored, _NO_EFFECT + "Python's TLS defaults already prefer AES-GCM"),
    Option("max_background", None, v.whole(1, 65535), _NO_EFFECT + "set by pyfuse3"),
    # --- requests
    Option("retries", "retries", v.whole(1, 20), "attempts of one S3 request, including the first (default 3)"),
    Option("connect_timeout", "connect_timeout", v.number(0.1, 600), "seconds to connect to the endpoint (default 5)"),
    Option("readwrite_timeout", "readwrite_timeout", v.number(0.1, 3600), "seconds of silence on a connection before the try is given up and made again, within request_timeout (default 20)"),
    Option("request_timeout", "request_timeout", v.number(1, 86400), "seconds after which a system call waiting for S3 fails with EIO when S3 has not answered meanwhile (retries, parts and lock waits included), and the longest one S3 request may take (default 45)"),
    Option("read_ahead_kb", "read_ahead_kb", v.whole(0, 1024 * 1024), "KiB the kernel reads ahead of sequential readers of this mount (default 1024; 0 keeps the kernel's 128); needs root"),
    Option("drain_timeout", "drain_timeout", v.number(1, 86400), "seconds unmount/SIGTERM (and recovery at start) spend uploading dirty data (default 120); what is left stays in the journal for the next mount"),
    # --- log
    Option("logfile", "logfile", v.text, "write the log to this file instead of stderr/syslog; SIGHUP reopens it"),
    Option("dbglevel", "log_level", v.loglevel, "log level: crit, err, warn, info or dbg (default warn)"),
    Option("instance_name", "instance_name", v.text, "name put in every log line, to tell mounts apart in one log"),
    Option("no_time_stamp_msg", "no_time_stamp", None, "no time stamps in log lines (journald adds its own)"),
    Option("curldbg", None, v.ignored, _NO_EFFECT + "HTTP traffic is never logged (it carries signatures)", bare=""),
    # --- monitoring
    Option("metrics", "metrics", v.host_port, "serve Prometheus metrics on HTTP at [HOST:]PORT/metrics (HOST default 127.0.0.1)",
           details="Without this option no port is opened. Use 0.0.0.0:PORT to let other machines scrape it "
           "(the figures name the bucket, the endpoint and failed keys). See MONITORING for the metric names; "
           "the same figures are always written to the statistics file that s3pyfs status reads."),
    Option("stats_group", "stats_group", v.group, "group (NAME or GID) that may read the statistics file "
           "(default: only the mounting user)",
           details="The statistics file names failing keys; it is mode 0600, or 0640 with this group (for a "
           "monitoring agent running s3pyfs status)."),
    # --- SELinux
    Option("context", None, v.selinux_context, "SELinux context of all files (passed to the kernel)", kernel=True,
           details='Quote a context that has commas: context="system_u:object_r:container_file_t:s0:c1,c2" '
           "(or escape them: s0:c1\\,c2). See SELINUX."),
    Option("fscontext", None, v.selinux_context, "SELinux context of the filesystem (passed to the kernel)", kernel=True),
    Option("defcontext", None, v.selinux_context, "SELinux default context (passed to the kernel)", kernel=True),
    Option("rootcontext", None, v.selinux_context, "SELinux context of the root inode (passed to the kernel)", kernel=True),
    *(Option(f"s3pyfs.{name}", None, v.selinux_context, f"{name} in a spelling mount(8) always passes on from fstab "
             "(it drops the plain one where SELinux is off)", kernel=True, alias_of=name,
             details="mount(8) removes context options before it runs a helper when SELinux is not enabled, "
             "and never passes x-* options to helpers; this spelling reaches s3pyfs unchanged. See SELINUX.")
      for name in ("context", "fscontext", "defcontext", "rootcontext")),
    Option("strict_selinux", "strict_selinux", None, "fail instead of dropping context options when SELinux is not enabled"),
)

# Words fstab, mount(8), mount.fuse3 and s3fs command lines carry that mean nothing to s3pyfs.
CONSUMED_FLAGS = frozenset({
    "_netdev", "nofail", "user", "users", "nouser", "owner", "group", "auto", "noauto", "defaults",
    "dev", "nodev", "suid", "nosuid", "exec", "noexec", "atime", "noatime", "relatime", "norelatime",
    "strictatime", "diratime", "nodiratime", "lazytime", "nolazytime", "big_writes", "async", "sync",
    "dirsync", "silent", "loud",
})
CONSUMED_PREFIXES = ("x-", "comment=", "helper=", "user=")

# s3fs options s3pyfs does not implement: refused by name, with the reason.
UNSUPPORTED = {
    "host": "use url=",
    "servicepath": "put the path in url=",
    "nomultipart": "large files always use multipart uploads",
    "multipart_threshold": "files larger than multipart_size use multipart uploads",
    "multipart_copy_size": "copies of objects over 5 GiB use 512 MiB parts",
    "singlepart_copy_limit": "objects up to 5 GiB are copied in one request",
    "max_dirty_data": "dirty data is uploaded at close and fsync",
    "nomixupload": "not applicable",
    "nocopyapi": "rename and metadata changes need CopyObject",
    "norenameapi": "rename needs CopyObject",
    "stat_cache_interval_expire": "use stat_cache_expire=",
    "list_object_max_keys": "listings use pages of 1000 keys",
    "load_sse_c": "only the first key of use_sse=custom is used",
    "ahbe_conf": "per-extension HTTP headers are not implemented",
    "mime": "content types are not guessed from file names",
    "enable_content_md5": "not implemented",
    "ssl_verify_hostname": "use no_check_certificate",
    "nodnscache": "not implemented",
    "nosscache": "not implemented",
    "noua": "not implemented",
    "noxmlns": "not applicable",
    "use_wtf8": "object names must be valid UTF-8",
    "ibm_iam_auth": "IBM IAM authentication is not implemented; use HMAC keys",
    "ibm_iam_endpoint": "IBM IAM authentication is not implemented; use HMAC keys",
    "set_check_cache_sigusr1": "not implemented",
}

_BY_NAME = {opt.name: opt for opt in OPTIONS}


@dataclasses.dataclass
class MountOptions:
    bucket: str = ""
    prefix: str = ""              # "" or "some/prefix/" (always ends with '/')
    source: str = ""              # the source argument as written
    bucket_option: str | None = None
    mountpoint: str = ""
    foreground: bool = False
    debug: bool = False
    url: str | None = None
    region: str | None = None
    path_style: bool = False
    passwd_file: str | None = None
    profile: str | None = None
    iam_role: str | bool | None = None
    use_session_token: bool = False
    public_bucket: bool = False
    sigv2: bool = False
    no_check_certificate: bool = False
    allow_other: bool = False
    allow_root: bool = False
    uid: int | None = None
    gid: int | None = None
    umask: int | None = None
    mp_umask: int | None = None
    read_only: bool = False
    nonempty: bool = False
    fsname: str | None = None
    auto_unmount: bool = False
    sse: tuple[str, str] | None = None
    storage_class: str | None = None
    use_rrs: bool = False
    default_acl: str | None = None
    requester_pays: bool = False
    tmpdir: str | None = None           # None: the user's state directory (statedir.py)
    use_cache: str | None = None        # disk cache options: parsed here, used by the cache
    check_cache_dir_exist: bool = False
    del_cache: bool = False
    cache_size: int | None = None       # MiB
    ensure_diskfree: int | None = None  # MiB
    hydrate_max: int | None = None      # MiB; None: disk_cache's default
    multipart_size: int = 10
    name_max: int = 255
    use_xattr: bool = False
    key_max: int = 1024
    parallel_count: int = 8
    checksum: str = "crc32c"            # of upload bodies (checksums.py)
    max_memory: int = 256               # MiB (budget.py)
    stat_cache_expire: float = 5.0
    negative_cache_expire: float = 1.0
    max_stat_cache_size: int = 100_000
    retries: int = 3
    connect_timeout: float = 5.0
    readwrite_timeout: float = 20.0
    request_timeout: float = 45.0
    drain_timeout: float = 120.0
    read_ahead_kb: int = 1024
    logfile: str | None = None
    log_level: str = "WARNING"
    instance_name: str | None = None
    no_time_stamp: bool = False
    strict_selinux: bool = False
    metrics: tuple[str, int] | None = None     # Prometheus endpoint (host, port)
    stats_group: int | None = None             # gid that may read the statistics file
    kernel_options: list[str] = dataclasses.field(default_factory=list)   # as the kernel must see them


def split_option_string(text: str) -> list[str]:
    """Split `a,b=c` at commas that are not escaped (`\\,`) or inside quotes.

    Escapes and quotes are kept in the items; the option's parser decides
    what they mean (`context=` keeps quotes for the kernel).
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
    if not name:
        raise UsageError("an -o item starts with '=': it needs an option name (name=value)")
    if name in CONSUMED_FLAGS or item.startswith(CONSUMED_PREFIXES):
        return
    opt = _BY_NAME.get(name)
    written = name
    if opt is not None and opt.alias_of:
        name, opt = opt.alias_of, _BY_NAME[opt.alias_of]
    if opt is None:
        if name in UNSUPPORTED:
            raise UsageError(f"s3fs option {name!r} is not supported by s3pyfs ({UNSUPPORTED[name]})")
        raise UsageError(f"unknown option {name!r} (see s3pyfs --help for the supported options)")
    if opt.parse is None:
        if has_value:
            raise UsageError(f"option {name} takes no value")
        if opt.attr:
            setattr(opts, opt.attr, True)
        if name == "rw":
            opts.read_only = False
        return
    if not has_value:
        if opt.bare is None:
            raise UsageError(f"option {name} needs a value: {name}=...")
        value = opt.bare
    parsed = opt.parse(written, value)
    if opt.attr:
        setattr(opts, opt.attr, parsed)
    if opt.kernel:
        opts.kernel_options = [k for k in opts.kernel_options if not k.startswith(name + "=")]
        opts.kernel_options.append(f"{name}={parsed}")


def label(opt: Option) -> str:
    if opt.parse is None:
        return opt.name
    return f"{opt.name}[=...]" if opt.bare is not None else f"{opt.name}=..."


def help_text() -> str:
    width = max(len(label(opt)) for opt in OPTIONS)
    return "\n".join(f"    {label(opt):<{width}}  {opt.help}" for opt in OPTIONS)


MAN_BEGIN = '.\\" BEGIN generated by scripts/update-man-options.py from s3pyfs/options.py; edit the table'
MAN_END = '.\\" END generated options'


def _roff(text: str) -> str:
    return text.replace("\\", "\\e").replace("-", "\\-").replace("'", "\\(aq")


def man_rows() -> str:
    """The OPTIONS rows of man/s3pyfs.1, between MAN_BEGIN and MAN_END."""
    lines = [MAN_BEGIN]
    for opt in OPTIONS:
        name = f"\\fB{_roff(opt.name)}\\fR"
        if opt.parse is not None:
            value = "\\fB=\\fR\\fIVALUE\\fR"
            name += f"[{value}]" if opt.bare is not None else value
        text = opt.help[0].upper() + opt.help[1:] + "."
        if opt.details:
            text += " " + opt.details
        lines += [".TP", name, _roff(text)]
    lines += [".PP", "The fstab and mount(8) words"]
    words = sorted(CONSUMED_FLAGS) + [p + ("*" if p.endswith("-") else "") for p in CONSUMED_PREFIXES]
    lines += [f".BR {_roff(w)} ," for w in words[:-1]] + ["and", f".B {_roff(words[-1])}"]
    lines += ["are accepted and ignored; the mount is always", ".B nosuid", "and", ".BR nodev ."]
    lines += [".PP", "s3fs options s3pyfs refuses (exit status 2) because it does not implement them:"]
    lines += [f".BR {_roff(name)} \" ({_roff(reason)})\"{',' if i < len(UNSUPPORTED) - 1 else '.'}"
              for i, (name, reason) in enumerate(sorted(UNSUPPORTED.items()))]
    lines.append(MAN_END)
    return "\n".join(lines) + "\n"
