"""Kubernetes CSI driver for s3pyfs (`s3pyfs csi --endpoint unix:///PATH --node-id NODE`).

A layer on top of the filesystem, beside cli.py: it never runs inside a mount process.
Modules, imports pointing down:
  server.py      argv, logging, the grpcio server on the unix socket, Identity service
  controller.py  Controller service: CreateVolume / DeleteVolume / ValidateVolumeCapabilities
  node.py        Node service: NodePublishVolume / NodeUnpublishVolume, mount records
  volumes.py     volume ids, bucket names, secrets -> connection settings, request checks
  csi_pb2*.py    generated from the CSI spec's csi.proto (NOTE.md says how)
"""
