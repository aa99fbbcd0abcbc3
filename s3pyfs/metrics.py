"""What a running mount does and holds: counters, latency histograms, state gauges.

Responsibility: count FUSE operations (`operations._guard`) and S3 requests
(`S3Client._do`) cheaply, describe the filesystem's state when asked
(`Monitor.snapshot`), and publish both: a JSON statistics file rewritten every
few seconds (read by `s3pyfs status`) and, with `-o metrics=HOST:PORT`, a
Prometheus endpoint (prometheus_client's HTTP server, in its own thread).
Invariants:
  * Writers: only the trio thread.  Counters are plain ints in dicts, bumped
    without locks or awaits; nothing on the data path allocates beyond the
    first time a label is seen.
  * State gauges (dirty files and bytes, uploads in flight, oldest dirty age,
    handles, inodes, cache hits) are computed from the Filesystem when read,
    never maintained on the data path.
  * Readers: `snapshot()` runs in the trio thread.  The Prometheus thread
    never touches the tables or counters itself: it asks the trio thread for a
    snapshot (`trio.from_thread.run_sync`) and formats the plain dict it gets
    back; after trio has ended it formats the last snapshot taken.  The
    statistics file is serialised from a snapshot on the trio thread and
    written in a disk thread (diskio.py): a stalled disk never holds up FUSE
    requests.
  * The statistics file holds no secret (no keys; the endpoint's user:password
    part, if any, is removed) and is replaced atomically.  It names failing
    keys, so it is mode 0600 (0640 with `stats_group=`) and is only written
    into a directory that is no symlink, belongs to root or the mounting uid
    and that no other user can write to (unless sticky and then ours).
"""

from __future__ import annotations

import bisect
import errno as _errno
import json
import logging
import os
import stat
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:                   # trio and prometheus_client load lazily
    from wsgiref.simple_server import WSGIServer

    from trio.lowlevel import TrioToken

log = logging.getLogger(__name__)

FORMAT = 1                     # version of the statistics file layout
STATS_INTERVAL = 2.0           # seconds between rewrites of the statistics file
LATENCY_BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0)

# S3 outcomes that say nothing about the endpoint's health (absent names, refused keys)
# (a failed condition is another client's write winning, counted in `conflicts`, not the endpoint failing)
BENIGN_OUTCOMES = frozenset({"ok", "cancelled", "NoSuchKey", "404", "NotFound", "AccessDenied", "403",
                             "Forbidden", "KeyTooLongError", "NoSuchUpload", "PreconditionFailed", "412",
                             "ConditionalRequestConflict", "409"})


class Histogram:
    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BOUNDS) + 1)     # last: above every bound (+Inf)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(LATENCY_BOUNDS, seconds)] += 1
        self.total += seconds

    def export(self) -> dict:
        cumulative, running = [], 0
        for count in self.counts:
            running += count
            cumulative.append(running)
        return {"count": running, "sum": round(self.total, 6), "cumulative": cumulative}


class Counters:
    """Monotonic counters of one process (one mount)."""

    def __init__(self) -> None:
        self.fuse_ops: dict[str, int] = {}
        self.fuse_errors: dict[tuple[str, str], int] = {}      # (operation, errno name)
        self.fuse_latency: dict[str, Histogram] = {}
        self.fuse_read_bytes = 0
        self.fuse_written_bytes = 0
        self.s3_requests: dict[tuple[str, str], int] = {}      # (operation, outcome)
        self.s3_latency: dict[str, Histogram] = {}
        self.s3_retries: dict[str, int] = {}
        self.s3_received_bytes = 0
        self.s3_sent_bytes = 0
        self.last_s3_error: dict | None = None    # the last failure that concerns the endpoint
        self.last_s3_ok = 0.0
        self.conflicts = 0              # uploads refused because S3 held another version (files.py)
        self.checksum_fallbacks = 0     # the store refused a CRC checksum header: MD5 since (s3client.py)

    # ---- FUSE (operations._guard)
    def fuse_done(self, op: str, started: float, error: int = 0) -> None:
        elapsed = time.perf_counter() - started
        ops = self.fuse_ops
        ops[op] = ops.get(op, 0) + 1
        hist = self.fuse_latency.get(op)
        if hist is None:
            hist = self.fuse_latency[op] = Histogram()
        hist.observe(elapsed)
        if error:
            key = (op, _errno.errorcode.get(error, str(error)))
            self.fuse_errors[key] = self.fuse_errors.get(key, 0) + 1

    # ---- S3 (S3Client._do)
    def s3_done(self, what: str, outcome: str, started: float, sent: int = 0, retries: int = 0,
                message: str | None = None) -> None:
        elapsed = time.perf_counter() - started
        op = what.partition(" ")[0]
        key = (op, outcome)
        self.s3_requests[key] = self.s3_requests.get(key, 0) + 1
        hist = self.s3_latency.get(op)
        if hist is None:
            hist = self.s3_latency[op] = Histogram()
        hist.observe(elapsed)
        if sent:
            self.s3_sent_bytes += sent
        if retries:
            self.s3_retries[op] = self.s3_retries.get(op, 0) + retries
        if outcome == "ok":
            self.last_s3_ok = time.time()
        elif outcome not in BENIGN_OUTCOMES:
            self.last_s3_error = {"time": time.time(), "operation": op, "outcome": outcome,
                                  "message": message or what}

    def s3_received(self, size: int) -> None:
        self.s3_received_bytes += size


