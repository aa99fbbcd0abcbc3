"""Value parsers of the option table: `parse(name, text) -> value` or `UsageError`.

Responsibility: syntax and range of one `-o name=value` value, nothing that
depends on the host (files, SELinux state, privileges are checked at start-up).
Invariant: every refusal names the option and says what is expected; the
value itself is echoed only when it cannot be a secret.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from .errors import UsageError

# ASCII digits only: int() and float() would also take ' 5', '+5', '1_000' and other
# scripts' digits ('٣'), none of which s3fs or mount(8) accept
_WHOLE = re.compile(r"-?[0-9]+")
_OCTAL = re.compile(r"[0-7]+")
_NUMBER = re.compile(r"-?([0-9]+(\.[0-9]*)?|\.[0-9]+)")


def whole(lo: int | None = None, hi: int | None = None) -> Callable[[str, str], int]:
    def parse(name: str, text: str) -> int:
        if not _WHOLE.fullmatch(text):
            raise UsageError(f"option {name}= needs a whole number, got {text[:40]!r}")
        value = int(text, 10) if len(text) <= 40 else None      # int() refuses > 4300 digits
        if value is None or lo is not None and value < lo or hi is not None and value > hi:
            raise UsageError(f"option {name}={text[:40]} is out of range ({lo} to {hi})")
        return value
    return parse


def octal(name: str, text: str) -> int:
    if not _OCTAL.fullmatch(text):
        raise UsageError(f"option {name}= needs an octal number such as 022, got {text[:40]!r}")
    value = int(text, 8)
    if not 0 <= value <= 0o7777:
        raise UsageError(f"option {name}={text[:40]} is out of range (0 to 7777)")
    return value


def number(lo: float, hi: float) -> Callable[[str, str], float]:
    def parse(name: str, text: str) -> float:
        if not _NUMBER.fullmatch(text):
            raise UsageError(f"option {name}= needs a number, got {text[:40]!r}")
        value = float(text)
        if not lo <= value <= hi:
            raise UsageError(f"option {name}={text[:40]} is out of range ({lo:g} to {hi:g})")
        return value
    return parse


def url(name: str, text: str) -> str:
    if not re.match(r"^https?://[^/\s]+(/.*)?$", text):
        raise UsageError(f"option {name}= needs an http:// or https:// URL, got {text!r}")
    return text.rstrip("/")


def host_port(name: str, value: str) -> tuple[str, int]:
    """`PORT` (loopback), `HOST:PORT` or `[IPV6]:PORT` -> (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep:
        host = "127.0.0.1"
    elif host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not port.isdigit() or not 1 <= int(port) <= 65535 or not re.fullmatch(r"[A-Za-z0-9.:_-]+", host):
        raise UsageError(f"option {name}= needs PORT or HOST:PORT (port 1 to 65535), got {value!r}")
    return host, int(port)


def text(name: str, value: str) -> str:
    if not value:
        raise UsageError(f"option {name}= needs a value")
    return value


def group(name: str, value: str) -> int:
    """A group name or number: the gid."""
    import grp
    if value.isdigit():
        gid = int(value)
        if gid > 2**32 - 2:
            raise UsageError(f"option {name}={value}: not a group id")
        return gid
    try:
        return grp.getgrnam(text(name, value)).gr_gid
    except KeyError:
        raise UsageError(f"option {name}={value}: no such group") from None


def one_of(*choices: str) -> Callable[[str, str], str]:
    def parse(name: str, value: str) -> str:
        if value not in choices:
            raise UsageError(f"option {name}= must be one of {', '.join(choices)}; got {value!r}")
        return value
    return parse


def ignored(name: str, value: str) -> None:
    """Accepted for compatibility; the value is not used."""
    return None


def loglevel(name: str, value: str) -> str:
    levels = {"crit": "CRITICAL", "critical": "CRITICAL", "err": "ERROR", "error": "ERROR",
              "warn": "WARNING", "warning": "WARNING", "info": "INFO", "dbg": "DEBUG", "debug": "DEBUG"}
    try:
        return levels[value.lower()]
    except KeyError:
        raise UsageError(f"option {name}= must be one of crit, err, warn, info, dbg; got {value!r}") from None


# s3fs's lower-case names -> S3's; other already upper-case names pass (Ceph RGW custom classes)
_STORAGE_CLASSES = {name.lower(): name for name in (
    "STANDARD", "STANDARD_IA", "ONEZONE_IA", "REDUCED_REDUNDANCY", "INTELLIGENT_TIERING", "GLACIER",
    "GLACIER_IR", "DEEP_ARCHIVE", "EXPRESS_ONEZONE", "OUTPOSTS", "SNOW")}


def storage_class(name: str, value: str) -> str:
    known = _STORAGE_CLASSES.get(value.lower().replace("-", "_"))
    if known:
        return known
    if re.fullmatch(r"[A-Z][A-Z0-9_]{0,63}", value):
        return value
    raise UsageError(f"option {name}= must be a storage class such as standard, standard_ia, onezone_ia, "
                     f"intelligent_tiering, glacier_ir, glacier, deep_archive (or an upper-case class name "
                     f"of your store); got {value!r}")


CANNED_ACLS = ("private", "public-read", "public-read-write", "aws-exec-read", "authenticated-read",
               "bucket-owner-read", "bucket-owner-full-control", "log-delivery-write")


def canned_acl(name: str, value: str) -> str:
    if value not in CANNED_ACLS:
        raise UsageError(f"option {name}= must be a canned ACL ({', '.join(CANNED_ACLS)}); got {value!r}")
    return value


def sse(name: str, value: str) -> tuple[str, str]:
    """s3fs's use_sse forms -> (kind, detail); kind is "s3", "kms" or "custom".

    `1`/bare: SSE-S3.  `kmsid`/`k`[`:ID`]: SSE-KMS (ID or $AWSSSEKMSID).
    `custom`/`c`[`:FILE`], or an absolute FILE (old form): SSE-C (FILE or $AWSSSECKEYS).
    """
    kind, _, detail = value.partition(":")
    if value in ("1", "", "sse-s3", "s3"):
        return "s3", ""
    if kind in ("kmsid", "k"):
        return "kms", detail
    if kind in ("custom", "c"):
        return "custom", detail
    if value.startswith("/"):
        return "custom", value
    raise UsageError(f"option {name}= must be 1, kmsid[:KEY_ID] or custom[:KEY_FILE]; got {value!r}")


def yes(name: str, value: str) -> bool:
    """s3fs's `opt=1` spelling of a flag (`opt` alone means the same)."""
    if value in ("1", "true", "yes", ""):
        return True
    if value in ("0", "false", "no"):
        return False
    raise UsageError(f"option {name}= must be 1 or 0, got {value!r}")


_LABEL_PART = r"[A-Za-z0-9_.-]+"
_SELINUX_CONTEXT = re.compile(rf"^{_LABEL_PART}:{_LABEL_PART}:{_LABEL_PART}(:[A-Za-z0-9_.,:-]+)?$")


def selinux_context(name: str, value: str) -> str:
    """The label as the kernel must receive it: `"..."` when it contains a comma.

    Accepts `user:role:type[:range]` written plain, in double or single quotes,
    and/or with commas escaped as `\\,`.  Quotes the user wrote are kept.
    """
    raw = re.sub(r"\\(.)", r"\1", value)                   # \, -> ,   \\ -> \
    quoted = len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "\"'"
    label = raw[1:-1] if quoted else raw
    if not _SELINUX_CONTEXT.match(label):
        raise UsageError(f"option {name}= needs an SELinux context user:role:type[:level] such as "
                         f"system_u:object_r:container_file_t:s0:c1,c2; got {value!r}")
    return f'"{label}"' if quoted or "," in label else label
