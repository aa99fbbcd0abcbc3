"""What `pip install` puts on a machine besides the package: the man page (so `man s3pyfs` and
the units' `Documentation=man:s3pyfs(1)` work) and the systemd units; and the constraints file
that pins what the tests ran with."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNITS = ("s3pyfs@.service", "mnt-photos.mount", "fstab.example", "s3pyfs.env.example")


def run(*argv, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL, **kw)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built offline from a copy of this checkout (the build leaves build/ and
    *.egg-info behind, which must not land in the working tree)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "setup.cfg", "MANIFEST.in", "README.md", "ARCHITECTURE.md"):
        if (ROOT / name).exists():
            shutil.copy(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for tree in ("s3pyfs", "man", "deploy/systemd"):
        shutil.copytree(ROOT / tree, src / tree, ignore=ignore)
    out = tmp_path_factory.mktemp("wheel")
    built = run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                "-w", str(out), str(src))
    assert built.returncode == 0, built.stderr
    [whl] = out.glob("s3pyfs-*.whl")
    return whl


def test_wheel_ships_the_man_page_and_the_units(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    data = sorted(n.split(".data/data/", 1)[1] for n in names if ".data/data/" in n)
    assert data == sorted(["share/man/man1/s3pyfs.1", *(f"share/s3pyfs/systemd/{u}" for u in UNITS)])
    with zipfile.ZipFile(wheel) as zf:
        [page] = [n for n in names if n.endswith("man1/s3pyfs.1")]
        assert zf.read(page) == (ROOT / "man" / "s3pyfs.1").read_bytes()


def test_installed_man_page_is_found_and_units_verify(wheel, tmp_path):
    prefix = tmp_path / "prefix"
    # --ignore-installed: without it pip "upgrades" the venv's own (editable) s3pyfs by
    # uninstalling it, even though the new copy goes under --prefix
    installed = run(sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                    "--ignore-installed", "--prefix", str(prefix), str(wheel))
    assert installed.returncode == 0, installed.stderr
    manpath = prefix / "share" / "man"
    assert shutil.which("man"), "man is needed (apt-get install man-db)"
    found = run("man", "-w", "s3pyfs", env={**os.environ, "MANPATH": str(manpath)})
    assert found.stdout.strip() == str(manpath / "man1" / "s3pyfs.1"), found.stderr

    assert shutil.which("systemd-analyze"), "systemd-analyze missing (apt-get install systemd)"
    shipped = prefix / "share" / "s3pyfs" / "systemd"
    units = tmp_path / "units"
    units.mkdir()
    # the README's install step, with the executable where this prefix has it
    service = (shipped / "s3pyfs@.service").read_text()
    assert "ExecStart=/usr/local/bin/s3pyfs " in service
    (units / "s3pyfs@.service").write_text(service.replace("/usr/local/bin/s3pyfs", str(prefix / "bin" / "s3pyfs")))
    shutil.copy(shipped / "mnt-photos.mount", units)
    argv = ["systemd-analyze", "verify", "--man=yes", str(units / "s3pyfs@mnt-photos.service"),
            str(units / "mnt-photos.mount")]
    env = {**os.environ, "SYSTEMD_LOG_LEVEL": "notice", "MANPATH": str(manpath)}
    verified = run(*argv, env=env)
    assert verified.returncode == 0 and not (verified.stdout + verified.stderr).strip(), \
        verified.stdout + verified.stderr


# ---------------------------------------------------------------- constraints (lock) file
def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep and version, f"{path.name}: {line!r} is not NAME==VERSION"
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


def test_constraints_pin_every_dependency_and_bootstrap_uses_them():
    pins = _pins(ROOT / "constraints.txt")
    import tomllib
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + project["optional-dependencies"]["test"]
    for requirement in wanted:
        name = re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0]
        assert re.sub(r"[-_.]+", "-", name).lower() in pins, f"{name} is not pinned in constraints.txt"
    bootstrap = (ROOT / "scripts" / "bootstrap.sh").read_text()
    assert re.search(r"pip install[^\n]*-c [^\n]*constraints\.txt", bootstrap), \
        "scripts/bootstrap.sh does not install with -c constraints.txt"
    assert re.search(r"^lock:", (ROOT / "Makefile").read_text(), re.M), "no `make lock` target"
