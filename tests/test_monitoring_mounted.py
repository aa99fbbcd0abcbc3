"""A live mount's metrics endpoint, statistics file and `s3pyfs status`."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest
import support
from prometheus_client.parser import text_string_to_metric_families
from tcp_proxy import TcpProxy

from s3pyfs import __version__, metrics

pytestmark = pytest.mark.mounted


def scrape(port: int) -> dict:
    """{(name, sorted labels): value} of one scrape."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        assert r.headers["Content-Type"].startswith("text/plain")
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def status(path, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "s3pyfs", "status", str(path), *args],
                          capture_output=True, text=True, timeout=30)


def stats_file(path) -> str:
    found = metrics.stats_paths(str(path))
    assert found, f"no statistics file for {path}"
    return found[0]


def test_metrics_count_bytes_requests_and_dirty_data_drains(s3, seaweed, bucket, mount):
    sizes = {"small": 3000, "large": 300_000}
    for name, size in sizes.items():
        s3.put_object(Bucket=bucket, Key=f"in/{name}", Body=os.urandom(size))
    port = support.free_ports(1)[0]
    m = mount(bucket, f"metrics=127.0.0.1:{port}")
    before = scrape(port)
    assert value(before, "s3pyfs_info", bucket=bucket, prefix="", endpoint=seaweed.endpoint, mountpoint=str(m.path),
                 version=__version__) == 1

    # reads: every byte comes from S3 once
    for name, size in sizes.items():
        assert len((m.path / "in" / name).read_bytes()) == size
    after_read = scrape(port)
    total = sum(sizes.values())
    assert value(after_read, "s3pyfs_s3_received_bytes_total") - value(before, "s3pyfs_s3_received_bytes_total") == total
    assert value(after_read, "s3pyfs_fuse_read_bytes_total") - value(before, "s3pyfs_fuse_read_bytes_total") == total
    gets = value(after_read, "s3pyfs_s3_requests_total", operation="GET", outcome="ok") - \
        value(before, "s3pyfs_s3_requests_total", operation="GET", outcome="ok")
    assert gets == 2                          # objects up to 1 MiB are read whole
    assert value(after_read, "s3pyfs_fuse_operations_total", operation="read") > \
        value(before, "s3pyfs_fuse_operations_total", operation="read")

    # writes: dirty while open, one PUT of the whole file at close, then nothing pending
    data = os.urandom(250_000)
    fd = os.open(m.path / "out", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, data[:100_000])
        os.write(fd, data[100_000:])
        dirty = scrape(port)
        assert value(dirty, "s3pyfs_dirty_files") == 1
        assert value(dirty, "s3pyfs_dirty_bytes") == len(data)
        assert value(dirty, "s3pyfs_open_handles") >= 1
        # the statistics file says the same (rewritten every 2 s)
        assert support.wait_until(lambda: json.load(open(stats_file(m.path)))["dirty"]["bytes"] == len(data), 10)
    finally:
        os.close(fd)
    after_write = scrape(port)
    assert value(after_write, "s3pyfs_dirty_files") == 0 and value(after_write, "s3pyfs_dirty_bytes") == 0
    assert value(after_write, "s3pyfs_s3_sent_bytes_total") - value(dirty, "s3pyfs_s3_sent_bytes_total") == len(data)
    assert value(after_write, "s3pyfs_fuse_written_bytes_total") - value(before, "s3pyfs_fuse_written_bytes_total") \
        == len(data)
    assert value(after_write, "s3pyfs_s3_requests_total", operation="PUT", outcome="ok") - \
        value(dirty, "s3pyfs_s3_requests_total", operation="PUT", outcome="ok") == 1
    assert s3.get_object(Bucket=bucket, Key="out")["Body"].read() == data
    assert value(after_write, "s3pyfs_s3_request_seconds_count", operation="PUT") >= 1
    assert value(after_write, "s3pyfs_fuse_operation_seconds_count", operation="write") >= 2
    assert value(after_write, "s3pyfs_resident_memory_bytes") > 10 * 1024**2

    # errors by errno
    with pytest.raises(FileNotFoundError):
        (m.path / "no-such-file").stat()
    assert value(scrape(port), "s3pyfs_fuse_errors_total", operation="lookup", errno="ENOENT") >= 1

    # status: healthy, human and JSON
    assert support.wait_until(lambda: json.load(open(stats_file(m.path)))["dirty"]["files"] == 0, 10)
    human = status(m.path)
    assert human.returncode == 0, human.stdout + human.stderr
    assert human.stdout.startswith(f"s3pyfs on {m.path}: healthy")
    assert bucket in human.stdout and f"http://127.0.0.1:{port}/metrics" in human.stdout
    assert "dirty       none" in human.stdout
    js = status(m.path, "--json")
    assert js.returncode == 0
    doc = json.loads(js.stdout)
    assert doc["health"] == {"status": "healthy", "exit_code": 0, "reasons": [], "checked": doc["health"]["checked"]}
    assert (doc["bucket"], doc["mountpoint"], doc["pid"]) == (bucket, str(m.path), m.proc.pid)
    assert doc["s3"]["requests"]["PUT"]["ok"] >= 1 and doc["s3"]["sent_bytes"] >= len(data)
    assert doc["s3"]["last_error"] is None and doc["uptime_seconds"] > 0 and doc["started"] <= time.time()

    # the statistics file goes away with a clean unmount
    path = stats_file(m.path)
    assert m.unmount() == 0
    assert not os.path.exists(path)
    gone = status(m.path)
    assert gone.returncode == 2 and "NOT MOUNTED" in gone.stdout


