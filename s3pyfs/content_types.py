"""The Content-Type of a new file, from its name, as s3fs-fuse chooses it.

Responsibility: `content_type_for(name)`.  The table is Python's built-in one
extended by `/etc/mime.types` where that file exists (read once, at the first
call; it is a small local file), so what a name maps to follows the host's
mime.types as it does for s3fs.
Invariants:
  * The last extension decides; when it is unknown, the one before it is tried
    (s3fs's order: `page.html.orig` is text/html, `x.tar.gz` takes the type of
    `.gz`).  Extensions compare case-insensitively.
  * Anything unknown, and a name without extension, is `application/octet-stream`.
  * Only new regular files are named this way: directory markers are
    `application/x-directory`, symlinks and special files keep what they had,
    and an existing object keeps its Content-Type (also across a rename).
"""

from __future__ import annotations

import functools
import mimetypes
import os

MIME_TYPES_FILE = "/etc/mime.types"
DEFAULT = "application/octet-stream"


@functools.lru_cache(maxsize=1)
def _table() -> dict[str, str]:
    """Extension (".html") -> type: the built-in table with the host's mime.types on top."""
    db = mimetypes.MimeTypes()
    if os.path.isfile(MIME_TYPES_FILE):
        try:
            db.read(MIME_TYPES_FILE)
        except (OSError, UnicodeDecodeError):
            pass                      # unreadable: the built-in table alone
    table = dict(db.types_map[False])         # non-strict first, strict entries win
    table.update(db.types_map[True])
    return {ext.lower(): kind for ext, kind in table.items()}


def content_type_for(name: str) -> str:
    """Content-Type for a new file called `name` (a path component)."""
    table = _table()
    for ext in reversed(name.lower().split(".")[1:][-2:]):
        kind = table.get("." + ext) if ext else None
        if kind:
            return kind
    return DEFAULT
