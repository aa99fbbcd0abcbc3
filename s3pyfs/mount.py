"""Process lifecycle: validate, daemonize, mount, serve, drain dirty data, exit.

Responsibility: the order of start-up and shut-down.
  1. In the calling process, before trio or any thread exists: check the mount
     point and the credentials source (cli.py checked the syntax), and create and
     check the local state directories (statedir.py; exit 5 when not safely ours).
     A mount point `/dev/fd/N` is an inherited /dev/fuse descriptor someone else
     mounted: libfuse serves it as it is and never unmounts it.
  2. Without -f: fork.  The parent waits on a readiness pipe and exits 0 only
     when the child reports the mount live, or with the child's exit code and
     its one-line reason.  The child detaches (setsid, stdio to /dev/null after
     mounting) and logs to `logfile=` or syslog.
  3. trio: open the S3 client, prove endpoint + bucket + credentials with one
     cheap request, probe whether the store enforces conditional writes
     (a reserved probe key, removed at once), pyfuse3.init, report ready
     (pipe, or READY=1 to $NOTIFY_SOCKET), serve.
     Before that, dirty data left by an earlier mount of the bucket that
     died (journal directories nobody holds) is uploaded (recovery.py), after
     the directory renames such a mount left half done are finished (dirrename.py).
  4. SIGTERM/SIGINT: upload dirty data, then leave the FUSE loop and unmount.
     After an external `umount` the loop ends by itself; dirty data is drained
     then too, within `drain_timeout`.  Exit 0, or EXIT_DIRTY naming what could
     not be uploaded; that data stays in the journal for the next mount.
Invariants: only this module and operations.py import pyfuse3; nothing after
the fork writes to the caller's stdout/stderr except libfuse's own mount error.
"""

from __future__ import annotations

import errno
import logging
import logging.handlers
import os
import signal
import socket
import stat
import sys

import pyfuse3
import trio

from . import __version__, dirrename, journal, kernel, metrics, recovery, selinux, statedir
from .concurrency import background_spawner
from .core import Config
from .credentials import resolve_static_keys
from .disk_cache import DiskCache
from .errors import (
    EXIT_DIRTY,
    EXIT_FAILURE,
    EXIT_OK,
    CredentialsError,
    FSError,
    MountError,
    NoSuchBucket,
    StartupError,
    StateDirError,
    UnreachableError,
    UsageError,
)
from .filesystem import Filesystem
from .metadata import Defaults
from .operations import Operations
from .options import MountOptions
from .s3args import request_args
from .s3client import ClientSettings, open_client

log = logging.getLogger("s3pyfs")


# ---------------------------------------------------------------------- checks before forking
def fuse_fd(path: str) -> int | None:
    """N when the mount point is `/dev/fd/N` (libfuse's form for an already-opened /dev/fuse
    descriptor: whoever passed it mounted it; libfuse then serves it and never unmounts)."""
    head, _, number = path.rpartition("/")
    return int(number) if head == "/dev/fd" and number.isdigit() else None


def check_fuse_fd(fd: int) -> None:
    try:
        st = os.fstat(fd)
    except OSError:
        raise MountError(f"mount point /dev/fd/{fd}: no such open file descriptor") from None
    if not stat.S_ISCHR(st.st_mode) or os.major(st.st_rdev) != 10 or os.minor(st.st_rdev) != 229:
        raise MountError(f"mount point /dev/fd/{fd} is not an open /dev/fuse descriptor")


