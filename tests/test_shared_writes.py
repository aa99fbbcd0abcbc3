"""Two things touching one file or directory at once: the shared-storage races.

Responsibility: on real mounts against SeaweedFS, drive the races that lost or
resurrected data before files had one owner (s3pyfs/ownership.py): a close during a
rename of the directory above, an unlink during an upload, readers closing during a
streaming write, a removal while a failed upload is retried, parallel writers of one
file, an object replaced elsewhere between two opens; and a reference-model run in
which processes on two mounts write, publish by rename, chmod and unlink the SAME
names at once.  The fault proxy holds chosen requests so that the operations overlap
for certain, not by luck of timing.
"""

from __future__ import annotations

import errno
import inspect
import json
import os
import signal
import struct
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from support import wait_until

pytestmark = pytest.mark.mounted

MiB = 1024 * 1024
FAST = "retries=2,connect_timeout=1,readwrite_timeout=3,request_timeout=8"


def keys(s3, bucket: str, prefix: str = "") -> set[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {o["Key"] for page in pages for o in page.get("Contents", [])}


def body(s3, bucket: str, key: str) -> bytes | None:
    try:
        return s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except s3.exceptions.NoSuchKey:
        return None


def in_thread(fn, *args):
    """Run fn in a thread; returns (thread, result dict with 'value' or 'error')."""
    result: dict = {}

    def run():
        try:
            result["value"] = fn(*args)
        except BaseException as exc:           # noqa: BLE001 - reported to the test
            result["error"] = exc
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


def test_close_during_rename_of_the_directory_above_lands_under_the_new_name(s3, bucket, mount, fault_proxy):
    """Before: the close uploaded to d/f while `mv d d2` copied the old d/f, then the
    rename deleted d/f: close() returned 0 and the closed bytes were gone."""
    m = mount(bucket, f"url={fault_proxy.url}")
    d = m.path / "d"
    d.mkdir()
    for i in range(30):
        (d / f"child{i:02d}").write_bytes(b"child %d" % i)
    (d / "f").write_bytes(b"old contents")
    new = os.urandom(300 * 1024)
    fd = os.open(d / "f", os.O_WRONLY)
    # every copy of the rename is held for a moment: the write and close below land inside it
    copies = fault_proxy.add("delay", header="x-amz-copy-source", delay=0.3)
    mover, moved = in_thread(os.rename, d, m.path / "d2")
    assert wait_until(lambda: copies.hits >= 1, 30), "the rename never started copying"
    os.ftruncate(fd, 0)
    os.write(fd, new)
    os.close(fd)                                    # flush + release during the copy phase
    mover.join(120)
    assert not mover.is_alive() and "error" not in moved, moved
    assert copies.hits >= 31
    assert body(s3, bucket, "d2/f") == new
    assert not keys(s3, bucket, "d/")
    assert (m.path / "d2" / "f").read_bytes() == new


def test_unlink_during_the_upload_of_a_close_is_not_undone(s3, bucket, mount, fault_proxy):
    """Before: unlink deleted the key while close()'s PUT was in flight; the PUT then
    landed and the file came back in S3 (and in the mount after the TTL)."""
    m = mount(bucket, f"url={fault_proxy.url}", "stat_cache_expire=1", "negative_cache_expire=1")
    path = m.path / "victim"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.write(fd, b"x" * 100_000)
    held = fault_proxy.add("delay", method="PUT", path="/victim", delay=1.5, times=1)
    closer, closed = in_thread(os.close, fd)
    assert wait_until(lambda: held.hits >= 1, 30), "the close never uploaded"
    os.unlink(path)                                 # while the PUT is held by the proxy
    closer.join(60)
    assert not closer.is_alive() and "error" not in closed, closed
    time.sleep(2.5)                                 # past the TTLs and the held PUT
    assert "victim" not in keys(s3, bucket)
    assert not path.exists()


def test_readers_closing_during_a_streaming_write_publish_nothing(s3, bucket, mount, fault_proxy):
    """Before: every read-only close completed the writer's streaming upload: partial
    objects became visible in S3 and the upload restarted each time (54 parts for 10)."""
    m = mount(bucket, f"url={fault_proxy.url}", "multipart_size=5")
    path = m.path / "big"
    data = os.urandom(60 * MiB)
    seen_during_write = []
    with open(path, "wb") as writer:
        for i in range(0, len(data), MiB):
            writer.write(data[i:i + MiB])
            if i % (10 * MiB) == 9 * MiB:
                writer.flush()
                with open(path, "rb"):              # another reader opens and closes
                    pass
                seen_during_write.append("big" in keys(s3, bucket))
    assert seen_during_write and not any(seen_during_write), "a partial object was published"
    assert body(s3, bucket, "big") == data
    completions = fault_proxy.count("POST", query="uploadId", path="/big")   # (not the mount's probe)
    parts = fault_proxy.count("PUT", query="uploadId", path="/big")
    assert completions == 1, f"{completions} CompleteMultipartUploads"
    assert parts <= 12 + 2, f"{parts} UploadParts for 12 parts"


def test_rm_while_a_failed_upload_is_retried_in_the_background(s3, bucket, mount, fault_proxy):
    """Before: the background retry read the staging file that rm had closed: the mount
    exited with EBADF, or the retried PUT brought the removed file back."""
    m = mount(bucket, f"url={fault_proxy.url}", FAST)
    path = m.path / "retried"
    fault_proxy.add("error500", method="PUT", path="/retried")
    with pytest.raises(OSError) as failed:
        with open(path, "wb") as f:
            f.write(os.urandom(200 * 1024))
    assert failed.value.errno == errno.EIO
    fault_proxy.clear()
    held = fault_proxy.add("delay", method="PUT", path="/retried", delay=2.0, times=1)
    assert wait_until(lambda: held.hits >= 1, 60), "the background retry never ran"
    os.unlink(path)                                 # while the retry's PUT is held
    time.sleep(3.0)
    assert m.proc.poll() is None, "the mount exited"
    assert "retried" not in keys(s3, bucket)
    assert not path.exists()
    (m.path / "after").write_bytes(b"still serving")
    assert body(s3, bucket, "after") == b"still serving"


def test_parallel_notrunc_writers_of_one_file(s3, bucket, mount):
    """Ten processes write their own region of one 25 MiB file with `dd conv=notrunc`
    at once: every region is in S3 afterwards and nothing is logged as unexpected."""
    m = mount(bucket, "multipart_size=5")
    size, writers = 25 * MiB, 10
    (m.path / "shared").write_bytes(b"\0" * size)
    region = size // writers
    blobs = [bytes([65 + i]) * region for i in range(writers)]
    procs = []
    for i in range(writers):
        src = m.path.parent / f"blob{i}"
        src.write_bytes(blobs[i])
        procs.append(subprocess.Popen(
            ["dd", f"if={src}", f"of={m.path / 'shared'}", "conv=notrunc", "bs=1M",
             f"seek={i * region}", "oflag=seek_bytes", "status=none"]))
    assert [p.wait(120) for p in procs] == [0] * writers
    assert body(s3, bucket, "shared") == b"".join(blobs) + b"\0" * (size - region * writers)
    assert "unexpected" not in m.log_text()


def test_open_after_another_client_replaced_the_object_reads_the_new_version(s3, bucket, mount):
    """Before: open trusted the 5 s stat cache and the read pinned to the old ETag failed
    with EIO for up to 5 s; s3fs reads the new content at once."""
    m = mount(bucket)                               # default stat_cache_expire
    path = m.path / "f"
    path.write_bytes(b"old\n")
    assert path.read_bytes() == b"old\n"
    s3.put_object(Bucket=bucket, Key="f", Body=b"the new and longer content\n")
    assert path.read_bytes() == b"the new and longer content\n"
    s3.put_object(Bucket=bucket, Key="f", Body=b"short\n")
    assert path.read_bytes() == b"short\n"


# ----------------------------------------------------------------------------- reference model
WORKER = textwrap.dedent(r'''
    import errno, json, os, random, struct, sys, time
    MAKE_PAYLOAD
    root, wid, seconds, seed = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
    rng = random.Random(seed)
    names = ["n0", "n1", "n2"]
    ops, seq = [], 0
    end = time.monotonic() + seconds
    def payload(tag):
        global size
        size = rng.choice([0, 3000, 200_000, 1_300_000])
        return make_payload(tag, size)
    size = 0
    while time.monotonic() < end:
        name = rng.choice(names)
        kind = rng.choice(["write", "write", "publish", "unlink", "chmod", "append"])
        seq += 1
        tag = f"{wid}-{seq}"
        start = time.monotonic()
        ok, err = True, None
        try:
            if kind == "write":
                with open(os.path.join(root, name), "wb") as f:
                    f.write(payload(tag))
            elif kind == "publish":
                tmp = os.path.join(root, f"tmp-{wid}")
                with open(tmp, "wb") as f:
                    f.write(payload(tag))
                start = time.monotonic()
                os.rename(tmp, os.path.join(root, name))
            elif kind == "unlink":
                os.unlink(os.path.join(root, name))
            elif kind == "chmod":
                os.chmod(os.path.join(root, name), rng.choice([0o600, 0o644]))
            elif kind == "append":
                # open for writing and close without a write: such a close commits nothing
                os.close(os.open(os.path.join(root, name), os.O_WRONLY | os.O_APPEND))
        except OSError as exc:
            ok, err = False, exc.errno
        ops.append({"kind": kind, "name": name, "tag": tag, "start": start, "end": time.monotonic(),
                    "ok": ok, "errno": err, "mount": root, "size": size})
    print(json.dumps(ops))
''')


def make_payload(tag: str, size: int) -> bytes:
    """What a write with `tag` puts in a file: its tag as a 16-byte header, then the tag repeated."""
    head = struct.pack("<16s", tag.encode())
    return head + (tag.encode() * (size // len(tag) + 1))[:size]


WORKER = WORKER.replace("MAKE_PAYLOAD\n", textwrap.dedent(inspect.getsource(make_payload)))
BLOCK = 4096


def check_against_model(final: dict[str, bytes | None], ops: list[dict]) -> None:
    """Each name must hold what one of its legal last operations left: a whole version
    written by an acknowledged (or failed, hence maybe applied) write or publish, or
    nothing after an unlink.  A legal last operation is one that no acknowledged
    operation on the same name started after it had ended."""
    for name, content in final.items():
        effects = [o for o in ops if o["name"] == name and o["kind"] in ("write", "publish", "unlink")
                   and (o["ok"] or o["errno"] not in (errno.ENOENT,))]
        acked = [o for o in effects if o["ok"]]
        last = [o for o in effects if not any(p["start"] > o["end"] for p in acked)]
        if content is None:
            legal = not acked or any(o["kind"] == "unlink" for o in last)
            assert legal, f"{name} is absent, but the last operations were {last}"
            continue
        tag = struct.unpack_from("<16s", content)[0].rstrip(b"\0").decode()
        writers = [o for o in last if o["tag"] == tag and o["kind"] in ("write", "publish")]
        assert writers, f"{name} holds version {tag}, which is not a legal last write: {last}"
        final = writers[0]
        # two processes writing one file on one mount at once may interleave, as on a local
        # disk: then each 4 KiB block is from the last write or one that overlapped it there.
        # Blocks of a write on another mount, or of one long finished, are a mixed object.
        sources = [final] + [o for o in ops if o["name"] == name and o["kind"] == "write"
                             and o["mount"] == final.get("mount") and o is not final
                             and o["start"] < final["end"] and final["start"] < o["end"]]
        payloads = [make_payload(o["tag"], o.get("size", len(content) - 16)) for o in sources]
        for at in range(0, len(content), BLOCK):
            block = content[at:at + BLOCK]
            if any(p[at:at + BLOCK] == block for p in payloads):
                continue
            # writes shorter than a block end inside it: check byte by byte
            for i in range(at, at + len(block)):
                assert any(len(p) > i and p[i] == content[i] for p in payloads), \
                    f"{name} holds a mixed object (version {tag}, byte {i} from no overlapping write)"


@pytest.mark.parametrize("layout", ["one mount", "two mounts"])
def test_processes_on_the_same_names_match_the_reference_model(s3, bucket, mount, tmp_path, layout):
    """Six processes write, publish by rename, chmod and unlink three shared names at
    once (on one mount, or three on each of two mounts of the bucket).  After both
    unmount, S3 holds for each name a state some legal interleaving leaves: no lost
    acknowledged write, no mixed object, no resurrected file."""
    opts = ("stat_cache_expire=1", "negative_cache_expire=1")
    a = mount(bucket, *opts)
    b = mount(bucket, *opts) if layout == "two mounts" else a
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    procs = []
    for i in range(6):
        root = (a if i % 2 == 0 else b).path
        procs.append(subprocess.Popen([sys.executable, str(script), str(root), f"w{i}", "12", str(i)],
                                      stdout=subprocess.PIPE, text=True))
    ops = []
    for p in procs:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0
        ops.extend(json.loads(out))
    assert a.unmount() == 0
    if b is not a:
        assert b.unmount() == 0
    acked_writes = [o for o in ops if o["ok"] and o["kind"] in ("write", "publish")]
    assert len(acked_writes) >= 20, "too little work to judge"
    final = {name: body(s3, bucket, name) for name in ("n0", "n1", "n2")}
    check_against_model(final, ops)
    leftovers = {k for k in keys(s3, bucket) if k.startswith("tmp-")}
    published = {f"tmp-{o['tag'].split('-')[0]}" for o in ops if o["kind"] == "publish" and not o["ok"]}
    assert leftovers <= published, f"temporary names left behind: {leftovers - published}"


def test_model_checker_rejects_lost_mixed_and_resurrected():
    """The checker itself is not vacuous."""
    def op(kind, tag, start, end, ok=True, mount="A"):
        return {"kind": kind, "name": "n", "tag": tag, "start": start, "end": end, "ok": ok, "errno": None,
                "mount": mount, "size": 9000}
    v = lambda tag: make_payload(tag, 9000)   # noqa: E731
    ops = [op("write", "w0-1", 0, 1), op("write", "w1-1", 2, 3)]
    check_against_model({"n": v("w1-1")}, ops)
    with pytest.raises(AssertionError, match="not a legal last write"):
        check_against_model({"n": v("w0-1")}, ops)                 # lost acknowledged write
    with pytest.raises(AssertionError, match="mixed"):
        check_against_model({"n": v("w1-1")[:BLOCK] + v("w0-1")[BLOCK:]}, ops)   # w0 was over
    overlapping = ops + [op("write", "w5-1", 2.5, 3.5)]
    check_against_model({"n": v("w1-1")[:BLOCK] + v("w5-1")[BLOCK:]}, overlapping)    # one mount: legal
    short = ops + [op("write", "w6-1", 2.5, 3.5)]
    short[-1]["size"] = 100                                        # ends inside the first block
    check_against_model({"n": make_payload("w6-1", 100) + v("w1-1")[116:]}, short)
    with pytest.raises(AssertionError, match="mixed"):
        check_against_model({"n": make_payload("w6-1", 100) + v("w0-1")[116:]}, short)
    overlapping[-1]["mount"] = "B"
    with pytest.raises(AssertionError, match="mixed"):
        check_against_model({"n": v("w1-1")[:BLOCK] + v("w5-1")[BLOCK:]}, overlapping)
    with pytest.raises(AssertionError, match="absent"):
        check_against_model({"n": None}, ops)
    ops.append(op("unlink", "w2-1", 4, 5))
    check_against_model({"n": None}, ops)
    with pytest.raises(AssertionError, match="not a legal last write"):
        check_against_model({"n": v("w1-1")}, ops)                 # resurrected
    ops.append(op("write", "w3-1", 4.5, 6))                        # overlaps the unlink
    check_against_model({"n": v("w3-1")}, ops)
    check_against_model({"n": None}, ops)


def test_rename_whose_delete_of_the_old_key_fails_still_moves_the_file(s3, bucket, mount, fault_proxy):
    """Before: a failed DELETE at the end of a file rename left the data under the new key,
    the old name in the mount and both objects in S3, and mv reported EIO."""
    m = mount(bucket, f"url={fault_proxy.url}", FAST, "stat_cache_expire=1", "negative_cache_expire=1")
    (m.path / "old").write_bytes(b"payload")
    failing = fault_proxy.add("error500", method="DELETE", path="/old", times=3)
    os.rename(m.path / "old", m.path / "new")
    assert failing.hits >= 2          # the rename's own DELETE failed, retries included
    assert (m.path / "new").read_bytes() == b"payload"
    assert wait_until(lambda: "old" not in keys(s3, bucket), 20), "the old key stayed behind"
    assert keys(s3, bucket) == {"new"}
    assert not (m.path / "old").exists()


def test_stat_right_after_an_external_change_with_no_stat_cache(s3, bucket, mount):
    """stat_cache_expire=0: stat and ls show another client's change at once."""
    m = mount(bucket, "stat_cache_expire=0")
    (m.path / "f").write_bytes(b"four")
    assert os.stat(m.path / "f").st_size == 4
    s3.put_object(Bucket=bucket, Key="f", Body=b"x" * 12345)
    assert os.stat(m.path / "f").st_size == 12345
    s3.put_object(Bucket=bucket, Key="g", Body=b"new name")
    assert "g" in os.listdir(m.path)
    assert (m.path / "g").read_bytes() == b"new name"


def test_conflict_found_by_the_unmount_drain_says_where_the_data_went(s3, bucket, mount, tmp_path):
    """SIGTERM with a file still open and dirty, whose object another client replaced: the
    drain does not overwrite it, exits 6 naming the file as kept in lost+found, and logs no
    second, misleading "could not upload ... kept in the journal" line for it."""
    m = mount(bucket, f"tmpdir={tmp_path}")
    m.expect_clean_exit = False
    (m.path / "doc").write_bytes(b"A" * 3 * MiB)
    fd = os.open(m.path / "doc", os.O_WRONLY)
    os.pwrite(fd, b"local edit", 0)                 # depends on the version opened
    s3.put_object(Bucket=bucket, Key="doc", Body=b"B" * 1000)
    m.proc.send_signal(signal.SIGTERM)
    code = m.proc.wait(60)
    try:
        os.close(fd)
    except OSError:
        pass
    log = m.log_text()
    assert code == 6, log[-2000:]
    assert body(s3, bucket, "doc") == b"B" * 1000
    assert "doc (changed in S3 meanwhile: kept in lost+found)" in log
    assert "could not upload doc" not in log
    kept = list(tmp_path.rglob("lost+found/*/data"))
    assert len(kept) == 1 and kept[0].read_bytes()[:10] == b"local edit"


def test_open_of_a_new_version_while_a_reader_holds_the_old_one(s3, bucket, mount):
    """A reader keeps the version it opened (or gets EIO), a later open reads the new one
    whole, and neither ever gets the other's pages (the kernel's page cache and size belong
    to the inode both share)."""
    m = mount(bucket)
    path = m.path / "f"
    old, new = b"A" * 3000, b"B" * 70_000
    path.write_bytes(old)
    first = open(path, "rb")
    assert first.read(100) == old[:100]
    s3.put_object(Bucket=bucket, Key="f", Body=new)
    assert path.read_bytes() == new                         # a new open: the new version, whole
    try:
        rest = first.read()
    except OSError as exc:
        assert exc.errno in (errno.EIO, errno.ESTALE)
    else:
        assert old[:100] + rest == old                      # the old version, whole
    first.close()
    assert path.read_bytes() == new
    assert os.stat(path).st_size == len(new)


def test_stat_after_the_ttl_while_a_reader_holds_the_old_version(s3, bucket, mount):
    """A stat that finds a new version while a handle still reads the old one gives the
    name a new inode: the reader's inode keeps the old size (fstat) and its reads never
    come back padded to the new size; the name shows the new version."""
    m = mount(bucket, "stat_cache_expire=0.5", "negative_cache_expire=0.5")
    path = m.path / "f"
    old, new = b"A" * 3000, b"B" * 9000
    path.write_bytes(old)
    with open(path, "rb") as reader:
        assert reader.read(10) == old[:10]
        s3.put_object(Bucket=bucket, Key="f", Body=new)
        time.sleep(1.0)                                     # past the TTLs
        assert os.stat(path).st_size == len(new)            # the name: the new version
        assert os.fstat(reader.fileno()).st_size == len(old)
        try:
            rest = reader.read()
        except OSError as exc:
            assert exc.errno in (errno.EIO, errno.ESTALE)
        else:
            assert old[:10] + rest == old
    assert path.read_bytes() == new
