"""A tar of a real source tree from this machine, chosen deterministically.

Files come from the system's Python and Perl library trees, walked in sorted
order (no __pycache__, no symlinks, nothing over 1 MiB), until ``count``
regular files are in.  The archive holds their directories too, so tar
creates them with their modes like with any source tarball.
"""

from __future__ import annotations

import glob
import os
import stat
import tarfile
from pathlib import Path

ROOTS = ["/usr/lib/python3", *sorted(glob.glob("/usr/lib/python3.[0-9]*")),
         "/usr/share/perl", "/usr/share/perl5"]
MAX_FILE = 1 << 20


def select_files(count: int, roots=ROOTS) -> list[tuple[str, str]]:
    """[(absolute path, path in the archive)] of up to ``count`` files."""
    picked: list[tuple[str, str]] = []
    for root in roots:
        if not os.path.isdir(root) or os.path.islink(root):
            continue
        top = root.strip("/").replace("/", "_")
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames
                                 if d != "__pycache__" and not os.path.islink(os.path.join(dirpath, d)))
            for name in sorted(filenames):
                full = os.path.join(dirpath, name)
                try:
                    st = os.lstat(full)
                except OSError:
                    continue
                if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_FILE:
                    continue
                if not os.access(full, os.R_OK):
                    continue
                picked.append((full, f"{top}/{os.path.relpath(full, root)}"))
                if len(picked) == count:
                    return picked
    return picked


def build_tar(tar_path: Path, count: int) -> dict:
    """Write the archive; return facts about it (files, dirs, bytes)."""
    files = select_files(count)
    dirs = sorted({str(Path(arc).parent) for _, arc in files} - {"."})
    all_dirs = set()
    for d in dirs:
        parts = Path(d).parts
        for i in range(1, len(parts) + 1):
            all_dirs.add("/".join(parts[:i]))
    total = 0
    with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tar:
        for d in sorted(all_dirs):
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            info.mtime = 1_700_000_000
            tar.addfile(info)
        for full, arc in files:
            info = tar.gettarinfo(full, arcname=arc)
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            with open(full, "rb") as f:
                tar.addfile(info, f)
            total += info.size
    return {"files": len(files), "dirs": len(all_dirs), "bytes": total}
