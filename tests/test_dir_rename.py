"""Directory rename that fails or crashes half way (dirrename.py), and old s3fs `_$folder$` markers.

Mounted on SeaweedFS; faults come from tests/fault_proxy.py between the mount and
SeaweedFS, crashes are a SIGKILL of the mount.  Every result is read back out of
band with boto3 (not through the proxy): every key, every byte.

What a user can rely on, asserted here:
  * a copy that fails during `mv d d2` leaves `d` exactly as it was and nothing
    under `d2/`; the same rename retried succeeds;
  * a failure while the sources are deleted is finished by the retried rename;
  * a crash between the copies and the deletes is finished at the next mount
    (only the target's keys remain);
  * `a_$folder$` moves with `mv a b` (the old name does not come back), and
    `x_$folder$` is the directory `x` in every directory's listing.
"""

from __future__ import annotations

import concurrent.futures
import errno
import json
import os
import signal
import subprocess
import sys

import pytest
import support

pytestmark = pytest.mark.mounted

FAST = "retries=3,connect_timeout=1,readwrite_timeout=2,request_timeout=6"


def fill(s3, bucket: str, prefix: str, count: int) -> dict[str, bytes]:
    """`count` small files below `prefix` (a tenth in a subdirectory) and the `prefix` marker."""
    objects = {f"{prefix}{'sub/' if i % 10 == 0 else ''}f{i:04d}": f"body of {i}\n".encode() * (1 + i % 5)
               for i in range(count)}
    objects[prefix] = b""
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda kv: s3.put_object(Bucket=bucket, Key=kv[0], Body=kv[1]), objects.items()))
    return objects


def stored(s3, bucket: str, prefix: str) -> dict[str, bytes]:
    """Every key starting with `prefix` and its bytes, straight from SeaweedFS."""
    found = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            found[obj["Key"]] = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
    return found


def moved(objects: dict[str, bytes], old: str, new: str) -> dict[str, bytes]:
    return {new + key[len(old):]: body for key, body in objects.items()}


def kill_mount(m) -> None:
    m.expect_clean_exit = False
    m.proc.send_signal(signal.SIGKILL)
    m.proc.wait(10)
    support.force_unmount(m.path)


def test_failed_copy_leaves_source_intact_and_the_retry_succeeds(s3, bucket, mount, fault_proxy, tmp_path):
    objects = fill(s3, bucket, "d/", 450)
    m = mount(bucket, f"url={fault_proxy.url}", FAST, f"tmpdir={tmp_path}")
    # one CopyObject fails for good (every retry of it): the one writing d2/f0123
    fault = fault_proxy.add("error500", method="PUT", header="x-amz-copy-source", path=f"/{bucket}/d2/f0123")
    with pytest.raises(OSError) as failure:
        os.rename(m.path / "d", m.path / "d2")
    assert failure.value.errno == errno.EIO
    assert fault.hits >= 1 and fault_proxy.count("PUT") > 1
    assert stored(s3, bucket, "d2") == {}, "copies of the failed rename were left under the target"
    assert stored(s3, bucket, "d/") == objects
    assert not (m.path / "d2").exists()
    assert len(os.listdir(m.path / "d")) == 406         # 405 files + sub/

    fault_proxy.clear()
    os.rename(m.path / "d", m.path / "d2")
    assert stored(s3, bucket, "d/") == {}
    assert stored(s3, bucket, "d2/") == moved(objects, "d/", "d2/")
    assert not (m.path / "d").exists()
    assert (m.path / "d2" / "f0123").read_bytes() == objects["d/f0123"]
    assert not list(tmp_path.rglob("rename.*.json"))