# The process's counters; a process serves one mount.
counters = Counters()


def resident_bytes() -> int:
    """VmRSS of this process, 0 where /proc is missing."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def public_url(url: str | None) -> str:
    """The endpoint URL without a user:password part; AWS when none is set."""
    if not url:
        return "https://s3.amazonaws.com"
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port:
        netloc += f":{parts.port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def _count_by(pairs: dict[tuple[str, str], int]) -> dict[str, dict[str, int]]:
    nested: dict[str, dict[str, int]] = {}
    for (first, second), value in sorted(pairs.items()):
        nested.setdefault(first, {})[second] = value
    return nested


def _disk_cache(cache) -> dict | None:
    if cache is None:
        return None
    return {"bytes": cache.bytes, "limit_bytes": cache.max_bytes, "blocks": len(cache._lru), "hits": cache.hits,
            "misses": cache.misses, "evictions": cache.evictions}


class Monitor:
    """The view of one mount: `snapshot()` (trio thread) and the ways it is published."""

    def __init__(self, fs, info: dict[str, Any], counts: Counters | None = None,
                 clock: Callable[[], float] = time.time, stats_group: int | None = None):
        self.fs = fs
        self.stats_group = stats_group
        self.info = dict(info)            # endpoint, bucket, prefix, mountpoint, ...
        self.counts = counts or counters
        self.clock = clock
        self.started = clock()
        self.info.setdefault("pid", os.getpid())
        self._dirty_since: dict[int, tuple[int, float]] = {}   # id(staging) -> (clean generation, first seen)
        self._peak_dirty = 0
        self.last: dict | None = None
        self.path: str | None = None
        self._httpd: WSGIServer | None = None
        self._token: TrioToken | None = None

    # ---------------------------------------------------------------- state
    def _dirty(self, now: float) -> dict[str, Any]:
        files = size = in_flight = 0
        oldest = now
        seen: dict[int, tuple[int, float]] = {}
        for node in self.fs.dirty_nodes():
            staging = node.staging
            files += 1
            size += staging.size
            if staging.upload_lock.locked():
                in_flight += 1
            # age since this mount first saw the file dirty after its last upload
            previous = self._dirty_since.get(id(staging))
            since = previous[1] if previous is not None and previous[0] == staging.clean_generation else now
            seen[id(staging)] = (staging.clean_generation, since)
            oldest = min(oldest, since)
        self._dirty_since = seen
        self._peak_dirty = max(self._peak_dirty, size) if size else 0
        return {"files": files, "bytes": size, "uploads_in_flight": in_flight,
                "oldest_seconds": round(now - oldest, 3), "peak_bytes": self._peak_dirty}

    def snapshot(self) -> dict[str, Any]:
        """Everything `status` and Prometheus show, as plain JSON-able data.  Trio thread only."""
        c = self.counts
        now = self.clock()
        fs = self.fs
        snap: dict[str, Any] = {
            "format": FORMAT,
            **self.info,
            "started": round(self.started, 3),
            "updated": round(now, 3),
            "uptime_seconds": round(now - self.started, 3),
            "interval_seconds": STATS_INTERVAL,
            "rss_bytes": resident_bytes(),
            "dirty": self._dirty(now),
            "open_handles": len(fs.handles),
            "inodes": len(fs.inodes.nodes),
            "stat_cache": {"hits": fs.cache.hits, "misses": fs.cache.misses},
            "disk_cache": _disk_cache(getattr(fs, "disk_cache", None)),
            "fuse": {
                "operations": dict(sorted(c.fuse_ops.items())),
                "errors": _count_by(c.fuse_errors),
                "read_bytes": c.fuse_read_bytes,
                "written_bytes": c.fuse_written_bytes,
                "latency_seconds": {op: h.export() for op, h in sorted(c.fuse_latency.items())},
            },
            "s3": {
                "requests": _count_by(c.s3_requests),
                "errors": sum(v for (_, outcome), v in c.s3_requests.items() if outcome not in BENIGN_OUTCOMES),
                "retries": dict(sorted(c.s3_retries.items())),
                "received_bytes": c.s3_received_bytes,
                "sent_bytes": c.s3_sent_bytes,
                "last_ok": round(c.last_s3_ok, 3) or None,
                "last_error": dict(c.last_s3_error) if c.last_s3_error else None,
                "latency_seconds": {op: h.export() for op, h in sorted(c.s3_latency.items())},
            },
            "conflicts": c.conflicts,
            "checksum": getattr(getattr(fs, "client", None), "checksum", None),
            "checksum_fallbacks": c.checksum_fallbacks,
            "conditional_writes": getattr(getattr(fs, "client", None), "conditional_writes", None),
            "latency_bounds": list(LATENCY_BOUNDS),
        }
        self.last = snap
        return snap

    # ---------------------------------------------------------------- statistics file
    def write_stats(self) -> None:
        """Snapshot and write the statistics file on this thread (start of the mount)."""
        self._write_text(json.dumps(self.snapshot(), indent=1) + "\n")

    def _write_text(self, text: str) -> None:
        """Write a serialised snapshot (any thread; the path is only set here)."""
        if self.path is None:
            self.path = stats_path_for_writing(self.info["mountpoint"])
            if self.path is None:
                return
        try:
            write_atomically(self.path, text, self.stats_group)
        except OSError as exc:
            log.warning("cannot write statistics file %s: %s", self.path, exc.strerror)
            self.path = None

    async def publish(self, interval: float = STATS_INTERVAL) -> None:
        """Rewrite the statistics file every `interval` seconds (a task in the mount's nursery).
        The snapshot is taken on the trio thread; the file is written in a disk thread."""
        import trio

        from . import diskio
        self._token = trio.lowlevel.current_trio_token()
        while True:
            text = json.dumps(self.snapshot(), indent=1) + "\n"
            await diskio.run(self._write_text, text)
            await trio.sleep(interval)

    def remove_stats(self) -> None:
        if self.path is not None:
            try:
                os.unlink(self.path)
            except OSError:
                pass

    # ---------------------------------------------------------------- Prometheus
    def _snapshot_from_any_thread(self) -> dict:
        import trio
        if self._token is not None:
            try:
                return trio.from_thread.run_sync(self.snapshot, trio_token=self._token)
            except trio.RunFinishedError:
                pass
            except RuntimeError:         # called from the trio thread itself (tests)
                return self.snapshot()
        return self.last if self.last is not None else self.snapshot()

    def start_endpoint(self, host: str, port: int) -> None:
        """Serve /metrics on host:port in a thread.  Call from the trio thread (it
        records the trio token).  Raises OSError when the address cannot be bound."""
        import trio
        from prometheus_client import CollectorRegistry
        from prometheus_client.exposition import start_http_server
        self._token = trio.lowlevel.current_trio_token()
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Collector(self._snapshot_from_any_thread))
        self._httpd, _thread = start_http_server(port, addr=host, registry=registry)

    def close(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        self.remove_stats()


class _Collector:
    def __init__(self, get: Callable[[], dict]):
        self._get = get

    def describe(self) -> list:
        return []            # registered without names: collect() runs only when scraped

    def collect(self):
        return families(self._get())


def families(snap: dict) -> Iterable:
    """prometheus_client metric families of a snapshot (standard names and units)."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

    def counter(name, doc, value=None, labels=(), rows=()):
        fam = CounterMetricFamily(f"s3pyfs_{name}", doc, labels=list(labels))
        if value is not None:
            fam.add_metric([], value)
        for label_values, v in rows:
            fam.add_metric(list(label_values), v)
        return fam

    def gauge(name, doc, value=None, labels=(), rows=()):
        fam = GaugeMetricFamily(f"s3pyfs_{name}", doc, labels=list(labels))
        if value is not None:
            fam.add_metric([], value)
        for label_values, v in rows:
            fam.add_metric(list(label_values), v)
        return fam

    def histogram(name, doc, per_op: dict):
        fam = HistogramMetricFamily(f"s3pyfs_{name}", doc, labels=["operation"])
        bounds = [repr(float(b)) for b in snap["latency_bounds"]] + ["+Inf"]
        for op, h in per_op.items():
            fam.add_metric([op], list(zip(bounds, h["cumulative"], strict=True)), h["sum"])
        return fam

    fuse, s3, dirty = snap["fuse"], snap["s3"], snap["dirty"]
    yield gauge("info", "The mount this process serves (value 1)",
                labels=("bucket", "prefix", "endpoint", "mountpoint", "version"),
                rows=[((snap.get("bucket", ""), snap.get("prefix", ""), snap.get("endpoint", ""),
                        snap.get("mountpoint", ""), snap.get("version", "")), 1)])
    yield gauge("start_time_seconds", "Unix time the mount started", snap["started"])
    yield gauge("uptime_seconds", "Seconds since the mount started", snap["uptime_seconds"])
    yield gauge("resident_memory_bytes", "Resident set size of the s3pyfs process", snap["rss_bytes"])
    yield counter("fuse_operations", "FUSE requests answered, by operation",
                  labels=("operation",), rows=[((op,), v) for op, v in fuse["operations"].items()])
    yield counter("fuse_errors", "FUSE requests answered with an error, by operation and errno",
                  labels=("operation", "errno"),
                  rows=[((op, name), v) for op, by in fuse["errors"].items() for name, v in by.items()])
    yield histogram("fuse_operation_seconds", "Time to answer a FUSE request", fuse["latency_seconds"])
    yield counter("fuse_read_bytes", "Bytes returned to read requests", fuse["read_bytes"])
    yield counter("fuse_written_bytes", "Bytes accepted from write requests", fuse["written_bytes"])
    yield counter("s3_requests", "S3 requests by operation and outcome (ok, an S3 error code, timeout, "
                  "connection, cancelled)", labels=("operation", "outcome"),
                  rows=[((op, outcome), v) for op, by in s3["requests"].items() for outcome, v in by.items()])
    yield counter("s3_retries", "Attempts botocore repeated, by operation", labels=("operation",),
                  rows=[((op,), v) for op, v in s3["retries"].items()])
    yield histogram("s3_request_seconds", "Time of one S3 call, retries included", s3["latency_seconds"])
    yield counter("s3_received_bytes", "Object bytes read from S3 (GET bodies)", s3["received_bytes"])
    yield counter("s3_sent_bytes", "Object bytes sent to S3 (PUT and UploadPart bodies)", s3["sent_bytes"])
    last_error = s3["last_error"]
    yield gauge("s3_last_error_time_seconds", "Unix time of the last S3 failure concerning the endpoint "
                "(0: none)", last_error["time"] if last_error else 0)
    yield counter("conflicts", "Uploads refused because S3 held another version than the one the data was "
                  "based on (data kept in lost+found)", snap.get("conflicts", 0))
    yield counter("checksum_fallbacks", "Times the store refused the CRC checksum header of an upload "
                  "(uploads send Content-MD5 from then on)", snap.get("checksum_fallbacks", 0))
    enforced = snap.get("conditional_writes")
    yield gauge("conditional_writes", "Does the store enforce conditional writes (1 yes, 0 no: checked by a HEAD "
                "before each commit, -1 unknown)", -1 if enforced is None else int(enforced))
    yield gauge("dirty_files", "Files with data not yet uploaded", dirty["files"])
    yield gauge("dirty_bytes", "Size of the files with data not yet uploaded", dirty["bytes"])
    yield gauge("dirty_oldest_seconds", "Age of the oldest change not yet uploaded", dirty["oldest_seconds"])
    yield gauge("uploads_in_flight", "Files being uploaded now", dirty["uploads_in_flight"])
    yield gauge("open_handles", "Open file and directory handles", snap["open_handles"])
    yield gauge("inodes", "Inodes the kernel or an open handle holds", snap["inodes"])
    yield counter("stat_cache_hits", "Lookups answered by the negative or listing cache", snap["stat_cache"]["hits"])
    yield counter("stat_cache_misses", "Listing cache misses", snap["stat_cache"]["misses"])
    disk = snap.get("disk_cache")
    if disk:
        yield gauge("disk_cache_bytes", "Bytes of object data in the use_cache= directory", disk["bytes"])
        yield counter("disk_cache_hits", "Blocks read from the disk cache", disk["hits"])
        yield counter("disk_cache_misses", "Blocks the disk cache did not have", disk["misses"])
        yield counter("disk_cache_evictions", "Blocks removed to respect cache_size= or ensure_diskfree=",
                      disk["evictions"])


def exposition(snap: dict) -> str:
    """The Prometheus text format of a snapshot (what /metrics serves)."""
    from prometheus_client import CollectorRegistry, generate_latest
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(lambda: snap))
    return generate_latest(registry).decode()


