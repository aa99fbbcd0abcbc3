#!/usr/bin/env python3
"""Rewrite the OPTIONS rows of man/s3pyfs.1 from the option table (s3pyfs/options.py).

Run after changing the table: .venv/bin/python scripts/update-man-options.py
tests/test_options.py fails while the page and the table differ.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from s3pyfs.options import MAN_BEGIN, MAN_END, man_rows  # noqa: E402

page_path = ROOT / "man" / "s3pyfs.1"
page = page_path.read_text()
head, found, rest = page.partition(MAN_BEGIN + "\n")
if not found:
    sys.exit(f"{page_path}: marker line not found: {MAN_BEGIN}")
_, found, tail = rest.partition(MAN_END + "\n")
if not found:
    sys.exit(f"{page_path}: marker line not found: {MAN_END}")
new = head + man_rows() + tail
if new != page:
    page_path.write_text(new)
    print(f"updated {page_path}")
