"""`s3pyfs csi --endpoint unix:///PATH/csi.sock --node-id NODE [--state-dir DIR] [--mounter M]`.

Responsibility: parse the command line, log to stderr, serve the Identity, Controller and
Node services on the unix socket with grpcio until SIGTERM/SIGINT, and turn every CsiError
into its gRPC status.
Invariants: a request's secrets are never logged (only the method, volume id and target
path are) and are scrubbed from every error message; an unexpected exception answers
INTERNAL with its type only.  Stopping the driver never unmounts anything.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import signal
import sys
import threading
from concurrent import futures

import grpc

from .. import __version__
from . import csi_pb2 as pb
from . import csi_pb2_grpc as pbg
from .controller import Controller
from .node import Node
from .volumes import CsiError, scrub

log = logging.getLogger("s3pyfs.csi")

DRIVER_NAME = "csi.s3pyfs.io"


class Identity(pbg.IdentityServicer):

    def GetPluginInfo(self, request, context):
        return pb.GetPluginInfoResponse(name=DRIVER_NAME, vendor_version=__version__)

    def GetPluginCapabilities(self, request, context):
        service = pb.PluginCapability.Service
        return pb.GetPluginCapabilitiesResponse(capabilities=[
            pb.PluginCapability(service=service(type=service.CONTROLLER_SERVICE))])

    def Probe(self, request, context):
        return pb.ProbeResponse(ready={"value": True})


def _guard(method):
    """CsiError -> its status; anything else -> INTERNAL naming the type; secrets scrubbed."""
    @functools.wraps(method)
    def call(self, request, context):
        name = method.__name__
        secrets = dict(getattr(request, "secrets", {}) or {})
        try:
            return method(self, request, context)
        except CsiError as exc:
            message = scrub(exc.message, secrets)
            log.warning("%s %s: %s %s", name, _subject(request), exc.code.name, message)
            context.abort(exc.code, message)
        except Exception as exc:
            log.error("%s %s: unexpected %s", name, _subject(request), type(exc).__name__,
                      exc_info=log.isEnabledFor(logging.DEBUG))
            context.abort(grpc.StatusCode.INTERNAL, f"{name} failed: internal error ({type(exc).__name__})")
    return call


def _subject(request) -> str:
    return " ".join(str(getattr(request, f)) for f in ("name", "volume_id", "target_path")
                    if getattr(request, f, ""))


def guarded(cls):
    """A subclass of a servicer whose RPC methods all go through _guard."""
    methods = {name: _guard(getattr(cls, name)) for name in vars(cls)
               if name[:1].isupper() and callable(getattr(cls, name))}
    return type(cls.__name__, (cls,), methods)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="s3pyfs csi", description="Kubernetes CSI driver csi.s3pyfs.io")
    parser.add_argument("--endpoint", required=True, help="unix:///PATH/csi.sock")
    parser.add_argument("--node-id", required=True, help="this node's name (NodeGetInfo)")
    parser.add_argument("--state-dir", default="/var/lib/s3pyfs-csi",
                        help="root-only directory for mount records, staging data, logs (default %(default)s)")
    parser.add_argument("--mounter", choices=("auto", "daemon", "systemd-run"), default="auto",
                        help="how mount processes outlive the driver (default: systemd-run when systemd is PID 1)")
    parser.add_argument("--unpublish-timeout", type=float, default=600.0,
                        help="seconds NodeUnpublishVolume waits for dirty data to be uploaded")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    if not args.endpoint.startswith("unix://") or not args.endpoint[len("unix://"):].startswith("/"):
        parser.error("--endpoint must be unix:///ABSOLUTE/PATH")
    return args


def build_server(args: argparse.Namespace) -> tuple[grpc.Server, Node]:
    node = Node(args.node_id, args.state_dir, args.mounter, args.unpublish_timeout)
    node.recover()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    pbg.add_IdentityServicer_to_server(guarded(Identity)(), server)
    pbg.add_ControllerServicer_to_server(guarded(Controller)(), server)
    node.__class__ = guarded(Node)        # same object, every RPC method guarded
    pbg.add_NodeServicer_to_server(node, server)
    path = args.endpoint[len("unix://"):]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        os.unlink(path)                  # a socket left by a killed driver
    except FileNotFoundError:
        pass
    old = os.umask(0o077)
    try:
        server.add_insecure_port(f"unix://{path}")
    finally:
        os.umask(old)
    return server, node


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("botocore", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)     # request dumps carry signed headers
    server, node = build_server(args)
    server.start()
    log.info("%s %s serving on %s (node %s, mounts via %s)", DRIVER_NAME, __version__, args.endpoint,
             args.node_id, "systemd-run --scope" if node.use_systemd else "s3pyfs daemon")
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
    log.info("stopping; published volumes stay mounted")
    server.stop(grace=5).wait()
    return 0
