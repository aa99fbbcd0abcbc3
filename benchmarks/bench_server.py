"""SeaweedFS for the benchmark: tests/support.py's SeaweedServer, tuned for volume.

Differences from the test server:
* ports are picked so that both ``port`` and ``port + 10000`` are free (weed
  derives gRPC ports that way for any port it is not told about);
* Prometheus metrics on one more loopback port, read through ``Metrics`` to
  count S3 requests by type and the bytes each bucket sent and received;
* volumes of 1 GiB (the test server's 32 MiB volumes would run out of room
  after a few GiB) and a ``vacuum()`` that reclaims deleted data between runs.
"""

from __future__ import annotations

import random
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

import support  # noqa: E402  (tests/support.py)


def pick_ports(count: int) -> list[int]:
    """``count`` loopback ports where ``port`` and ``port + 10000`` are free.

    Drawn from 10000..(start of the ephemeral range - 10000) so that neither
    the port nor its +10000 twin is handed out to an outgoing connection.
    """
    low, _high = support._ephemeral_range()
    top = min(low, 65536) - 10000
    if top <= 10000:
        top = 55535
    candidates = random.Random().sample(range(10000, top), min(3000, top - 10000))
    ports: list[int] = []
    for port in candidates:
        if port in ports or port + 10000 in ports or port - 10000 in ports:
            continue
        if support._port_is_free(port) and support._port_is_free(port + 10000):
            ports.append(port)
            if len(ports) == count:
                return ports
    raise RuntimeError(f"could not find {count} free port pairs on 127.0.0.1")


class BenchSeaweed(support.SeaweedServer):
    PORT_NAMES = support.SeaweedServer.PORT_NAMES + ("metrics",)

    def command(self) -> list[str]:
        cmd = []
        for arg in super().command():
            if arg.startswith("-master.volumeSizeLimitMB="):
                arg = "-master.volumeSizeLimitMB=1024"
            elif arg.startswith("-volume.max="):
                arg = "-volume.max=100"
            cmd.append(arg)
        return cmd + [f"-metricsPort={self.ports['metrics']}", "-metricsIp=127.0.0.1"]

    def _pick_ports(self, count: int) -> list[int]:
        return pick_ports(count)          # the benchmark also needs port + 10000 free

    def start(self, timeout: float = 90.0, attempts: int = 3) -> BenchSeaweed:
        return super().start(timeout, attempts)

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['metrics']}/metrics"

    def vacuum(self, timeout: float = 120.0) -> None:
        """Reclaim the space of deleted objects (best effort)."""
        url = (f"http://127.0.0.1:{self.ports['master']}/vol/vacuum"
               "?garbageThreshold=0.01")
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                response.read()
        except OSError:
            pass

    def version(self) -> str:
        try:
            out = subprocess.run([self.weed, "version"], capture_output=True, text=True,
                                 timeout=20).stdout
        except (OSError, subprocess.TimeoutExpired):
            return "?"
        match = re.search(r"version\s+(\S+\s+\S+)", out)
        return match.group(1) if match else out.strip().splitlines()[0] if out.strip() else "?"


_LINE = re.compile(r'^(SeaweedFS_s3_[a-z_]+)\{([^}]*)\}\s+([0-9.eE+-]+)$')
_LABEL = re.compile(r'(\w+)="([^"]*)"')


class Metrics:
    """Counters of the S3 gateway for one bucket, read from /metrics."""

    def __init__(self, url: str, bucket: str):
        self.url = url
        self.bucket = bucket

    def snapshot(self) -> dict[str, float]:
        """{'sent': bytes, 'received': bytes, 'GET': n, 'PUT': n, ...}."""
        try:
            with urllib.request.urlopen(self.url, timeout=10) as response:
                text = response.read().decode("utf-8", "replace")
        except OSError:
            return {}
        counts: dict[str, float] = {}
        for line in text.splitlines():
            match = _LINE.match(line)
            if not match:
                continue
            name, labels, value = match.groups()
            labels = dict(_LABEL.findall(labels))
            if labels.get("bucket") != self.bucket:
                continue
            if name == "SeaweedFS_s3_bucket_traffic_sent_bytes_total":
                counts["sent"] = counts.get("sent", 0) + float(value)
            elif name == "SeaweedFS_s3_bucket_traffic_received_bytes_total":
                counts["received"] = counts.get("received", 0) + float(value)
            elif name == "SeaweedFS_s3_request_total":
                kind = labels.get("type", "?")
                counts[kind] = counts.get(kind, 0) + float(value)
        return counts

    @staticmethod
    def delta(before: dict, after: dict) -> dict[str, float]:
        if not before and not after:
            return {}
        keys = set(before) | set(after)
        return {k: after.get(k, 0) - before.get(k, 0) for k in keys
                if after.get(k, 0) - before.get(k, 0)}

