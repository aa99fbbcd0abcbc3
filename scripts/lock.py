#!/usr/bin/env python3
"""Write constraints.txt: the exact versions, in this virtualenv, of everything s3pyfs needs.

Run by `make lock` after a deliberate change (a new dependency in pyproject.toml, or
`.venv/bin/pip install -U NAME` to take a newer version), then run `make test` and commit
constraints.txt with the change.  scripts/bootstrap.sh installs with `pip install -c
constraints.txt`, so a fresh machine (and CI) gets the versions the tests last passed with.

The list is the dependency closure of pyproject.toml's `dependencies` and of every extra
(markers evaluated for this interpreter), as installed in the running environment; names given
as arguments are added as roots too (for tools not declared in pyproject.toml yet).
Usage: .venv/bin/python scripts/lock.py [--check] [EXTRA_ROOT...]
"""

from __future__ import annotations

import importlib.metadata as md
import re
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "constraints.txt"
HEADER = ("# Versions the test suite last passed with; written by `make lock` (scripts/lock.py).\n"
          "# scripts/bootstrap.sh installs with `pip install -c constraints.txt`.  Do not edit by hand.\n")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(roots: list[tuple[Requirement, frozenset[str]]]) -> dict[str, str]:
    """canonical name -> installed version, for the roots and everything they require."""
    pins: dict[str, str] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = list(roots)
    while todo:
        req, active = todo.pop()
        if req.marker and not any(req.marker.evaluate({"extra": e}) for e in (active or {""})):
            continue
        key = (canonical(req.name), frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = md.distribution(req.name)
        except md.PackageNotFoundError:
            sys.exit(f"lock: {req.name} is required but not installed in {sys.prefix} "
                     "(run scripts/bootstrap.sh first)")
        pins[canonical(req.name)] = dist.version
        todo += [(Requirement(r), frozenset(req.extras)) for r in dist.requires or ()]
    return pins


def main(argv: list[str]) -> int:
    check = "--check" in argv
    extra_roots = [a for a in argv if a != "--check"]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = list(project.get("dependencies", []))
    for extra in project.get("optional-dependencies", {}).values():
        wanted += extra
    wanted += extra_roots
    pins = closure([(Requirement(r), frozenset()) for r in wanted])
    text = HEADER + "".join(f"{name}=={version}\n" for name, version in sorted(pins.items()))
    if check:
        if not OUT.exists() or OUT.read_text() != text:
            print("lock: constraints.txt differs from this environment; run `make lock`", file=sys.stderr)
            return 1
        return 0
    if not OUT.exists() or OUT.read_text() != text:
        OUT.write_text(text)
        print(f"lock: wrote {OUT.name} ({len(pins)} packages)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
