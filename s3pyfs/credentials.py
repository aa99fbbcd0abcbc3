"""Where the access key comes from, in s3fs-fuse's order; secret files are checked.

Order: `passwd_file=` option, then AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY
(+ AWS_SESSION_TOKEN), then `profile=` (botocore reads the shared files),
then ~/.passwd-s3fs and /etc/passwd-s3fs, then botocore's own chain
(instance/container role, web identity), which also refreshes expiring keys.
A `BUCKET:ACCESS:SECRET` line for the mounted bucket wins over an
`ACCESS:SECRET` line.

Invariants: a secret never appears in an exception message or a log line;
a passwd file readable by group/others (group allowed for /etc/passwd-s3fs,
as in s3fs) or executable is refused before anything is sent.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import os
import stat

from .errors import CredentialsError

SYSTEM_PASSWD_FILE = "/etc/passwd-s3fs"


@dataclasses.dataclass(frozen=True)
class StaticKeys:
    access_key: str
    secret_key: str = dataclasses.field(repr=False)
    session_token: str | None = dataclasses.field(default=None, repr=False)
    source: str = ""


def check_secret_file_mode(path: str, what: str = "passwd file") -> None:
    try:
        st = os.stat(path)
    except OSError as exc:
        raise CredentialsError(f"cannot read {what} {path}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise CredentialsError(f"{what} {path} is not a regular file")
    allowed_group = os.path.abspath(path) == SYSTEM_PASSWD_FILE
    loose = st.st_mode & (stat.S_IRWXO | stat.S_IXUSR | stat.S_IXGRP)
    if not allowed_group:
        loose |= st.st_mode & stat.S_IRWXG
    else:
        loose |= st.st_mode & stat.S_IWGRP
    if loose:
        raise CredentialsError(
            f"{what} {path} has mode {stat.S_IMODE(st.st_mode):04o}, which lets other users read it "
            f"or is executable; fix it with: chmod 600 {path}")


def read_passwd_file(path: str, bucket: str) -> StaticKeys:
    """Keys for `bucket` from an s3fs passwd file (raises CredentialsError)."""
    check_secret_file_mode(path)
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise CredentialsError(f"cannot read passwd file {path}: {getattr(exc, 'strerror', None) or 'not UTF-8'}") from None
    default = None
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") or "=" in line.split(":", 1)[0]:
            raise CredentialsError(f"{path} line {number}: expected ACCESS:SECRET or BUCKET:ACCESS:SECRET "
                                   "(AWS credential-file syntax is read through profile=)")
        fields = line.split(":")
        if len(fields) == 2 and all(fields):
            default = default or StaticKeys(fields[0], fields[1], source=path)
        elif len(fields) == 3 and all(fields):
            if fields[0] == bucket:
                return StaticKeys(fields[1], fields[2], source=path)
        else:
            raise CredentialsError(f"{path} line {number}: expected ACCESS:SECRET or BUCKET:ACCESS:SECRET")
    if default is None:
        raise CredentialsError(f"{path} has no ACCESS:SECRET line and no line for bucket {bucket}")
    return default


def resolve_static_keys(passwd_file: str | None, profile: str | None, bucket: str,
                        environ: dict[str, str] | None = None, need_token: bool = False) -> StaticKeys | None:
    """Static keys if one of the s3fs sources names them; None: let botocore's chain decide.

    `need_token` (s3fs's use_session_token): environment keys without
    AWS_SESSION_TOKEN are refused.
    """
    env = os.environ if environ is None else environ
    if passwd_file:
        return read_passwd_file(passwd_file, bucket)
    access, secret = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")
    if access and secret:
        token = env.get("AWS_SESSION_TOKEN") or None
        if need_token and not token:
            raise CredentialsError("use_session_token is set but AWS_SESSION_TOKEN is not")
        return StaticKeys(access, secret, token, source="environment")
    if access or secret:
        raise CredentialsError("only one of AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY is set")
    if profile:
        return None
    for candidate in (os.path.join(os.path.expanduser("~"), ".passwd-s3fs"), SYSTEM_PASSWD_FILE):
        if os.path.exists(candidate):
            return read_passwd_file(candidate, bucket)
    return None


def decode_sse_c_key(text: str, source: str) -> bytes:
    """An SSE-C key as s3fs reads it: 32 characters as they are, else base64 of 32 bytes."""
    text = text.strip()
    if len(text) == 32:
        return text.encode("utf-8")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise CredentialsError(f"{source}: an SSE-C key must be 32 characters, or 32 bytes in base64")
    return raw


def read_sse_c_key(path: str | None, environ: dict[str, str] | None = None) -> bytes:
    """The first SSE-C key of `path` (mode 600), or of $AWSSSECKEYS (keys separated by ':')."""
    if path:
        check_secret_file_mode(path, "SSE-C key file")
        try:
            with open(path, encoding="utf-8") as fh:
                lines = [line.strip() for line in fh if line.strip() and not line.startswith("#")]
        except (OSError, UnicodeDecodeError) as exc:
            raise CredentialsError(f"cannot read SSE-C key file {path}: {getattr(exc, 'strerror', None) or 'not UTF-8'}") from None
        if not lines:
            raise CredentialsError(f"SSE-C key file {path} has no key")
        return decode_sse_c_key(lines[0], f"SSE-C key file {path}")
    env = os.environ if environ is None else environ
    keys = [k for k in env.get("AWSSSECKEYS", "").split(":") if k.strip()]
    if not keys:
        raise CredentialsError("use_sse=custom needs a key file (use_sse=custom:FILE) or AWSSSECKEYS")
    return decode_sse_c_key(keys[0], "AWSSSECKEYS")
