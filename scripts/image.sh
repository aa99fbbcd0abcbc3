#!/usr/bin/env bash
# Build the s3pyfs container image (deploy/docker/Dockerfile) with podman on this machine, then
# prove it works: mount a bucket of a local SeaweedFS from the image and start the CSI driver
# from the same image.  `make image` runs this; see deploy/docker/README.md.
#
# Steps (each is timed; the figures are printed at the end):
#   packages  podman, runc and mmdebstrap from Debian (apt), when missing
#   base      debian:bookworm-slim made locally with mmdebstrap from this machine's apt sources
#             and `podman import`ed under the name the Dockerfile's FROM uses (skipped when
#             that image exists; no container registry is needed)
#   build     podman build --pull=never; pip inside the build gets this machine's pip
#             configuration as a build secret, and the local paths it names, read-only
#   check     scripts/image_check.py: SeaweedFS on 127.0.0.1, the image's entrypoint mounts a
#             bucket, a file written through the mount is read back from S3, SIGTERM unmounts;
#             then the CSI driver from the same image, and its --mounter systemd-run path under
#             systemd as a container's PID 1 (scripts/image_check_systemd.py)
#
# Environment: S3PYFS_IMAGE (tag, default localhost/s3pyfs:<version>), S3PYFS_IMAGE_STEPS
# (default "packages base build check"), S3PYFS_REBUILD_BASE=1 (make the base again),
# S3PYFS_IMAGE_NOFILE / S3PYFS_IMAGE_NPROC (ulimits for the build and the containers).
# podman runs with --runtime runc: crun refuses hybrid cgroup hosts such as this one.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

DOCKERFILE=deploy/docker/Dockerfile
VERSION=$(sed -n 's/^__version__ = "\(.*\)"/\1/p' s3pyfs/__init__.py)
IMAGE=${S3PYFS_IMAGE:-localhost/s3pyfs:$VERSION}
STEPS=${S3PYFS_IMAGE_STEPS:-packages base build check}
# Explicit ulimits: without them runc fails here to set podman's defaults for root ("error
# setting rlimits ... operation not permitted").  Files: the hard limit of this shell (at most 65536); processes:
# at most 32768 (runc was refused 65536 here although the hard limit was higher).
cap() { local v=$1 max=$2; if [ "$v" = unlimited ] || [ "$v" -gt "$max" ]; then echo "$max"; else echo "$v"; fi; }
NOFILE=${S3PYFS_IMAGE_NOFILE:-$(cap "$(ulimit -Hn)" 65536)}
NPROC=${S3PYFS_IMAGE_NPROC:-$(cap "$(ulimit -Hu)" 32768)}
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python3

