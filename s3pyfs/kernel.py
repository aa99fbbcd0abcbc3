"""The kernel's view of a mount: the mount table and the FUSE connection's knobs.

Responsibility: read /proc/self/mountinfo without touching the mount point
(a stat there could hang on a dead mount, or deadlock the daemon before it
serves), and set the read-ahead of the mount's backing device info (bdi).
Invariant: nothing here raises for a missing or unreadable file; callers get
None/False and decide.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

MOUNTINFO = "/proc/self/mountinfo"


def _unescape(field: str) -> str:
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def mount_entry(mountpoint: str, mountinfo: str = MOUNTINFO) -> tuple[str, str] | None:
    """(device "major:minor", filesystem type) of the last mount at `mountpoint`, or None."""
    found = None
    try:
        with open(mountinfo) as f:
            for line in f:
                fields = line.split()
                if len(fields) < 5 or _unescape(fields[4]) != mountpoint:
                    continue
                try:
                    found = (fields[2], fields[fields.index("-", 6) + 1])
                except (ValueError, IndexError):
                    continue
    except OSError:
        return None
    return found


def set_read_ahead(mountpoint: str, kib: int) -> bool:
    """Let the kernel read ahead `kib` KiB on this mount (its default for FUSE is 128 KiB,
    which splits sequential reads into 128 KiB requests).  Needs root; False if not done."""
    entry = mount_entry(mountpoint)
    if entry is None:
        return False
    path = f"/sys/class/bdi/{entry[0]}/read_ahead_kb"
    try:
        with open(path, "w") as f:
            f.write(str(kib))
    except OSError as exc:
        log.info("read-ahead of %s left at the kernel default (%s: %s)", mountpoint, path, exc.strerror)
        return False
    return True