# ---------------------------------------------------------------------- where the statistics file lives
def escape_mountpoint(mountpoint: str) -> str:
    """A file name for a mount point: '/' -> '-', '-' and '%' and other odd characters %-escaped."""
    path = os.path.normpath(mountpoint).strip("/")
    if not path:
        return "-"
    quoted = urllib.parse.quote(path, safe="/").replace("-", "%2D")
    if quoted.startswith("."):
        quoted = "%2E" + quoted[1:]
    return quoted.replace("/", "-")


def stats_dirs() -> list[str]:
    """Directories tried for statistics files, in order."""
    dirs = []
    if os.environ.get("S3PYFS_RUN_DIR"):
        dirs.append(os.environ["S3PYFS_RUN_DIR"])
    dirs.append("/run/s3pyfs")
    if os.environ.get("XDG_RUNTIME_DIR"):
        dirs.append(os.path.join(os.environ["XDG_RUNTIME_DIR"], "s3pyfs"))
    dirs.append(os.path.join(tempfile.gettempdir(), f"s3pyfs-{os.getuid()}"))
    return dirs


def _usable_dir(path: str) -> bool:
    """Create `path` when missing; usable when it is a real directory owned by root or us
    that no one else can write to (a shared sticky one, like /tmp itself, must be ours)."""
    private = path.startswith(tempfile.gettempdir() + os.sep)
    try:
        os.makedirs(path, mode=0o700 if private else 0o755, exist_ok=True)
        st = os.lstat(path)
    except OSError:
        return False
    uid = os.getuid()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid not in (0, uid):
        return False          # a symlink, or someone else's directory
    if private and st.st_uid != uid:
        return False          # someone else's directory in a shared /tmp
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return False          # others could replace the file or plant a symlink
    return os.access(path, os.W_OK | os.X_OK)


def stats_path_for_writing(mountpoint: str) -> str | None:
    name = escape_mountpoint(mountpoint) + ".json"
    for directory in stats_dirs():
        if _usable_dir(directory):
            return os.path.join(directory, name)
    log.warning("no writable directory for the statistics file (tried %s)", ", ".join(stats_dirs()))
    return None


def stats_paths(mountpoint: str) -> list[str]:
    """Existing statistics files for `mountpoint`, newest first."""
    name = escape_mountpoint(mountpoint) + ".json"
    found = []
    for directory in stats_dirs():
        path = os.path.join(directory, name)
        try:
            found.append((os.stat(path).st_mtime, path))
        except OSError:
            continue
    return [path for _, path in sorted(found, reverse=True)]


def write_atomically(path: str, text: str, group: int | None = None) -> None:
    """Replace `path` by a new file holding `text`: mode 0600, or 0640 owned by `group`."""
    directory, name = os.path.split(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=directory)      # O_EXCL, 0600
    try:
        with os.fdopen(fd, "w") as f:
            if group is not None:
                os.fchown(f.fileno(), -1, group)
                os.fchmod(f.fileno(), 0o640)
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
