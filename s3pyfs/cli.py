"""Command line: argv -> MountOptions, --help, --version, exit codes.

Responsibility: everything that happens before the S3 client exists:
parse `s3pyfs BUCKET[:/PREFIX] MOUNTPOINT [-f] [-d] [-s] [-o opts]`, validate
the bucket name, the mount point and the credentials source, then hand over
to `mount.run`.
Invariants: every refusal is one line on stderr, `s3pyfs: <reason>`, and the
exit code of its `StartupError` class (see errors.py / man page); no
traceback and no secret is printed for bad input.
"""

from __future__ import annotations

import os
import re
import sys

from . import __version__
from .errors import (
    EXIT_CREDENTIALS,
    EXIT_DIRTY,
    EXIT_FAILURE,
    EXIT_MOUNT,
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    StartupError,
    UsageError,
)
from .options import MountOptions, apply_option_string, help_text

USAGE = ("usage: s3pyfs BUCKET[:/PREFIX] MOUNTPOINT [-f] [-d] [-s] [-o OPTION[,OPTION...]]\n"
         "       s3pyfs MOUNTPOINT -o bucket=BUCKET[:/PREFIX][,OPTION...]\n"
         "       s3pyfs status MOUNTPOINT [--json]\n"
         "       s3pyfs csi --endpoint unix:///PATH/csi.sock --node-id NODE")

# --help's summary of the exit codes; README's "Exit status" table and the man page's
# EXIT STATUS section list the same codes (tests/test_options.py compares them).
EXIT_STATUS = (
    (EXIT_OK, "ok"),
    (EXIT_FAILURE, "internal error"),
    (EXIT_USAGE, "usage"),
    (EXIT_CREDENTIALS, "credentials"),
    (EXIT_UNREACHABLE, "endpoint or bucket unreachable"),
    (EXIT_MOUNT, "mount failed"),
    (EXIT_DIRTY, "data not uploaded"),
)

# Lenient on purpose: S3-compatible stores and old us-east-1 buckets allow
# upper case and underscores; what is refused can never be a bucket.
_BUCKET_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,253}[A-Za-z0-9]$")


def parse_source(opts: MountOptions, source: str) -> None:
    opts.source = source
    bucket, sep, prefix = source.partition(":")
    if not _BUCKET_RE.match(bucket) or ".." in bucket:
        raise UsageError(f"{bucket!r} is not a valid bucket name (3-255 letters, digits, '.', '-', '_')")
    opts.bucket = bucket
    if sep:
        if not prefix.startswith("/"):
            raise UsageError(f"prefix in {source!r} must start with '/': BUCKET:/PREFIX")
        parts = [p for p in prefix.split("/") if p]
        if any(p in (".", "..") for p in parts):
            raise UsageError(f"prefix in {source!r} must not contain '.' or '..' segments")
        opts.prefix = "/".join(parts) + "/" if parts else ""


def parse_args(argv: list[str]) -> MountOptions | None:
    """MountOptions, or None when --help/--version was answered."""
    opts = MountOptions()
    positional: list[str] = []
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg in ("-h", "--help"):
            print(f"{USAGE}\n\nMount an S3 bucket as a filesystem.\n\n"
                  f"  -f    stay in the foreground, log to stderr\n"
                  f"  -d    debug log (implies -f)\n"
                  f"  -s    accepted for compatibility (s3pyfs always serves requests concurrently)\n"
                  f"  -o    comma-separated options:\n\n{help_text()}\n\n"
                  f"fstab words such as _netdev, nofail, noauto, x-* are accepted and ignored.\n"
                  f"Exit status: {', '.join(f'{code} {text}' for code, text in EXIT_STATUS)}.\n"
                  f"See s3pyfs(1).")
            return None
        if arg in ("-V", "--version"):
            print(f"s3pyfs {__version__}")
            return None
        if arg == "-f":
            opts.foreground = True
        elif arg == "-d":
            opts.foreground = True
            opts.debug = True
            opts.log_level = "DEBUG"
        elif arg == "-s":
            pass
        elif arg == "-o":
            if not args:
                raise UsageError("-o needs an option list")
            apply_option_string(opts, args.pop(0))
        elif arg.startswith("-o") and len(arg) > 2:
            apply_option_string(opts, arg[2:])
        elif arg.startswith("-") and arg != "-":
            raise UsageError(f"unknown flag {arg!r}")
        else:
            positional.append(arg)
    if len(positional) == 1 and opts.bucket_option:      # s3fs's `s3fs MOUNTPOINT -o bucket=NAME`
        positional.insert(0, opts.bucket_option)
    elif opts.bucket_option and len(positional) == 2:
        raise UsageError("the bucket is given twice: as BUCKET argument and as -o bucket=")
    if len(positional) != 2:
        raise UsageError(f"expected BUCKET[:/PREFIX] and MOUNTPOINT, got {len(positional)} arguments\n{USAGE}")
    parse_source(opts, positional[0])
    opts.mountpoint = os.path.abspath(positional[1])
    # the daemon changes to / before it opens these
    for attr in ("logfile", "tmpdir", "use_cache", "passwd_file"):
        if getattr(opts, attr):
            setattr(opts, attr, os.path.abspath(getattr(opts, attr)))
    if opts.debug:
        opts.log_level = "DEBUG"
    room = opts.key_max - len(opts.prefix.encode("utf-8"))
    if room < 1:                  # not even a one-byte name fits below the prefix
        raise UsageError(f"the prefix is {len(opts.prefix.encode('utf-8'))} bytes as a key; with key_max={opts.key_max} "
                         f"no name fits below it (raise key_max or shorten the prefix)")
    if opts.multipart_size * 2 > opts.max_memory:      # a part buffer must fit the memory budget twice
        raise UsageError(f"multipart_size={opts.multipart_size} needs max_memory={opts.multipart_size * 2} "
                         f"or more (max_memory={opts.max_memory}); lower multipart_size or raise max_memory")
    return opts


def is_status_command(args: list[str]) -> bool:
    """`s3pyfs status MOUNTPOINT [--json ...]`; a mount has -o/-f/-d/-s or a second path
    (a bucket named `status` is mounted as `status:/`)."""
    if not args or args[0] != "status":
        return False
    rest = args[1:]
    if any(a in ("-f", "-d", "-s", "-o") or a.startswith("-o") for a in rest):
        return False
    values = {"--window", "--max-dirty-age"}
    positional = [a for i, a in enumerate(rest) if not a.startswith("-") and (i == 0 or rest[i - 1] not in values)]
    return len(positional) <= 1


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if is_status_command(args):
        from .status import main as status_main
        return status_main(args[1:])
    if args[:1] == ["csi"] and (args[1:] in (["-h"], ["--help"]) or
                                any(a == "--endpoint" or a.startswith("--endpoint=") for a in args)):
        from .csi.server import main as csi_main
        return csi_main(args[1:])
    try:
        opts = parse_args(args)
        if opts is None:
            return 0
        from .mount import run
        return run(opts)
    except StartupError as exc:
        print(f"s3pyfs: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return EXIT_FAILURE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

__all__ = ["main", "parse_args", "EXIT_USAGE"]
