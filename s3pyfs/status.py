"""`s3pyfs status MOUNTPOINT [--json]`: health of a running mount, from its statistics file.

Responsibility: find the statistics file the mount's process rewrites every
few seconds (metrics.py), judge health and print a summary or the JSON.
Exit status (a Kubernetes exec probe passes on 0 only):
  0  healthy
  1  degraded: S3 failures (errors, timeouts, connection failures) in the last
     --window seconds, dirty data waiting longer than --max-dirty-age seconds,
     or the statistics not rewritten for a while (the process is stuck)
  2  not mounted: no statistics file, the process is gone, or the mount point
     is not an s3pyfs mount; also a bad command line
Invariant: never touches the mount point itself (a hung mount must not hang
the probe): the mount table is read from /proc/self/mountinfo.
"""

from __future__ import annotations

import json
import os
import sys
import time

from . import kernel
from .metrics import stats_paths

HEALTHY, DEGRADED, NOT_MOUNTED = 0, 1, 2
WINDOW = 60.0            # seconds an S3 failure keeps the mount degraded
MAX_DIRTY_AGE = 300.0    # seconds dirty data may wait for its upload
STALE_AFTER = 30.0       # seconds without a rewrite of the statistics file

USAGE = ("usage: s3pyfs status MOUNTPOINT [--json] [--window SECONDS] [--max-dirty-age SECONDS] "
         "[--degraded-ok]")


def mounted_fstype(mountpoint: str, mountinfo: str = kernel.MOUNTINFO) -> str | None:
    """The filesystem type mounted at `mountpoint` (the last mount there), or None."""
    entry = kernel.mount_entry(mountpoint, mountinfo)
    return entry[1] if entry else None