def test_status_degraded_when_the_endpoint_fails_and_not_mounted_elsewhere(s3, seaweed, bucket, mount, tmp_path):
    s3.put_object(Bucket=bucket, Key="dir/file", Body=b"payload")
    target = urllib.parse.urlsplit(seaweed.endpoint)
    proxy = TcpProxy(target.hostname, target.port)
    proxy.forward()
    try:
        port = support.free_ports(1)[0]
        m = mount(bucket, f"url={proxy.url}", f"metrics={port}",
                  "retries=2,connect_timeout=1,readwrite_timeout=2,request_timeout=4,stat_cache_expire=0.5")
        assert status(m.path).returncode == 0
        proxy.refuse()
        time.sleep(1)
        with pytest.raises(OSError) as info:
            os.listdir(m.path / "dir")
        assert info.value.errno == errno.EIO
        # the statistics file is rewritten every 2 s
        assert support.wait_until(lambda: status(m.path).returncode == 1, 10), status(m.path).stdout
        human = status(m.path)
        assert "DEGRADED" in human.stdout and "last error" in human.stdout
        doc = json.loads(status(m.path, "--json").stdout)
        assert doc["health"]["status"] == "degraded" and doc["s3"]["last_error"]["outcome"] == "connection"
        assert doc["s3"]["errors"] >= 1
        assert status(m.path, "--degraded-ok").returncode == 0
        assert status(m.path, "--window", "0").returncode == 0
        samples = scrape(port)
        assert sum(v for (name, labels), v in samples.items()
                   if name == "s3pyfs_s3_requests_total" and ("outcome", "connection") in labels) >= 1
        assert value(samples, "s3pyfs_s3_last_error_time_seconds") > time.time() - 60
        log = m.log_text()
        assert "lookup failed: errno=EIO key=dir " in log, log[-2000:]
    finally:
        proxy.forward()
    m.unmount()
    proxy.close()
    empty = tmp_path / "plain"
    empty.mkdir()
    result = status(empty)
    assert result.returncode == 2 and "NOT MOUNTED" in result.stdout


def test_metrics_port_in_use_is_refused_with_exit_2(bucket, mount):
    import socket
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        m = mount(bucket, f"metrics=127.0.0.1:{busy.getsockname()[1]}", wait=False)
        assert m.proc.wait(30) == 2
        assert "cannot listen there" in m.log_text()
    finally:
        busy.close()
