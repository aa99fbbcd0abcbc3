"""metrics.py and status.py without a mount: counters, exposition format, JSON, health, text."""

from __future__ import annotations

import json
import types

import pytest
from prometheus_client.parser import text_string_to_metric_families

from s3pyfs import metrics, status
from s3pyfs.cli import is_status_command, main, parse_args


class FakeLock:
    def __init__(self, held=False):
        self.held = held

    def locked(self):
        return self.held


def fake_fs(dirty=()):
    """The attributes Monitor reads from a Filesystem."""
    nodes = {1: object(), 2: object(), 3: object()}
    dirty_nodes = [types.SimpleNamespace(staging=s) for s in dirty]
    return types.SimpleNamespace(
        dirty_nodes=lambda: list(dirty_nodes), handles=[1, 2], inodes=types.SimpleNamespace(nodes=nodes),
        cache=types.SimpleNamespace(hits=7, misses=3),
        disk_cache=types.SimpleNamespace(bytes=2 * 1024**2, max_bytes=None, _lru={"a": 1, "b": 1}, hits=5, misses=2,
                                         evictions=1))


def staging(size, clean_generation=0, uploading=False):
    return types.SimpleNamespace(size=size, clean_generation=clean_generation, upload_lock=FakeLock(uploading))


class Clock:
    def __init__(self, t=1_700_000_000.0):
        self.t = t

    def __call__(self):
        return self.t


def monitor(fs=None, counts=None, clock=None):
    info = {"mountpoint": "/mnt/photos", "bucket": "photos", "prefix": "2024/", "endpoint": "http://127.0.0.1:8333",
            "version": "0.1.0", "pid": 4242, "metrics_url": None, "read_only": False}
    return metrics.Monitor(fs or fake_fs(), info, counts or metrics.Counters(), clock or Clock())


def test_histogram_buckets_are_cumulative_and_le_inclusive():
    h = metrics.Histogram()
    for seconds in (0.0005, 0.001, 0.003, 200.0):
        h.observe(seconds)
    out = h.export()
    assert out["count"] == 4 and out["sum"] == pytest.approx(200.0045)
    assert out["cumulative"][0] == 2            # 0.0005 and 0.001 (le="0.001")
    assert out["cumulative"][2] == 3            # le="0.005"
    assert out["cumulative"][-2] == 3 and out["cumulative"][-1] == 4    # 200 s only in +Inf


def test_counters_outcomes_bytes_retries_and_last_error():
    c = metrics.Counters()
    t0 = 0.0
    c.s3_done("GET key bytes=0-9", "ok", t0)
    c.s3_done("PUT key", "ok", t0, sent=10, retries=2)
    c.s3_done("HEAD missing", "404", t0)
    assert c.last_s3_error is None                         # absent names are not failures
    c.s3_done("GET other", "timeout", t0, message="GET other: no answer within 4 s")
    c.s3_received(10)
    assert c.s3_requests == {("GET", "ok"): 1, ("PUT", "ok"): 1, ("HEAD", "404"): 1, ("GET", "timeout"): 1}
    assert (c.s3_sent_bytes, c.s3_received_bytes, c.s3_retries) == (10, 10, {"PUT": 2})
    assert c.last_s3_error["outcome"] == "timeout" and "no answer" in c.last_s3_error["message"]
    c.fuse_done("lookup", t0, 2)
    c.fuse_done("lookup", t0)
    assert c.fuse_ops == {"lookup": 2} and c.fuse_errors == {("lookup", "ENOENT"): 1}


def test_snapshot_gauges_come_from_the_filesystem_and_dirty_age_tracks_uploads():
    clock = Clock()
    first, second = staging(1000), staging(500, uploading=True)
    fs = fake_fs([first, second])
    m = monitor(fs, clock=clock)
    snap = m.snapshot()
    assert snap["dirty"] == {"files": 2, "bytes": 1500, "uploads_in_flight": 1, "oldest_seconds": 0.0,
                             "peak_bytes": 1500}
    assert (snap["open_handles"], snap["inodes"], snap["stat_cache"]) == (2, 3, {"hits": 7, "misses": 3})
    clock.t += 30
    second.clean_generation = 1               # uploaded, then written again: its age restarts
    snap = m.snapshot()
    assert snap["dirty"]["oldest_seconds"] == 30.0
    fs.dirty_nodes = lambda: [types.SimpleNamespace(staging=second)]
    clock.t += 5
    snap = m.snapshot()
    assert snap["dirty"] == {"files": 1, "bytes": 500, "uploads_in_flight": 1, "oldest_seconds": 5.0,
                             "peak_bytes": 1500}
    fs.dirty_nodes = lambda: []
    assert m.snapshot()["dirty"]["peak_bytes"] == 0
    json.dumps(snap)                          # plain data only


