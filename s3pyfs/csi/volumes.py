"""What a CSI request means for s3pyfs: volume ids, bucket names, secrets, checks.

Responsibility: turn request fields into checked values and gRPC errors, shared by the
controller and the node service.  No S3 request and no mount happens here.
Invariants:
  * a volume id is `BUCKET` (a bucket per volume) or `BUCKET/PREFIX` (one prefix of a
    shared bucket); a prefix never has empty, `.` or `..` segments;
  * a bucket named from a volume name is a valid S3 bucket name (3-63 characters of
    a-z, 0-9, '-', starting and ending with a letter or digit), and two different names
    never map onto one bucket unless the name itself was already valid;
  * secret values never appear in a CsiError message, a log line or repr(): `Secrets`
    hides them and `scrub` removes them from any text meant for the caller.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import grpc

from . import csi_pb2 as pb


class CsiError(Exception):
    """A request refused with a gRPC status code; the message goes to the caller."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def invalid(message: str) -> CsiError:
    return CsiError(grpc.StatusCode.INVALID_ARGUMENT, message)


# ---------------------------------------------------------------------- secrets
@dataclass(frozen=True)
class Secrets:
    """The S3 connection a request's secrets name.  repr() never shows the keys."""
    access_key: str = field(repr=False)
    secret_key: str = field(repr=False)
    endpoint: str
    region: str | None = None

    @property
    def plain_http(self) -> bool:
        return self.endpoint.lower().startswith("http://")

    def environment(self) -> dict[str, str]:
        """What a mount process gets: keys and endpoint through its environment, never argv."""
        env = {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
               "AWS_ENDPOINT_URL": self.endpoint}
        if self.region:
            env["AWS_REGION"] = self.region
        return env


def parse_secrets(secrets) -> Secrets:
    """accessKeyID, secretAccessKey, endpoint (URL) and optional region.
    Missing keys: UNAUTHENTICATED (the request carries no valid secrets, spec's wording);
    a missing or malformed endpoint: INVALID_ARGUMENT."""
    access, secret = secrets.get("accessKeyID", ""), secrets.get("secretAccessKey", "")
    if not access or not secret:
        raise CsiError(grpc.StatusCode.UNAUTHENTICATED,
                       "the secrets must hold accessKeyID and secretAccessKey")
    endpoint = secrets.get("endpoint", "")
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password:
        raise invalid("the secrets must hold endpoint, an http:// or https:// URL without user information")
    return Secrets(access, secret, endpoint.rstrip("/"), secrets.get("region") or None)


def scrub(text: str, secrets) -> str:
    """`text` with every secret value of the request replaced by ***."""
    for value in sorted((v for v in dict(secrets).values() if v and len(v) >= 4), key=len, reverse=True):
        text = text.replace(value, "***")
    return text


# ---------------------------------------------------------------------- volume ids
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_SEGMENT_RE = re.compile(r"^[A-Za-z0-9._-]{1,200}$")


def valid_bucket(name: str) -> bool:
    return bool(_BUCKET_RE.match(name)) and ".." not in name and not re.match(r"^\d+\.\d+\.\d+\.\d+$", name)


def bucket_for_volume(name: str) -> str:
    """A valid S3 bucket name for a volume name: the name itself when it already is one
    (and has no '.'), else its lowercase letters/digits/dashes plus a hash of the name."""
    if valid_bucket(name) and "." not in name:
        return name
    base = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:50].strip("-") or "vol"
    return f"{base}-{hashlib.sha256(name.encode()).hexdigest()[:12]}"


def prefix_for_volume(name: str) -> str:
    """The prefix of a volume inside a shared bucket: the name, which must be one segment."""
    if not _SEGMENT_RE.match(name) or name in (".", ".."):
        raise invalid(f"volume name {name!r} cannot be a prefix (letters, digits, '.', '_', '-')")
    return name