def alive(pid: int) -> bool:
    """A process with this pid exists (ours to signal or not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def load(mountpoint: str) -> dict | None:
    """The newest readable statistics file of `mountpoint` whose process is alive
    (or, when none is, the newest one)."""
    newest = None
    for path in stats_paths(mountpoint):
        try:
            with open(path) as f:
                stats = json.load(f)
        except (OSError, ValueError):
            continue
        stats["stats_file"] = path
        if isinstance(stats.get("pid"), int) and alive(stats["pid"]):
            return stats
        newest = newest or stats
    return newest


def evaluate(stats: dict | None, fstype: str | None, now: float, window: float = WINDOW,
             max_dirty_age: float = MAX_DIRTY_AGE) -> tuple[int, list[str]]:
    """(exit code, reasons) for a statistics file and what is mounted at its mount point."""
    if stats is None:
        return NOT_MOUNTED, ["no statistics file: not mounted by s3pyfs (or by an s3pyfs without status)"]
    pid = stats.get("pid")
    if not isinstance(pid, int) or not alive(pid):
        return NOT_MOUNTED, [f"the s3pyfs process {pid} is gone (stale statistics; a dead mount needs "
                             f"fusermount3 -u {stats.get('mountpoint', '')})"]
    if fstype != "fuse.s3pyfs":
        return NOT_MOUNTED, [f"{stats.get('mountpoint')} is not mounted" + (f" (type {fstype})" if fstype else "")]
    reasons = []
    age = now - float(stats.get("updated", 0))
    if age > max(STALE_AFTER, 5 * float(stats.get("interval_seconds", 2))):
        reasons.append(f"statistics not updated for {age:.0f} s (the filesystem loop is stuck or very busy)")
    last = (stats.get("s3") or {}).get("last_error")
    if last and now - float(last.get("time", 0)) <= window:
        reasons.append(f"S3 {last.get('outcome')} {now - float(last['time']):.0f} s ago: {last.get('message')}")
    dirty = stats.get("dirty") or {}
    if dirty.get("files") and float(dirty.get("oldest_seconds", 0)) > max_dirty_age:
        reasons.append(f"dirty data waiting {dirty['oldest_seconds']:.0f} s for upload "
                       f"(more than {max_dirty_age:g} s)")
    return (DEGRADED if reasons else HEALTHY), reasons


# ---------------------------------------------------------------------- human output
def size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def duration(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"


def bar(fraction: float, width: int = 24) -> str:
    fraction = min(1.0, max(0.0, fraction))
    done = int(round(fraction * width))
    return "[" + "#" * done + "-" * (width - done) + f"] {fraction * 100:3.0f}%"


def _breakdown(counts: dict[str, int], limit: int = 5) -> str:
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    text = ", ".join(f"{k} {v:,}" for k, v in top[:limit])
    return text + (", ..." if len(top) > limit else "")


STATE_WORDS = {HEALTHY: "healthy", DEGRADED: "DEGRADED", NOT_MOUNTED: "NOT MOUNTED"}


def render(stats: dict | None, code: int, reasons: list[str], mountpoint: str, now: float) -> str:
    lines = [f"s3pyfs on {mountpoint}: {STATE_WORDS[code]}"]
    lines += [f"  ! {reason}" for reason in reasons]
    if stats is None or code == NOT_MOUNTED:
        return "\n".join(lines)
    prefix = f" (prefix /{stats['prefix'].rstrip('/')})" if stats.get("prefix") else ""
    lines.append(f"  bucket      {stats.get('bucket')}{prefix} at {stats.get('endpoint')}"
                 f"{' (read-only)' if stats.get('read_only') else ''}")
    lines.append(f"  process     pid {stats.get('pid')}, up {duration(stats.get('uptime_seconds', 0))}, "
                 f"memory {size(stats.get('rss_bytes', 0))}")
    if stats.get("metrics_url"):
        lines.append(f"  metrics     {stats['metrics_url']}")
    dirty = stats.get("dirty") or {}
    if dirty.get("files"):
        flight = dirty.get("uploads_in_flight", 0)
        lines.append(f"  dirty       {size(dirty['bytes'])} in {dirty['files']} file(s) waiting for upload, "
                     f"oldest {duration(dirty.get('oldest_seconds', 0))}, {flight} upload(s) in progress")
        peak = max(dirty.get("peak_bytes", 0), dirty["bytes"])
        if peak:
            lines.append(f"              {bar((peak - dirty['bytes']) / peak)} of {size(peak)} uploaded")
    else:
        lines.append("  dirty       none: everything written is in S3")
    if "conditional_writes" in stats:
        enforced = stats["conditional_writes"]
        text = {True: "conditional (the store enforces If-Match / If-None-Match)",
                False: "checked by a HEAD before each commit (the store does not enforce conditional writes)",
                None: "conditional writes unknown (read-only, or the probe was refused)"}[enforced]
        conflicts = stats.get("conflicts", 0)
        lines.append(f"  writes      {text}" + (f", {conflicts} conflict(s) kept in lost+found" if conflicts else ""))
    if stats.get("checksum"):
        fell_back = " (the store refused CRC headers: fell back)" if stats.get("checksum_fallbacks") else ""
        lines.append(f"  checksums   uploads carry {stats['checksum']}{fell_back}")
    cache = stats.get("stat_cache") or {}
    lookups = cache.get("hits", 0) + cache.get("misses", 0)
    ratio = f", {100 * cache.get('hits', 0) / lookups:.0f}% hits" if lookups else ""
    lines.append(f"  cache       {stats.get('inodes', 0):,} inodes, {stats.get('open_handles', 0):,} open handles, "
                 f"stat cache {cache.get('hits', 0):,} hits / {cache.get('misses', 0):,} misses{ratio}")
    disk = stats.get("disk_cache")
    if disk:
        limit = f" of {size(disk['limit_bytes'])}" if disk.get("limit_bytes") else ""
        lines.append(f"  disk cache  {size(disk['bytes'])}{limit} in {disk['blocks']:,} blocks, {disk['hits']:,} hits / "
                     f"{disk['misses']:,} misses, {disk['evictions']:,} evictions")
    fuse = stats.get("fuse") or {}
    fuse_ops = sum((fuse.get("operations") or {}).values())
    by_errno: dict[str, int] = {}
    for per_op in (fuse.get("errors") or {}).values():
        for name, n in per_op.items():
            by_errno[name] = by_errno.get(name, 0) + n
    errors = sum(by_errno.values())
    lines.append(f"  FUSE        {fuse_ops:,} requests, {size(fuse.get('read_bytes', 0))} read, "
                 f"{size(fuse.get('written_bytes', 0))} written, {errors:,} errors"
                 + (f" ({_breakdown(by_errno)})" if errors else ""))
    s3 = stats.get("s3") or {}
    per_op = {op: sum(by.values()) for op, by in (s3.get("requests") or {}).items()}
    retries = sum((s3.get("retries") or {}).values())
    lines.append(f"  S3          {sum(per_op.values()):,} requests" + (f" ({_breakdown(per_op)})" if per_op else "")
                 + f", {s3.get('errors', 0):,} errors, {retries:,} retries")
    lines.append(f"              {size(s3.get('received_bytes', 0))} received, {size(s3.get('sent_bytes', 0))} sent")
    last = s3.get("last_error")
    if last:
        lines.append(f"  last error  {duration(now - last['time'])} ago, {last.get('outcome')}: {last.get('message')}")
    return "\n".join(lines)


# ---------------------------------------------------------------------- command
def main(argv: list[str]) -> int:
    as_json = degraded_ok = False
    window, max_dirty_age = WINDOW, MAX_DIRTY_AGE
    positional = []
    args = list(argv)
    try:
        while args:
            arg = args.pop(0)
            if arg in ("-h", "--help"):
                print(f"{USAGE}\n\nExit status: 0 healthy, 1 degraded (S3 failures in the last --window seconds "
                      f"(default {WINDOW:g}), dirty data older than --max-dirty-age seconds (default "
                      f"{MAX_DIRTY_AGE:g}), process stuck), 2 not mounted or no statistics.\n"
                      f"--degraded-ok exits 0 when degraded (liveness probes).")
                return 0
            if arg == "--json":
                as_json = True
            elif arg == "--degraded-ok":
                degraded_ok = True
            elif arg in ("--window", "--max-dirty-age"):
                value = float(args.pop(0))
                if value < 0:
                    raise ValueError(arg)
                if arg == "--window":
                    window = value
                else:
                    max_dirty_age = value
            elif arg.startswith("-") and arg != "-":
                raise ValueError(arg)
            else:
                positional.append(arg)
        if len(positional) != 1:
            raise ValueError("MOUNTPOINT")
    except (ValueError, IndexError):
        print(f"s3pyfs: {USAGE}", file=sys.stderr)
        return NOT_MOUNTED
    mountpoint = os.path.abspath(positional[0])
    stats = load(mountpoint)
    now = time.time()
    code, reasons = evaluate(stats, mounted_fstype(mountpoint), now, window, max_dirty_age)
    if as_json:
        out = dict(stats or {"mountpoint": mountpoint})
        out["health"] = {"status": ["healthy", "degraded", "not_mounted"][code], "exit_code": code,
                         "reasons": reasons, "checked": round(now, 3)}
        print(json.dumps(out, indent=1))
    else:
        print(render(stats, code, reasons, mountpoint, now))
    return HEALTHY if code == DEGRADED and degraded_ok else code
