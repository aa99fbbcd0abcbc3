"""Object metadata <-> file attributes, in s3fs-fuse's header format.

Responsibility: pure conversions, no I/O.  Headers (user metadata as botocore
hands it over, names without the `x-amz-meta-` prefix):
  mode   st_mode including the file type bits (S_IFLNK for symlinks); written
         decimal, read like C's strtol base 0 as s3fs does: `0100750` (leading
         0) is octal, `0x81e8` hex, anything else decimal
  uid, gid   written decimal, read like mode
  rdev   decimal
  mtime, ctime, atime   seconds since the epoch, integer or `sec.fraction`
  xattr  URL-encoded JSON object {"name": "base64(value)"}  (s3fs's encoding)
Invariants:
  * Objects written by other tools (no metadata) get a sane mode: 0666/0777
    minus the mount's umask, never 0 (no `d---------`).
  * `user_metadata()` of `attrs_from_object()` of an s3fs object gives back the
    same headers for the fields s3pyfs knows; unknown headers are kept verbatim.
  * `Attrs.headers` holds the object's own system headers (Content-Type,
    Content-Encoding, Cache-Control, Content-Disposition, Content-Language,
    Expires, storage class, SSE and KMS key id; s3client.KEPT_HEADERS, botocore's
    names) as its last HEAD showed them, or as this mount chose them for a new
    file; every rewrite of the object (metadata copy, upload, rename) re-sends them.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import logging
import stat
import urllib.parse

log = logging.getLogger(__name__)

S3_USER_METADATA_LIMIT = 2048   # bytes of x-amz-meta-* names+values AWS accepts
DIR_CONTENT_TYPE = "application/x-directory"
KNOWN_HEADERS = ("mode", "uid", "gid", "rdev", "mtime", "ctime", "atime", "xattr")


@dataclasses.dataclass
class Defaults:
    """What objects without metadata look like, and mount-wide overrides."""
    uid: int
    gid: int
    umask: int = 0o022
    force_uid: int | None = None
    force_gid: int | None = None
    force_umask: int | None = None


@dataclasses.dataclass
class Attrs:
    mode: int
    uid: int
    gid: int
    size: int = 0
    mtime_ns: int = 0
    ctime_ns: int = 0
    atime_ns: int = 0
    rdev: int = 0
    etag: str | None = None
    xattrs: dict[str, bytes] = dataclasses.field(default_factory=dict)
    extra: dict[str, str] = dataclasses.field(default_factory=dict)  # foreign headers, kept
    headers: dict[str, str] = dataclasses.field(default_factory=dict)  # system headers, kept

    @property
    def kind(self) -> int:
        return stat.S_IFMT(self.mode)

    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.mode)

    def copy(self) -> Attrs:
        return dataclasses.replace(self, xattrs=dict(self.xattrs), extra=dict(self.extra),
                                   headers=dict(self.headers))


def parse_time_ns(text: str | None) -> int | None:
    """`1700000000`, `1700000000.5` or `1700000000.123456789` -> ns; None if unusable."""
    if not text:
        return None
    sec, _, frac = text.strip().partition(".")
    try:
        seconds = int(sec)
        nanos = int((frac + "000000000")[:9]) if frac else 0
    except ValueError:
        return None
    if seconds < 0:
        return None
    return seconds * 1_000_000_000 + nanos


def format_time_ns(ns: int) -> str:
    sec, nanos = divmod(ns, 1_000_000_000)
    return str(sec) if nanos == 0 else f"{sec}.{nanos:09d}"


def encode_xattrs(xattrs: dict[str, bytes]) -> str:
    body = json.dumps({name: base64.b64encode(value).decode("ascii") for name, value in sorted(xattrs.items())},
                      separators=(",", ":"), ensure_ascii=False)
    return urllib.parse.quote(body, safe="")


def decode_xattrs(text: str) -> dict[str, bytes]:
    try:
        raw = json.loads(urllib.parse.unquote(text))
        return {str(name): base64.b64decode(value) for name, value in raw.items()}
    except (ValueError, TypeError, AttributeError, binascii.Error):
        log.debug("ignoring unreadable xattr header %.80r", text)
        return {}


def _int_header(meta: dict[str, str], name: str) -> int | None:
    try:
        return int(meta[name])
    except (KeyError, ValueError):
        return None


def _c_int_header(meta: dict[str, str], name: str) -> int | None:
    """A header as s3fs reads it (strtol base 0): `0755`/`0100750` octal, `0x1ed` hex, else decimal."""
    text = meta.get(name, "").strip()
    if not text.isascii() or "_" in text:      # int() would take 1_000; strtol does not
        return None
    try:
        if len(text) > 1 and text[0] == "0" and text[1] not in "xX":
            return int(text, 8)
        return int(text, 16) if text[:2].lower() == "0x" else int(text, 10)
    except ValueError:
        return None


def attrs_from_object(*, key_is_dir: bool, size: int, etag: str | None, last_modified_ns: int,
                      metadata: dict[str, str], content_type: str | None, defaults: Defaults,
                      headers: dict[str, str] | None = None) -> Attrs:
    """Attributes of one object (or directory marker) from its HEAD/LIST data; `headers`:
    the system headers its HEAD showed (kept, see `Attrs.headers`)."""
    meta = {k.lower(): v for k, v in (metadata or {}).items()}
    mode = _c_int_header(meta, "mode")
    if mode is not None and stat.S_IFMT(mode) == 0:
        mode |= stat.S_IFDIR if key_is_dir else stat.S_IFREG
    if mode is None or mode <= 0 or mode > 0o177777:
        if key_is_dir or content_type == DIR_CONTENT_TYPE:
            mode = stat.S_IFDIR | (0o777 & ~defaults.umask)
        else:
            mode = stat.S_IFREG | (0o666 & ~defaults.umask)
    elif key_is_dir and not stat.S_ISDIR(mode):
        mode = stat.S_IFDIR | stat.S_IMODE(mode)
    mtime = parse_time_ns(meta.get("mtime")) or last_modified_ns
    uid = _c_int_header(meta, "uid")
    gid = _c_int_header(meta, "gid")
    attrs = Attrs(
        mode=mode,
        uid=uid if uid is not None else defaults.uid,
        gid=gid if gid is not None else defaults.gid,
        size=size,
        mtime_ns=mtime,
        ctime_ns=parse_time_ns(meta.get("ctime")) or mtime,
        atime_ns=parse_time_ns(meta.get("atime")) or mtime,
        rdev=_int_header(meta, "rdev") or 0,
        etag=etag,
        xattrs=decode_xattrs(meta["xattr"]) if "xattr" in meta else {},
        extra={k: v for k, v in meta.items() if k not in KNOWN_HEADERS},
        headers=dict(headers or {}),
    )
    return attrs


def user_metadata(attrs: Attrs) -> dict[str, str]:
    """The x-amz-meta-* headers (without prefix) that store `attrs`."""
    meta = dict(attrs.extra)
    meta.update({
        "mode": str(attrs.mode),
        "uid": str(attrs.uid),
        "gid": str(attrs.gid),
        "mtime": format_time_ns(attrs.mtime_ns),
        "ctime": format_time_ns(attrs.ctime_ns),
        "atime": format_time_ns(attrs.atime_ns),
    })
    if attrs.rdev:
        meta["rdev"] = str(attrs.rdev)
    if attrs.xattrs:
        meta["xattr"] = encode_xattrs(attrs.xattrs)
    return meta


def metadata_size(meta: dict[str, str]) -> int:
    return sum(len(k.encode()) + len(v.encode()) for k, v in meta.items())


def reported_mode(attrs: Attrs, defaults: Defaults) -> int:
    if defaults.force_umask is None:
        return attrs.mode
    return attrs.mode & ~defaults.force_umask


def reported_owner(attrs: Attrs, defaults: Defaults) -> tuple[int, int]:
    uid = defaults.force_uid if defaults.force_uid is not None else attrs.uid
    gid = defaults.force_gid if defaults.force_gid is not None else attrs.gid
    return uid, gid