@dataclass(frozen=True)
class VolumeId:
    bucket: str
    prefix: str = ""             # without slashes at either end; "" = the whole bucket

    def __str__(self) -> str:
        return f"{self.bucket}/{self.prefix}" if self.prefix else self.bucket

    @property
    def source(self) -> str:
        """s3pyfs's BUCKET[:/PREFIX] argument."""
        return f"{self.bucket}:/{self.prefix}" if self.prefix else self.bucket


def parse_volume_id(volume_id: str) -> VolumeId:
    if not volume_id:
        raise invalid("volume_id is missing")
    bucket, _, prefix = volume_id.partition("/")
    segments = [s for s in prefix.split("/")] if prefix else []
    if not valid_bucket(bucket) or any(s in ("", ".", "..") for s in segments):
        raise CsiError(grpc.StatusCode.NOT_FOUND, f"{volume_id!r} is not a volume id of this driver (BUCKET or BUCKET/PREFIX)")
    return VolumeId(bucket, "/".join(segments))


# ---------------------------------------------------------------------- parameters and capabilities
PARAMETERS = ("bucket", "options", "pathStyle")


def check_parameters(parameters) -> dict[str, str]:
    """The StorageClass parameters this driver knows; external-provisioner's own
    (csi.storage.k8s.io/...) are ignored, anything else is INVALID_ARGUMENT."""
    unknown = [k for k in parameters if k not in PARAMETERS and not k.startswith("csi.storage.k8s.io/")]
    if unknown:
        raise invalid(f"unknown parameter(s) {', '.join(sorted(unknown))}; known: {', '.join(PARAMETERS)}")
    found = {k: parameters[k] for k in PARAMETERS if k in parameters}
    if "pathStyle" in found and found["pathStyle"] not in ("true", "false"):
        raise invalid("parameter pathStyle must be \"true\" or \"false\"")
    check_options(found.get("options", ""))
    return found


# options the driver sets itself or that would move the mount's credentials, bucket or logs
_DRIVER_OWNED = {"bucket", "passwd_file", "url", "logfile", "tmpdir", "use_cache", "allow_root",
                 "auto_unmount", "profile", "iam_role", "ecs", "public_bucket"}


def check_options(options: str) -> None:
    """s3pyfs -o options from `options` / mount_flags, parsed as the mount will parse them."""
    if not options:
        return
    from ..errors import UsageError
    from ..options import MountOptions, apply_option_string
    names = {item.split("=", 1)[0].strip() for item in options.split(",") if item.strip()}
    owned = sorted(names & _DRIVER_OWNED)
    if owned:
        raise invalid(f"option(s) {', '.join(owned)} are set by the driver and cannot be given")
    try:
        apply_option_string(MountOptions(), options)
    except UsageError as exc:
        raise invalid(f"bad s3pyfs options: {exc}") from None


def check_capability(capability, what: str = "volume_capability") -> None:
    """A filesystem capability (any access mode): fine; block or no access type: refused."""
    if capability.HasField("block"):
        raise invalid(f"{what}: block volumes are not supported (s3pyfs is a filesystem)")
    if not capability.HasField("mount"):
        raise invalid(f"{what}: access_type mount is required")
    if capability.access_mode.mode == pb.VolumeCapability.AccessMode.UNKNOWN:
        raise invalid(f"{what}: access_mode is missing")
    fs_type = capability.mount.fs_type
    if fs_type and fs_type not in ("s3pyfs", "fuse.s3pyfs", "fuse"):
        raise invalid(f"{what}: fs_type {fs_type!r} is not supported (leave it empty)")


def mount_flags(capability) -> str:
    """mount_flags (a PV's mountOptions) as one s3pyfs -o string; `-o` and commas accepted."""
    items = []
    for flag in capability.mount.mount_flags:
        items += [i.strip() for i in flag.split(",") if i.strip() and i.strip() != "-o"]
    joined = ",".join(items)
    check_options(joined)
    return joined
