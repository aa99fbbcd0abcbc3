"""The code checks CI runs: ruff (lint) over the project's Python, mypy (types) over the
package, strict on the modules that hold the data-safety invariants.

The configuration is in pyproject.toml; the list of strict modules is here so that adding
one is a reviewed change.  Both tools are pinned in constraints.txt, so a new release cannot
turn CI red on its own.
"""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# modules whose every function is annotated and checked with --strict
STRICT = [
    "s3pyfs/errors.py",
    "s3pyfs/ownership.py",
    "s3pyfs/budget.py",
    "s3pyfs/inodes.py",
    "s3pyfs/stat_cache.py",
]


def _run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, capture_output=True, text=True)


def test_ruff_finds_nothing():
    result = _run("ruff", "check", "--no-cache", "s3pyfs", "tests", "benchmarks", "scripts")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_package():
    result = _run("mypy", "--no-incremental", "s3pyfs")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_core_modules():
    result = _run("mypy", "--no-incremental", "--strict", "--follow-imports=silent", *STRICT)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("tool", ["ruff", "mypy"])
def test_checkers_fail_on_a_planted_mistake(tool, tmp_path):
    """The checks are not vacuous: each rejects a file with a mistake of its kind."""
    bad = tmp_path / "bad.py"
    bad.write_text("import os\n\n\ndef f(x: int) -> str:\n    return x\n")
    argv = ["ruff", "check", "--no-cache", "--isolated", str(bad)] if tool == "ruff" else \
        ["mypy", "--no-incremental", str(bad)]
    assert _run(*argv).returncode != 0


def test_constraints_file_is_current():
    """constraints.txt pins every package pyproject.toml's dependencies and extras pull in, at
    the versions installed here (a dependency added without `make lock` fails here)."""
    result = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "lock.py"), "--check"],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
