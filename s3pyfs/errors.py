"""Exception tree of s3pyfs; every class carries the errno a caller should see.

Invariant: code below `operations.py` raises only `FSError` subclasses for
conditions a user can cause (missing file, directory not empty, ...).  The
FUSE adapter turns `FSError.errno` into a `FUSEError`; anything else is a bug
or an infrastructure failure and is answered with EIO after one log line.

`UsageError` and friends are raised before mounting; they carry the process
exit code documented in the man page (section EXIT STATUS) instead of an errno.
"""

import errno as _errno


class S3pyfsError(Exception):
    """Base of every exception raised on purpose by s3pyfs."""


class FSError(S3pyfsError):
    """A filesystem operation failed with `self.errno`."""

    errno = _errno.EIO
    detached: tuple[int, str] | None = None  # (parent inode, name) a refused upload detached (files.py)

    def __init__(self, message: str = "", errno: int | None = None) -> None:
        super().__init__(message or self.__class__.__name__)
        if errno is not None:
            self.errno = errno


class NotFound(FSError):
    errno = _errno.ENOENT


class RenamedElsewhere(NotFound):
    """The source of a rename is gone: an earlier failed rename of it to another name
    was finished (directory renames, dirrename.py)."""


class Exists(FSError):
    errno = _errno.EEXIST


class NotEmpty(FSError):
    errno = _errno.ENOTEMPTY


class NotADirectory(FSError):
    errno = _errno.ENOTDIR


class IsADirectory(FSError):
    errno = _errno.EISDIR


class NotPermitted(FSError):
    errno = _errno.EPERM


class AccessDenied(FSError):
    errno = _errno.EACCES


class ReadOnly(FSError):
    errno = _errno.EROFS


class InvalidArgument(FSError):
    errno = _errno.EINVAL


class NameTooLong(FSError):
    errno = _errno.ENAMETOOLONG


class NoAttribute(FSError):
    errno = _errno.ENODATA


class NotSupported(FSError):
    errno = _errno.ENOTSUP


class NoSpace(FSError):
    errno = _errno.ENOSPC


class Stale(FSError):
    """The file behind an open handle was removed or replaced and S3 keeps no old copy."""

    errno = _errno.ESTALE


class RemoteIOError(FSError):
    """S3 failed (network, 5xx after retries, timeout, unexpected answer)."""

    errno = _errno.EIO
    request_id: str = ""          # the store's request id, when it gave one (for the log)


class NoSuchBucket(RemoteIOError):
    """The bucket itself is missing (EIO for file operations, exit 4 at start-up)."""


class RemoteTimeout(RemoteIOError):
    """An S3 call did not finish within its deadline."""


class Conflict(RemoteIOError):
    """S3 holds another version than the one the operation was based on (a conditional
    request failed: 412/409, or the version check before a commit): nothing was
    overwritten.  `current_etag` names the version that won, when known."""

    def __init__(self, message: str = "", current_etag: str | None = None) -> None:
        super().__init__(message)
        self.current_etag = current_etag


# --- before mounting: exit codes (documented in README and man/s3pyfs.1) ---

EXIT_OK = 0
EXIT_FAILURE = 1        # unexpected internal error
EXIT_USAGE = 2          # bad command line or -o option
EXIT_CREDENTIALS = 3    # credentials missing/invalid, secret file unsafe
EXIT_UNREACHABLE = 4    # endpoint unreachable or bucket missing (access denied is EXIT_CREDENTIALS)
EXIT_MOUNT = 5          # mount point invalid or the kernel mount failed
EXIT_DIRTY = 6          # unmounted, but some written data could not be uploaded


class StartupError(S3pyfsError):
    """Refusal to start; `exit_code` is the process exit status."""

    exit_code = EXIT_FAILURE


class UsageError(StartupError):
    exit_code = EXIT_USAGE


class CredentialsError(StartupError):
    exit_code = EXIT_CREDENTIALS


class UnreachableError(StartupError):
    exit_code = EXIT_UNREACHABLE


class MountError(StartupError):
    exit_code = EXIT_MOUNT


class StateDirError(StartupError):
    """A local state directory (dirty data, journal, disk cache) is not safely ours."""

    exit_code = EXIT_MOUNT
