#!/usr/bin/env bash
# Undo `make demo`: unmount .demo/mnt (waiting for s3pyfs to finish) and stop
# the demo SeaweedFS server.  Data in .demo/ is kept for the next `make demo`.
set -euo pipefail

. "$(dirname "${BASH_SOURCE[0]}")/demo-common.sh"

unmount_demo
stop_weed
info "stopped (data kept in .demo/; remove it with: rm -rf .demo)"