log() { printf 'image: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
[ "$(id -u)" -eq 0 ] || die "run as root (podman import/build/run with /dev/fuse)"

# The base image name comes from the Dockerfile: FROM debian:${DEBIAN_RELEASE}-slim.
RELEASE=$(sed -n 's/^ARG DEBIAN_RELEASE=//p' "$DOCKERFILE" | head -n1)
[ -n "$RELEASE" ] || die "no ARG DEBIAN_RELEASE= in $DOCKERFILE"
BASE_SHORT=debian:$RELEASE-slim
BASE=docker.io/library/$BASE_SHORT     # what podman's short-name lookup finds for FROM debian:...

PODMAN=(podman --runtime runc)
ULIMITS=(--ulimit "nofile=$NOFILE:$NOFILE" --ulimit "nproc=$NPROC:$NPROC")

TIMES=()
step() {    # step NAME FUNCTION: run it and record its wall time
    local name=$1 started ended
    shift
    started=$EPOCHREALTIME
    log "== $name"
    "$@"
    ended=$EPOCHREALTIME
    TIMES+=("$(awk -v n="$name" -v a="$started" -v b="$ended" 'BEGIN { printf "%-9s %7.1f s", n, b - a }')")
}
wants() { [[ " $STEPS " == *" $1 "* ]]; }

# ------------------------------------------------------------------------------ packages
do_packages() {
    local missing=() pkg status
    for pkg in podman runc mmdebstrap; do
        status=$(dpkg-query -W -f='${db:Status-Abbrev}' "$pkg" 2>/dev/null || true)
        [[ $status == ii* ]] || missing+=("$pkg")
    done
    if ((${#missing[@]} == 0)); then
        log "podman, runc, mmdebstrap installed"
        return
    fi
    log "apt-get install ${missing[*]}"
    local apt=(env DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout=600)
    "${apt[@]}" install -y --no-install-recommends "${missing[@]}" >/dev/null \
        || { "${apt[@]}" update >/dev/null && "${apt[@]}" install -y --no-install-recommends "${missing[@]}" >/dev/null; }
}

# ------------------------------------------------------------------------------ base
# This machine's apt sources, as mmdebstrap MIRROR arguments (existing files are pasted into
# the new root's sources.list; deb822 .sources files included).
apt_sources() {
    local f
    [ -s /etc/apt/sources.list ] && grep -q '^[[:space:]]*deb' /etc/apt/sources.list && echo /etc/apt/sources.list
    for f in /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] && grep -q "$RELEASE" "$f" && echo "$f"
    done
    return 0
}

do_base() {
    if "${PODMAN[@]}" image exists "$BASE" && [ "${S3PYFS_REBUILD_BASE:-0}" != 1 ]; then
        log "$BASE exists (S3PYFS_REBUILD_BASE=1 makes it again)"
        return
    fi
    local sources=() tarball
    mapfile -t sources < <(apt_sources)
    ((${#sources[@]})) || die "no apt sources for $RELEASE in /etc/apt/sources.list*"
    log "mmdebstrap $RELEASE (minbase) from ${sources[*]}"
    tarball=$(mktemp /tmp/s3pyfs-base.XXXXXX.tar)
    aptconf=$(mktemp /tmp/s3pyfs-base-apt.XXXXXX)
    # What keeps a -slim image slim when later layers run apt-get: no package caches or
    # downloaded .debs left behind, no translations, compressed indexes.
    cat >"$aptconf" <<'APT'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
Acquire::Languages "none";
Acquire::GzipIndexes "true";
Acquire::CompressionTypes::Order:: "gz";
APT
    # minbase: essential packages + apt, as Debian's images; /usr merged by mmdebstrap's hook
    # (not by the usrmerge package, which would pull in perl).  The dpkg excludes are the ones
    # the -slim images carry (no man pages, docs or translations; copyrights kept) and stay in
    # the image for the packages the Dockerfile adds.
    mmdebstrap --variant=minbase --mode=root --format=tar --quiet \
        --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
        --customize-hook="upload $aptconf /etc/apt/apt.conf.d/90s3pyfs-slim" \
        --customize-hook='rm -rf "$1"/var/cache/apt/*.bin "$1"/var/lib/apt/lists/*' \
        --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        --dpkgopt='path-exclude=/usr/share/locale/*' \
        --dpkgopt='path-exclude=/usr/share/info/*' \
        --dpkgopt='path-exclude=/usr/share/lintian/*' \
        --aptopt='APT::Install-Recommends "false"' \
        "$RELEASE" "$tarball" "${sources[@]}"
    "${PODMAN[@]}" import --change 'CMD ["bash"]' --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        "$tarball" "$BASE" >/dev/null
    rm -f "$tarball" "$aptconf"
    log "imported $BASE ($("${PODMAN[@]}" image inspect --format '{{.Size}}' "$BASE") bytes)"
}

# ------------------------------------------------------------------------------ build
# pip's configuration as `pip config list` shows it (files and PIP_* variables merged), turned
# into one pip.conf that goes in as a build secret (it may hold an index token: it must not end
# up in an image layer or in the build's history).  Local paths it names (find-links, file://
# indexes, cert, constraint files) are bind-mounted read-only in the build.
pip_config() {
    local out=$1
    "$PYTHON" - "$out" <<'EOF'
import os, re, subprocess, sys
lines = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True,
                       text=True, check=False).stdout.splitlines()
settings = {}
for line in lines:
    m = re.match(r"^(?:global|install|download|wheel|:env:)\.([\w-]+)='(.*)'$", line)
    if m:
        settings[m.group(1)] = m.group(2)       # later sections (env) override earlier ones
# Local directories (find-links, file:// indexes) are mounted at the same path, since an
# index's pages link to files by absolute path (a .../simple index: its parent directory is
# mounted).  Local files (cert, constraints) are seen under /run/host-pip/PATH instead: a host
# file such as the CA bundle must not shadow the image's own.
mounts = {}
def rewrite(token):
    scheme = "file://" if token.startswith("file://") else ""
    path = token[len(scheme):]
    if not (path.startswith("/") and os.path.exists(path)):
        return token
    real = os.path.realpath(path)
    if os.path.isdir(real):
        top = os.path.dirname(real) if os.path.basename(real) == "simple" else real
        mounts[top] = top
        return token
    mounts[real] = "/run/host-pip" + real
    return scheme + "/run/host-pip" + real
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
with os.fdopen(fd, "w") as fh:
    fh.write("[global]\n")
    for key, value in sorted(settings.items()):
        fh.write(f"{key} = {' '.join(rewrite(t) for t in value.split())}\n")
for source, inside in sorted(mounts.items()):
    print(f"{source}:{inside}")
EOF
}

do_build() {
    local conf volumes=() path
    conf=$(mktemp /tmp/s3pyfs-image-pip.XXXXXX)
    while read -r path; do
        volumes+=(--volume "$path:ro")
    done < <(pip_config "$conf")
    log "pip configuration: $(grep -c = "$conf") settings, $((${#volumes[@]} / 2)) local path(s) mounted"
    # --format docker: the OCI format has no HEALTHCHECK, and the Dockerfile has one.
    "${PODMAN[@]}" build --pull=never --layers --format docker \
        --secret "id=pipconf,src=$conf" "${volumes[@]}" "${ULIMITS[@]}" \
        -f "$DOCKERFILE" -t "$IMAGE" . || { rm -f "$conf"; return 1; }
    rm -f "$conf"
    log "built $IMAGE: $("${PODMAN[@]}" image inspect --format '{{.Size}}' "$IMAGE") bytes"
}

# ------------------------------------------------------------------------------ check
do_check() {
    "$PYTHON" scripts/image_check.py --image "$IMAGE" --runtime runc \
        --nofile "$NOFILE" --nproc "$NPROC"
}

wants packages && step packages do_packages
command -v podman >/dev/null || die "podman is not installed (step 'packages')"
wants base && step base do_base
wants build && step build do_build
wants check && step check do_check

log "image $IMAGE"
for line in "${TIMES[@]}"; do log "time $line"; done
