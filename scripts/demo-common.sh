# Settings and helpers shared by scripts/demo.sh and scripts/demo-stop.sh.
# Sourced, not executed.  All demo state lives in .demo/ (git-ignored).

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$ROOT/.venv"
DEMO_DIR="$ROOT/.demo"
MNT="$DEMO_DIR/mnt"
DATA_DIR="$DEMO_DIR/seaweed"        # SeaweedFS volumes and filer metadata
CONF_DIR="$DEMO_DIR/config"         # s3.json (identities), master.toml
WEED_LOG="$DEMO_DIR/weed.log"
S3PYFS_LOG="$DEMO_DIR/s3pyfs.log"
PASSWD_FILE="$DEMO_DIR/passwd-s3pyfs"

BUCKET=demo-bucket
ACCESS_KEY=s3pyfs-demo
SECRET_KEY=s3pyfs-demo-secret-7d3f9a   # local demo server on 127.0.0.1 only

# S3 on the usual SeaweedFS port; the other services on a block of their own,
# away from weed's defaults (9333, 8080, 8888 and their +10000 gRPC ports)
# and below the kernel's ephemeral port range.
S3_PORT=${S3PYFS_DEMO_S3_PORT:-8333}
S3_GRPC_PORT=${S3PYFS_DEMO_S3_GRPC_PORT:-8334}
MASTER_PORT=${S3PYFS_DEMO_MASTER_PORT:-8340}
MASTER_GRPC_PORT=$((MASTER_PORT + 1))
VOLUME_PORT=$((MASTER_PORT + 2))
VOLUME_GRPC_PORT=$((MASTER_PORT + 3))
FILER_PORT=$((MASTER_PORT + 4))
FILER_GRPC_PORT=$((MASTER_PORT + 5))
ENDPOINT="http://127.0.0.1:$S3_PORT"

if [ -t 1 ]; then
    say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
else
    say() { printf '\n== %s\n' "$*"; }
fi
info() { printf 'demo: %s\n' "$*" >&2; }
die()  { printf 'demo: error: %s\n' "$*" >&2; exit 1; }

# Mount points in /proc/self/mountinfo are octal-escaped (space -> \040).
mountinfo_path() { printf '%s' "$1" | sed -e 's/\\/\\134/g' -e 's/ /\\040/g' -e 's/\t/\\011/g'; }

# Prints "fstype" of the mount at $1, or nothing if $1 is not a mount point.
mount_fstype() {
    local want
    want=$(mountinfo_path "$1")
    awk -v p="$want" '{ if ($5 == p) { for (i = 6; i <= NF; i++) if ($i == "-") { t = $(i + 1); break } } }
                      END { if (t != "") print t }' /proc/self/mountinfo
}
is_mounted() { [ -n "$(mount_fstype "$1")" ]; }

# Prints the command line of process $1 (arguments joined by spaces); fails
# silently when the process is gone.  stderr is redirected before the file is
# opened: a process that exits between the /proc listing and the read must not
# print "No such file or directory".
proc_cmdline() {
    tr '\0' ' ' 2>/dev/null <"/proc/$1/cmdline"
}

# PIDs whose command line contains every argument (as a fixed string).
pids_matching() {
    local pid cmd arg ok
    for pid in /proc/[0-9]*; do
        pid=${pid#/proc/}
        [ "$pid" = "$$" ] && continue
        cmd=$(proc_cmdline "$pid") || continue
        [ -n "$cmd" ] || continue
        ok=1
        for arg in "$@"; do
            case $cmd in *"$arg"*) ;; *) ok=0; break ;; esac
        done
        [ $ok = 1 ] && echo "$pid"
    done
    return 0
}

weed_pids()   { pids_matching " server " "-dir=$DATA_DIR "; }
s3pyfs_pids() { pids_matching "bin/s3pyfs $BUCKET $MNT "; }

# Waits up to $2 seconds for all of the PIDs in $1 to exit; 0 if they did.
wait_pids_gone() {
    local pids=$1 deadline=$((SECONDS + $2)) p alive
    while :; do
        alive=
        for p in $pids; do [ -d "/proc/$p" ] && alive="$alive $p"; done
        [ -z "$alive" ] && return 0
        [ $SECONDS -ge $deadline ] && return 1
        sleep 0.2
    done
}

# Unmounts the demo mount (if mounted) and waits for s3pyfs to exit.
unmount_demo() {
    local pids
    pids=$(s3pyfs_pids)
    if is_mounted "$MNT"; then
        info "unmounting $MNT"
        local i
        for i in 1 2 3 4 5; do
            fusermount3 -u "$MNT" 2>/dev/null && break
            is_mounted "$MNT" || break
            sleep 1
        done
        if is_mounted "$MNT"; then
            info "mount is busy; detaching it lazily"
            fusermount3 -u -z "$MNT" 2>/dev/null || umount -l "$MNT" 2>/dev/null || true
        fi
        is_mounted "$MNT" && die "could not unmount $MNT"
    fi
    [ -n "$pids" ] && info "waiting for s3pyfs (pid $(echo $pids)) to upload pending data and exit"
    if [ -n "$pids" ] && ! wait_pids_gone "$pids" 30; then
        info "s3pyfs still running 30 s after the unmount; stopping it"
        kill $pids 2>/dev/null || true
        wait_pids_gone "$pids" 10 || kill -9 $pids 2>/dev/null || true
    fi
}

# Stops the demo SeaweedFS server.  After SIGTERM its master and volume server
# stop at once (volume data is then on disk), but the filer's graceful gRPC
# stop waits about 15 s for the metadata stream of the S3 gateway in the same
# process.  The filer store (LevelDB) keeps a log that a killed process loses
# nothing from, so after WEED_STOP_GRACE seconds the server gets SIGKILL.
WEED_STOP_GRACE=${S3PYFS_DEMO_WEED_STOP_GRACE:-5}
stop_weed() {
    local pids
    pids=$(weed_pids)
    [ -n "$pids" ] || return 0
    info "stopping SeaweedFS (pid $(echo $pids)): up to $WEED_STOP_GRACE s for a clean exit, then SIGKILL"
    kill $pids 2>/dev/null || true
    if ! wait_pids_gone "$pids" "$WEED_STOP_GRACE"; then
        info "SeaweedFS is still draining its filer's gRPC streams; killing it (its data is on disk)"
        kill -9 $pids 2>/dev/null || true
        wait_pids_gone "$pids" 10 || true
    fi
}