def test_exposition_is_standard_text_format_with_expected_names():
    c = metrics.Counters()
    c.fuse_done("read", 0.0)
    c.fuse_done("getattr", 0.0, 5)
    c.fuse_read_bytes = 4096
    c.s3_done("GET k", "ok", 0.0)
    c.s3_done("PUT k", "ok", 0.0, sent=123, retries=1)
    c.s3_done("HEAD k", "connection", 0.0, message="HEAD k: refused")
    c.s3_received(77)
    c.checksum_fallbacks = 1
    text = metrics.exposition(monitor(fake_fs([staging(9)]), c).snapshot())
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in fams.values() for s in f.samples}
    assert samples[("s3pyfs_s3_requests_total", (("operation", "PUT"), ("outcome", "ok")))] == 1
    assert samples[("s3pyfs_s3_requests_total", (("operation", "HEAD"), ("outcome", "connection")))] == 1
    assert samples[("s3pyfs_s3_sent_bytes_total", ())] == 123
    assert samples[("s3pyfs_s3_received_bytes_total", ())] == 77
    assert samples[("s3pyfs_s3_retries_total", (("operation", "PUT"),))] == 1
    assert samples[("s3pyfs_fuse_errors_total", (("errno", "EIO"), ("operation", "getattr")))] == 1
    assert samples[("s3pyfs_fuse_read_bytes_total", ())] == 4096
    assert samples[("s3pyfs_dirty_bytes", ())] == 9 and samples[("s3pyfs_dirty_files", ())] == 1
    assert samples[("s3pyfs_stat_cache_hits_total", ())] == 7
    assert samples[("s3pyfs_disk_cache_bytes", ())] == 2 * 1024**2
    assert samples[("s3pyfs_disk_cache_evictions_total", ())] == 1
    assert samples[("s3pyfs_checksum_fallbacks_total", ())] == 1     # the store refused CRC headers once
    assert samples[("s3pyfs_s3_last_error_time_seconds", ())] > 0
    assert samples[("s3pyfs_s3_request_seconds_bucket", (("le", "+Inf"), ("operation", "GET")))] == 1
    assert samples[("s3pyfs_s3_request_seconds_count", (("operation", "GET"),))] == 1
    assert fams["s3pyfs_fuse_operation_seconds"].type == "histogram"
    assert fams["s3pyfs_info"].samples[0].labels["bucket"] == "photos"
    assert "# TYPE s3pyfs_s3_requests_total counter" in text
    assert "# HELP s3pyfs_dirty_bytes " in text
    for name in ("s3pyfs_resident_memory_bytes", "s3pyfs_uptime_seconds", "s3pyfs_uploads_in_flight",
                 "s3pyfs_dirty_oldest_seconds", "s3pyfs_open_handles", "s3pyfs_inodes"):
        assert (name, ()) in samples


@pytest.mark.parametrize("mountpoint, name", [
    ("/mnt/photos", "mnt-photos"),
    ("/mnt/my-bucket/", "mnt-my%2Dbucket"),
    ("/", "-"),
    ("/srv/a b/.x", "srv-a%20b-.x"),
    ("/.hidden", "%2Ehidden"),
])
def test_stats_file_name_of_a_mount_point(mountpoint, name):
    assert metrics.escape_mountpoint(mountpoint) == name


def test_stats_file_is_written_atomically_and_removed(tmp_path, monkeypatch):
    monkeypatch.setenv("S3PYFS_RUN_DIR", str(tmp_path / "run"))
    m = monitor()
    m.write_stats()
    path = tmp_path / "run" / "mnt-photos.json"
    data = json.loads(path.read_text())
    assert data["bucket"] == "photos" and data["pid"] == 4242 and data["format"] == metrics.FORMAT
    assert metrics.stats_paths("/mnt/photos")[0] == str(path)
    assert [p.name for p in path.parent.iterdir()] == ["mnt-photos.json"]    # no temporary left
    m.close()
    assert not path.exists()


def test_public_url_drops_user_and_password():
    assert metrics.public_url("http://user:secret@host:9000/x") == "http://host:9000/x"
    assert metrics.public_url("http://host:9000") == "http://host:9000"
    assert metrics.public_url(None) == "https://s3.amazonaws.com"


@pytest.mark.parametrize("value, expected", [
    ("9100", ("127.0.0.1", 9100)),
    ("0.0.0.0:9100", ("0.0.0.0", 9100)),
    ("[::1]:9100", ("::1", 9100)),
    ("localhost:1", ("localhost", 1)),
])
def test_metrics_option_values(tmp_path, value, expected):
    assert parse_args(["b12", str(tmp_path), "-o", f"metrics={value}"]).metrics == expected