def test_failed_delete_is_finished_by_the_retried_rename(s3, bucket, mount, fault_proxy, tmp_path):
    objects = fill(s3, bucket, "d/", 300)
    m = mount(bucket, f"url={fault_proxy.url}", FAST, f"tmpdir={tmp_path}")
    fault = fault_proxy.add("error500", method="POST", query="delete")
    with pytest.raises(OSError) as failure:
        os.rename(m.path / "d", m.path / "d2")
    assert failure.value.errno == errno.EIO and fault.hits >= 1
    assert stored(s3, bucket, "d2/") == moved(objects, "d/", "d2/")       # the copies are complete
    assert stored(s3, bucket, "d/") == objects                            # nothing deleted yet
    fault_proxy.clear()
    os.rename(m.path / "d", m.path / "d2")                                # no ENOTEMPTY
    assert stored(s3, bucket, "d/") == {}
    assert stored(s3, bucket, "d2/") == moved(objects, "d/", "d2/")
    assert not (m.path / "d").exists() and len(os.listdir(m.path / "d2")) == 271
    assert not list(tmp_path.rglob("rename.*.json"))


def test_crash_between_copy_and_delete_is_rolled_forward_at_the_next_mount(s3, bucket, mount, fault_proxy,
                                                                            tmp_path):
    stage = tmp_path / "stage"
    stage.mkdir()
    objects = fill(s3, bucket, "d/", 300)
    m = mount(bucket, f"url={fault_proxy.url}", f"tmpdir={stage}")
    # the first DeleteObjects reaches SeaweedFS; its answer is held until the mount is dead
    fault_proxy.add("delay", method="POST", query="delete", times=1, delay=60)
    mover = subprocess.Popen([sys.executable, "-c", "import os, sys; os.rename(sys.argv[1], sys.argv[2])",
                              str(m.path / "d"), str(m.path / "d2")], stderr=subprocess.PIPE)
    assert support.wait_until(lambda: fault_proxy.injected["delay"] == 1, timeout=120), \
        m.describe("the rename never reached its delete phase")
    kill_mount(m)
    mover.wait(30)
    fault_proxy.clear()
    assert stored(s3, bucket, "d2/") == moved(objects, "d/", "d2/")
    records = list(stage.rglob("rename.*.json"))
    assert len(records) == 1 and json.loads(records[0].read_text())["phase"] == "deleting"
    assert stored(s3, bucket, "d/"), "the crash left nothing to roll forward"

    m2 = mount(bucket, f"url={fault_proxy.url}", f"tmpdir={stage}")    # same endpoint: same journal store
    assert stored(s3, bucket, "d/") == {}
    assert stored(s3, bucket, "d2/") == moved(objects, "d/", "d2/")
    assert sorted(os.listdir(m2.path)) == ["d2"]
    assert "rolled forward" in m2.log_text()
    assert not list(stage.rglob("rename.*.json"))


def test_crash_during_copy_is_rolled_back_at_the_next_mount(s3, bucket, mount, fault_proxy, tmp_path):
    stage = tmp_path / "stage"
    stage.mkdir()
    objects = fill(s3, bucket, "d/", 300)
    s3.put_object(Bucket=bucket, Key="e/", Body=b"")                      # an empty directory, replaced
    m = mount(bucket, f"url={fault_proxy.url}", f"tmpdir={stage}")
    fault_proxy.add("delay", method="PUT", header="x-amz-copy-source", path=f"/{bucket}/e/f0151",
                    times=1, delay=60)
    mover = subprocess.Popen([sys.executable, "-c", "import os, sys; os.rename(sys.argv[1], sys.argv[2])",
                              str(m.path / "d"), str(m.path / "e")], stderr=subprocess.PIPE)
    assert support.wait_until(lambda: fault_proxy.injected["delay"] == 1, timeout=120), \
        m.describe("the rename never copied e/f0151")
    kill_mount(m)
    mover.wait(30)
    fault_proxy.clear()
    assert "e/f0151" in stored(s3, bucket, "e/")

    m2 = mount(bucket, f"url={fault_proxy.url}", f"tmpdir={stage}")
    assert stored(s3, bucket, "d/") == objects
    assert stored(s3, bucket, "e/") == {"e/": b""}                        # what was there before
    assert "rolled back" in m2.log_text()
    os.rename(m2.path / "d", m2.path / "e")
    assert stored(s3, bucket, "e/") == moved(objects, "d/", "e/")
    assert stored(s3, bucket, "d/") == {}