def check_mountpoint(opts: MountOptions) -> None:
    path = opts.mountpoint
    fd = fuse_fd(path)
    if fd is not None:
        return check_fuse_fd(fd)
    try:
        st = os.stat(path)
        if os.path.ismount(path):
            os.statvfs(path)        # stat alone can answer from cache over a dead FUSE mount
    except FileNotFoundError:
        raise MountError(f"mount point {path} does not exist") from None
    except OSError as exc:
        if exc.errno in (errno.ENOTCONN, errno.ECONNABORTED):   # a FUSE mount whose process died
            raise MountError(f"mount point {path} is a dead FUSE mount; run: fusermount3 -u {path}") from None
        raise MountError(f"mount point {path}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise MountError(f"mount point {path} is not a directory")
    if os.path.ismount(path):
        raise MountError(f"{path} is already a mount point")
    if not opts.nonempty and os.listdir(path):
        raise MountError(f"mount point {path} is not empty (use -o nonempty to mount over it)")


# botocore providers that give a machine's identity (s3fs's iam_role / ecs)
MACHINE_IDENTITY = ("assume-role-with-web-identity", "container-role", "iam-role")


def make_settings(opts: MountOptions) -> ClientSettings:
    keys, providers = None, None
    if opts.iam_role and not opts.public_bucket:
        providers = MACHINE_IDENTITY
    elif not opts.public_bucket:
        keys = resolve_static_keys(opts.passwd_file, opts.profile, opts.bucket, need_token=opts.use_session_token)
    signature = "unsigned" if opts.public_bucket else "s3" if opts.sigv2 else None
    return ClientSettings(
        bucket=opts.bucket, endpoint_url=opts.url or os.environ.get("AWS_ENDPOINT_URL") or None,
        region=opts.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"),
        path_style=opts.path_style, profile=opts.profile if keys is None and providers is None else None,
        static_keys=keys, retries=opts.retries, connect_timeout=opts.connect_timeout,
        read_timeout=opts.readwrite_timeout, request_timeout=opts.request_timeout,
        max_connections=max(32, opts.parallel_count * 4), max_memory=opts.max_memory * 1024 * 1024,
        request_args=request_args(opts), checksum=opts.checksum,
        verify_tls=not opts.no_check_certificate, signature_version=signature, credential_providers=providers)


def make_config(opts: MountOptions, staging_dir: str) -> Config:
    uid = opts.uid if opts.uid is not None else os.getuid()
    gid = opts.gid if opts.gid is not None else os.getgid()
    umask = opts.umask if opts.umask is not None else 0o022
    defaults = Defaults(uid=uid, gid=gid, umask=umask, force_uid=opts.uid, force_gid=opts.gid,
                        force_umask=opts.umask)
    root_mask = opts.mp_umask if opts.mp_umask is not None else umask
    return Config(prefix=opts.prefix, defaults=defaults, read_only=opts.read_only,
                  stat_ttl=opts.stat_cache_expire,
                  negative_ttl=min(opts.negative_cache_expire, opts.stat_cache_expire), cache_entries=opts.max_stat_cache_size,
                  staging_dir=staging_dir, multipart_size=opts.multipart_size * 1024 * 1024,
                  parallel=opts.parallel_count, root_mode=0o777 & ~root_mask, drain_timeout=opts.drain_timeout,
                  name_max=opts.name_max, key_max=opts.key_max)


def fuse_options(opts: MountOptions) -> set[str]:
    chosen = set(pyfuse3.default_options)
    chosen.add(f"fsname={opts.fsname or opts.source}")
    chosen.add("subtype=s3pyfs")
    if opts.allow_other:
        chosen.add("allow_other")
    elif opts.allow_root:
        chosen.add("allow_root")
    if opts.read_only:
        chosen.add("ro")
    if opts.auto_unmount:
        chosen.add("auto_unmount")
    chosen.update(selinux.libfuse_form(item) for item in opts.kernel_options)
    return chosen


def open_disk_cache(opts: MountOptions, base: statedir.Dir) -> DiskCache | None:
    """The disk cache in `base` (use_cache=DIR/s3pyfs-<uid>, checked by statedir)."""
    if not opts.use_cache:
        return None
    mib = 1024 * 1024
    try:
        return DiskCache(base, opts.bucket,
                         max_bytes=opts.cache_size * mib if opts.cache_size else None,
                         min_free=opts.ensure_diskfree * mib if opts.ensure_diskfree is not None else None,
                         hydrate_max=opts.hydrate_max * mib if opts.hydrate_max is not None else None,
                         wipe=opts.del_cache)
    except OSError as exc:
        raise UsageError(f"use_cache directory {opts.use_cache}: {exc.strerror}") from None


# ---------------------------------------------------------------------- logging
def setup_logging(opts: MountOptions, to_stderr: bool) -> None:
    root = logging.getLogger()
    root.handlers.clear()
    if opts.logfile:
        handler: logging.Handler = logging.handlers.WatchedFileHandler(opts.logfile)
    elif to_stderr:
        handler = logging.StreamHandler(sys.stderr)
    elif os.path.exists("/dev/log"):
        handler = logging.handlers.SysLogHandler("/dev/log")
        handler.ident = f"s3pyfs[{os.getpid()}]: "
    else:
        handler = logging.NullHandler()
    name = f"[{opts.instance_name}] " if opts.instance_name else ""
    stamp = "" if opts.no_time_stamp else "%(asctime)s "
    handler.setFormatter(logging.Formatter(f"{stamp}{name}%(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(opts.log_level)
    # request dumps of the libraries below carry signed headers: never below INFO
    for noisy in ("botocore", "aiobotocore", "httpx", "httpcore", "urllib3", "hpack"):
        logging.getLogger(noisy).setLevel(max(logging.INFO, logging.getLevelName(opts.log_level)))


# ---------------------------------------------------------------------- readiness
class Readiness:
    """Tells whoever started us that the mount is live or failed, once."""

    def __init__(self, fd: int | None):
        self.fd = fd

    def _send(self, text: str) -> None:
        if self.fd is not None:
            try:
                os.write(self.fd, text.encode("utf-8", "replace"))
            finally:
                os.close(self.fd)
                self.fd = None

    def ready(self) -> None:
        self._send("0\t")
        notify = os.environ.get("NOTIFY_SOCKET")
        if notify:
            address = "\0" + notify[1:] if notify.startswith("@") else notify
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                try:
                    sock.sendto(b"READY=1", address)
                except OSError as exc:
                    log.warning("could not notify systemd: %s", exc)

    def failed(self, code: int, message: str) -> None:
        if self.fd is None:
            print(f"s3pyfs: {message}", file=sys.stderr)
        self._send(f"{code}\t{message}")


def wait_for_child(fd: int, pid: int) -> int:
    chunks = []
    while True:
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(fd)
    text = b"".join(chunks).decode("utf-8", "replace")
    if not text:
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        print(f"s3pyfs: the mount process ended before the mount was ready (exit {code})", file=sys.stderr)
        return code if code > 0 else EXIT_FAILURE
    code_text, _, message = text.partition("\t")
    code = int(code_text) if code_text.isdigit() else EXIT_FAILURE
    if code != EXIT_OK:
        os.waitpid(pid, 0)
        print(f"s3pyfs: {message}", file=sys.stderr)
    return code


def detach_stdio() -> None:
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)


# ---------------------------------------------------------------------- serving
async def _watch_signals(fs: Filesystem, stopping: list[bool]) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            if signum == signal.SIGHUP:
                setup_logging_reopen()
                continue
            log.info("signal %d: uploading dirty data, then unmounting", signum)
            stopping.append(True)
            await fs.drain()
            pyfuse3.terminate()
            return


def _read_ahead_setter(mountpoint: str, kib: int):
    """A function setting the mount's read-ahead.  It must run after the kernel has applied
    FUSE's INIT reply (which lowers it to what the kernel offered, 128 KiB) and before the
    first open: a file keeps the read-ahead its open found (Operations.before_first_request)."""
    # never stat the mount point itself: resolve only its parent
    parent, name = os.path.split(mountpoint.rstrip("/"))
    path = os.path.join(os.path.realpath(parent), name)
    return lambda: kernel.set_read_ahead(path, kib)


async def _raise_read_ahead_later(setter) -> None:
    """The same again shortly after the start, for a mount that gets no request at first."""
    for delay in (0.5, 2.0):
        await trio.sleep(delay)
        setter()


def setup_logging_reopen() -> None:
    """SIGHUP: reopen logfile= (after logrotate moved or removed it)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.handlers.WatchedFileHandler):
            handler.acquire()
            try:
                if handler.stream:
                    handler.stream.close()
                handler.stream = handler._open()
                handler._statstream()
            finally:
                handler.release()
            log.info("SIGHUP: reopened log file %s", handler.baseFilename)


async def serve(opts: MountOptions, settings: ClientSettings, readiness: Readiness, state: State,
                jrnl: journal.Journal) -> int:
    async with open_client(settings) as client:
        try:
            await client.check_bucket()
        except NoSuchBucket:
            raise UnreachableError(f"bucket {opts.bucket} does not exist at {settings.endpoint_url or 'AWS'}") from None
        except CredentialsError:
            raise
        except FSError as exc:
            raise UnreachableError(f"cannot reach bucket {opts.bucket} at {settings.endpoint_url or 'AWS'}: {exc}") from None
        await probe_conditional_writes(client, opts)
        await dirrename.recover(state.store, client, opts.prefix, opts.drain_timeout)
        await recovery.recover(state.store, client, opts.multipart_size * 1024 * 1024, opts.parallel_count,
                               opts.drain_timeout, prefix=opts.prefix)
        fs = Filesystem(client, make_config(opts, jrnl.directory), disk_cache=open_disk_cache(opts, state.base),
                        journal=jrnl)
        ops = Operations(fs, xattrs=opts.use_xattr)
        read_ahead = opts.read_ahead_kb and fuse_fd(opts.mountpoint) is None     # /dev/fd/N: no path to tune
        if read_ahead:
            ops.before_first_request = _read_ahead_setter(opts.mountpoint, opts.read_ahead_kb)
        monitor = metrics.Monitor(fs, stats_info(opts, settings), stats_group=opts.stats_group)
        if opts.metrics:
            try:
                monitor.start_endpoint(*opts.metrics)
            except OSError as exc:
                raise UsageError(f"metrics={opts.metrics[0]}:{opts.metrics[1]}: cannot listen there "
                                 f"({exc.strerror})") from None
        try:
            pyfuse3.init(ops, opts.mountpoint, fuse_options(opts))
        except RuntimeError as exc:
            monitor.close()
            raise MountError(f"mounting on {opts.mountpoint} failed ({exc}); libfuse printed the reason above") from None
        log.info("mounted %s on %s", opts.source, opts.mountpoint)
        monitor.write_stats()
        readiness.ready()
        if opts.foreground:
            print(f"s3pyfs: mounted {opts.source} at {opts.mountpoint}", file=sys.stderr, flush=True)
        else:
            detach_stdio()
        stopping: list[bool] = []
        try:
            async with trio.open_nursery() as nursery:
                fs.spawn = background_spawner(nursery)
                nursery.start_soon(_watch_signals, fs, stopping)
                nursery.start_soon(monitor.publish)
                nursery.start_soon(fs.retry_failed_uploads)
                if read_ahead:
                    nursery.start_soon(_raise_read_ahead_later,
                                       _read_ahead_setter(opts.mountpoint, opts.read_ahead_kb))
                await pyfuse3.main(min_tasks=4, max_tasks=64)
                nursery.cancel_scope.cancel()
        finally:
            fs.spawn = None                    # the background nursery is gone: work runs inline
            failed = ["(the drain itself failed; see the log)"]
            try:
                with trio.CancelScope(shield=True):
                    failed = await fs.drain()
            finally:                           # whatever the drain did, the FUSE session ends
                pyfuse3.close(unmount=True)
                if opts.del_cache and fs.disk_cache is not None:
                    fs.disk_cache.clear()
                monitor.close()
        if failed:
            log.error("unmounted with %d file(s) not uploaded: %s; the data of those not kept in lost+found is in "
                      "%s and uploaded by the next mount of this bucket by the same user with the same %s",
                      len(failed), ", ".join(failed[:20]), jrnl.directory, "use_cache=" if opts.use_cache else "tmpdir=")
            return EXIT_DIRTY
        log.info("unmounted %s cleanly", opts.mountpoint)
        return EXIT_OK


async def probe_conditional_writes(client, opts: MountOptions) -> None:
    """Learn whether the store enforces conditional writes (s3client's probe key, removed
    at once; never a user object) and say so in one INFO line.  Read-only: unknown."""
    if opts.read_only:
        answer = None
    else:
        answer = await client.probe_conditional_writes(opts.prefix)
    log.info("conditional writes: %s", {
        True: "enforced by the store (uploads carry If-Match / If-None-Match)",
        False: "not enforced by the store; the version is checked by a HEAD right before each upload's commit",
        None: "unknown (read-only mount or probe refused); uploads carry the headers and are checked by a HEAD"}[answer])


def stats_info(opts: MountOptions, settings: ClientSettings) -> dict:
    """What the statistics file and the metrics say about this mount (no secrets)."""
    host = opts.metrics and (f"[{opts.metrics[0]}]" if ":" in opts.metrics[0] else opts.metrics[0])
    return {"version": __version__, "mountpoint": opts.mountpoint, "bucket": opts.bucket, "prefix": opts.prefix,
            "endpoint": metrics.public_url(settings.endpoint_url), "region": settings.region or "us-east-1",
            "read_only": opts.read_only, "pid": os.getpid(),
            "metrics_url": f"http://{host}:{opts.metrics[1]}/metrics" if opts.metrics else None}


def _serve_and_report(opts: MountOptions, settings: ClientSettings, readiness: Readiness, state: State) -> int:
    try:
        jrnl = journal.Journal.create(state.store)
    except (OSError, StateDirError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else str(exc)
        readiness.failed(StateDirError.exit_code, f"cannot create the staging directory under {state.store.path}: "
                                                  f"{reason}")
        return StateDirError.exit_code
    try:
        return trio.run(serve, opts, settings, readiness, state, jrnl)
    except StartupError as exc:
        readiness.failed(exc.exit_code, str(exc))
        return exc.exit_code
    except Exception as exc:  # a bug: keep the traceback in the log, one line for the caller
        log.exception("s3pyfs stopped by an unexpected error")
        readiness.failed(EXIT_FAILURE, f"unexpected error: {type(exc).__name__}: {exc}")
        return EXIT_FAILURE
    finally:
        jrnl.close()


def check_local_dirs(opts: MountOptions) -> None:
    if opts.tmpdir and (not os.path.isdir(opts.tmpdir) or not os.access(opts.tmpdir, os.W_OK)):
        raise UsageError(f"tmpdir {opts.tmpdir} is not a writable directory")
    if opts.check_cache_dir_exist and opts.use_cache and not os.path.isdir(opts.use_cache):
        raise UsageError(f"use_cache directory {opts.use_cache} does not exist (check_cache_dir_exist is set)")
    if opts.logfile:
        try:       # a new log file is private: failing keys are named in it
            os.close(os.open(opts.logfile, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600))
        except OSError as exc:
            raise UsageError(f"cannot write logfile {opts.logfile}: {exc.strerror}") from None


class State:
    """The checked local state directories of this mount (statedir.py): the private base
    (disk cache under it) and the journal store of this endpoint + bucket + prefix."""

    def __init__(self, base: statedir.Dir, store: statedir.Dir):
        self.base, self.store = base, store


def open_state(opts: MountOptions, settings: ClientSettings) -> State:
    """Create and check where this mount keeps dirty data and cache: the user's state
    directory, or use_cache=DIR/s3pyfs-<uid>, or tmpdir=DIR/s3pyfs-<uid>.  Raises
    StateDirError (exit 5) when a level is not safely ours."""
    base = statedir.open_base(statedir.base_for(opts.use_cache, opts.tmpdir))
    return State(base, journal.open_store(base, settings.endpoint_url, opts.bucket, opts.prefix))


def run(opts: MountOptions) -> int:
    check_mountpoint(opts)
    check_local_dirs(opts)
    warning = selinux.settle(opts)
    if warning:
        print(f"s3pyfs: warning: {warning}", file=sys.stderr)
    settings = make_settings(opts)
    state = open_state(opts, settings)
    if opts.foreground:
        setup_logging(opts, to_stderr=True)
        if warning and opts.logfile:
            log.warning("%s", warning)
        return _serve_and_report(opts, settings, Readiness(None), state)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid > 0:
        os.close(write_fd)
        return wait_for_child(read_fd, pid)
    os.close(read_fd)
    try:
        os.setsid()
        os.chdir("/")
        setup_logging(opts, to_stderr=False)
        if warning:
            log.warning("%s", warning)
        code = _serve_and_report(opts, settings, Readiness(write_fd), state)
    except BaseException:
        code = EXIT_FAILURE
    os._exit(code)