@pytest.mark.parametrize("value", ["0", "70000", "host:", ":", "a b:9100", "host:port", "x/y:80"])
def test_bad_metrics_option_values_exit_2(tmp_path, value, capsys):
    assert main(["b12", str(tmp_path), "-o", f"metrics={value}"]) == 2
    assert "metrics= needs PORT or HOST:PORT" in capsys.readouterr().err


def test_status_command_is_told_from_a_mount_of_a_bucket_named_status():
    assert is_status_command(["status", "/mnt/x"])
    assert is_status_command(["status", "/mnt/x", "--json", "--window", "10"])
    assert not is_status_command(["status", "/mnt/x", "-o", "url=http://h"])
    assert not is_status_command(["status", "/mnt/x", "-f"])
    assert not is_status_command(["status:/", "/mnt/x"])


def _stats(now, **changes):
    snap = monitor(clock=Clock(now - 1)).snapshot()
    snap["uptime_seconds"] = 3725
    snap.update(changes)
    return snap


def test_health_verdicts(monkeypatch):
    now = 1_700_000_100.0
    monkeypatch.setattr(status, "alive", lambda pid: pid == 4242)
    ok = _stats(now)
    assert status.evaluate(ok, "fuse.s3pyfs", now) == (0, [])
    assert status.evaluate(None, None, now)[0] == 2
    assert status.evaluate(ok, None, now)[0] == 2
    assert status.evaluate(dict(ok, pid=1), "fuse.s3pyfs", now)[0] == 2
    failing = _stats(now)
    failing["s3"]["last_error"] = {"time": now - 10, "outcome": "timeout", "operation": "HEAD", "message": "HEAD k: x"}
    code, reasons = status.evaluate(failing, "fuse.s3pyfs", now)
    assert code == 1 and "timeout 10 s ago" in reasons[0]
    assert status.evaluate(failing, "fuse.s3pyfs", now, window=5)[0] == 0
    stuck = _stats(now, dirty={"files": 1, "bytes": 10, "oldest_seconds": 400.0, "uploads_in_flight": 0,
                               "peak_bytes": 10})
    assert status.evaluate(stuck, "fuse.s3pyfs", now)[0] == 1
    stale = _stats(now, updated=now - 100)
    assert "not updated" in status.evaluate(stale, "fuse.s3pyfs", now)[1][0]


def test_human_summary(monkeypatch):
    now = 1_700_000_100.0
    snap = _stats(now, dirty={"files": 2, "bytes": 3 * 1024**2, "oldest_seconds": 12.0, "uploads_in_flight": 1,
                              "peak_bytes": 4 * 1024**2}, rss_bytes=50 * 1024**2)
    snap["s3"]["requests"] = {"GET": {"ok": 1200}, "PUT": {"ok": 3, "SlowDown": 1}}
    snap["fuse"]["errors"] = {"lookup": {"ENOENT": 4}, "read": {"EIO": 1}}
    text = status.render(snap, 0, [], "/mnt/photos", now)
    assert text.splitlines()[0] == "s3pyfs on /mnt/photos: healthy"
    assert "photos (prefix /2024) at http://127.0.0.1:8333" in text
    assert "up 1 h 02 min" in text and "memory 50.0 MiB" in text
    assert "3.0 MiB in 2 file(s) waiting for upload" in text
    assert "[######------------------]  25% of 4.0 MiB uploaded" in text
    assert "1,204 requests (GET 1,200, PUT 4)" in text
    assert "5 errors (ENOENT 4, EIO 1)" in text
    assert "stat cache 7 hits / 3 misses, 70% hits" in text
    assert "disk cache  2.0 MiB in 2 blocks, 5 hits / 2 misses, 1 evictions" in text


def test_mountinfo_lookup(tmp_path):
    info = tmp_path / "mountinfo"
    info.write_text("36 1 0:32 / /mnt/a\\040b rw,nosuid - fuse.s3pyfs photos rw,user_id=0\n"
                    "37 1 0:33 / /mnt/c rw shared:5 - ext4 /dev/sda1 rw\n")
    assert status.mounted_fstype("/mnt/a b", str(info)) == "fuse.s3pyfs"
    assert status.mounted_fstype("/mnt/c", str(info)) == "ext4"
    assert status.mounted_fstype("/mnt/d", str(info)) is None


def test_status_of_a_path_without_statistics_exits_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("S3PYFS_RUN_DIR", str(tmp_path / "run"))
    assert main(["status", str(tmp_path)]) == 2
    assert "NOT MOUNTED" in capsys.readouterr().out
    assert main(["status", str(tmp_path), "--json"]) == 2
    assert json.loads(capsys.readouterr().out)["health"]["status"] == "not_mounted"