def test_rename_moves_folder_markers_so_the_old_name_stays_gone(s3, bucket, mount):
    s3.put_object(Bucket=bucket, Key="a_$folder$", Body=b"")
    s3.put_object(Bucket=bucket, Key="c_$folder$", Body=b"")
    s3.put_object(Bucket=bucket, Key="c/inner", Body=b"inside c")
    m = mount(bucket)
    assert sorted(os.listdir(m.path)) == ["a", "c"]
    os.rename(m.path / "a", m.path / "b")
    os.rename(m.path / "c", m.path / "d")
    assert sorted(stored(s3, bucket, "")) == ["b/", "d/", "d/inner"]      # legacy markers become `new/`
    m.unmount()
    m2 = mount(bucket)                                                    # nothing cached
    assert sorted(os.listdir(m2.path)) == ["b", "d"]
    assert (m2.path / "b").is_dir() and os.listdir(m2.path / "b") == []
    assert (m2.path / "d" / "inner").read_bytes() == b"inside c"


def test_folder_marker_is_a_directory_in_every_listing(s3, bucket, mount):
    s3.put_object(Bucket=bucket, Key="sub/x_$folder$", Body=b"")
    s3.put_object(Bucket=bucket, Key="sub/file", Body=b"f")
    s3.put_object(Bucket=bucket, Key="sub/deeper/y_$folder$", Body=b"")
    s3.put_object(Bucket=bucket, Key="sub/deeper/y/z", Body=b"z")
    m = mount(bucket)
    assert os.listdir(m.path) == ["sub"]
    assert sorted(os.listdir(m.path / "sub")) == ["deeper", "file", "x"]
    assert (m.path / "sub" / "x").is_dir() and os.listdir(m.path / "sub" / "x") == []
    assert os.listdir(m.path / "sub" / "deeper") == ["y"]                 # merged with y/z
    assert os.listdir(m.path / "sub" / "deeper" / "y") == ["z"]


# ------------------------------------------------------------------ recovery, no FUSE (moto)
def test_recovery_finishes_records_inside_the_prefix_and_leaves_others(moto_server, tmp_path, caplog):
    import boto3
    import trio

    from s3pyfs import dirrename, statedir
    from s3pyfs.credentials import StaticKeys
    from s3pyfs.journal import Journal
    from s3pyfs.s3client import ClientSettings, open_client

    s3 = boto3.client("s3", endpoint_url=moto_server.endpoint, aws_access_key_id="test",
                      aws_secret_access_key="test", region_name="us-east-1")
    bucket = "dirrename-recovery"
    s3.create_bucket(Bucket=bucket)
    for key in ("pre/d/f", "pre/d2/f", "other/x/f", "other/y/f"):
        s3.put_object(Bucket=bucket, Key=key, Body=b"data")
    etag = s3.head_object(Bucket=bucket, Key="pre/d/f")["ETag"].strip('"')
    store = tmp_path / "store"
    dead = Journal(str(store / "dead-mount"), lock=False)
    records = {
        "inside": dirrename.Intent("pre/d/", "pre/d2/", [["pre/d/f", etag, 4]], [], ["pre/d2/f"], [], "deleting"),
        "outside": dirrename.Intent("other/x/", "other/y/", [["other/x/f", etag, 4]], [], ["other/y/f"], [],
                                    "deleting"),
    }
    for n, intent in enumerate(records.values(), 1):
        (store / "dead-mount" / f"rename.{n}.json").write_text(json.dumps(intent.to_json()))
    dead.close()

    async def main():
        settings = ClientSettings(bucket=bucket, endpoint_url=moto_server.endpoint, path_style=True,
                                  static_keys=StaticKeys("test", "test"), retries=2, connect_timeout=2,
                                  read_timeout=10, request_timeout=30)
        async with open_client(settings) as client:
            return await dirrename.recover(statedir.open_base(str(store)), client, "pre/", 30)
    outcomes = trio.run(main)
    left = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"])
    assert left == ["other/x/f", "other/y/f", "pre/d2/f"]
    assert [outcome for _path, outcome in outcomes] == ["rolled forward", "outside"]
    assert [p.name for p in (store / "dead-mount").glob("rename.*.json")] == ["rename.2.json"]
    assert any(r.levelname == "ERROR" and "outside this mount's prefix" in r.getMessage() for r in caplog.records)
