#!/bin/sh
# Regenerates s3pyfs/csi/csi_pb2.py and csi_pb2_grpc.py from the CSI specification's csi.proto.
# usage: scripts/gen-csi-stubs.sh [PATH/TO/csi.proto]
# Default input: s3pyfs/csi/csi.proto (kept in the repository, spec v1.12.0, Apache-2.0).
# Needs grpcio-tools (pip install grpcio-tools); the stubs it writes need protobuf >= the
# version grpcio-tools bundles (pyproject.toml's dependency list says which).
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
proto=${1:-$here/s3pyfs/csi/csi.proto}
python=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp "$proto" "$work/csi.proto"
"$python" -m grpc_tools.protoc -I "$work" --python_out="$work" --grpc_python_out="$work" "$work/csi.proto"
# the generated service module imports `csi_pb2` as a top-level module: make it package-relative
sed -i 's/^import csi_pb2 as csi__pb2$/from . import csi_pb2 as csi__pb2/' "$work/csi_pb2_grpc.py"
cp "$work/csi_pb2.py" "$work/csi_pb2_grpc.py" "$here/s3pyfs/csi/"
echo "generated with grpcio-tools $("$python" -c 'import importlib.metadata as m; print(m.version("grpcio-tools"))')"
