#!/bin/sh
# Install the s3pyfs FlexVolume driver on a Kubernetes node (run as root on the node, or from
# a privileged DaemonSet with the plugin directory mounted):
#     deploy/flexvolume/install.sh [PLUGIN_DIR]
# PLUGIN_DIR defaults to $FLEXVOLUME_DIR, else kubelet's default
# /usr/libexec/kubernetes/kubelet-plugins/volume/exec (kubelet --volume-plugin-dir; on some
# distributions /var/lib/kubelet/volumeplugins or /etc/kubernetes/kubelet-plugins/volume/exec).
# The driver needs python3 >= 3.9, fuse3 (fusermount3) and s3pyfs on the node: s3pyfs on PATH
# or at /opt/s3pyfs/bin/s3pyfs, e.g.
#     apt-get install -y python3-venv fuse3 libfuse3-dev pkg-config gcc python3-dev
#     python3 -m venv /opt/s3pyfs && /opt/s3pyfs/bin/pip install /path/to/s3pyfs
# kubelet watches the directory and runs `init` on the new driver; no restart is needed.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
plugin_dir=${1:-${FLEXVOLUME_DIR:-/usr/libexec/kubernetes/kubelet-plugins/volume/exec}}
dest="$plugin_dir/vendor~s3pyfs"
mkdir -p "$dest"
# Copy then rename: kubelet must never see (and run) a half-written driver.
cp "$here/vendor~s3pyfs/s3pyfs" "$dest/.s3pyfs.new"
chmod 0755 "$dest/.s3pyfs.new"
mv -f "$dest/.s3pyfs.new" "$dest/s3pyfs"
echo "installed $dest/s3pyfs"
