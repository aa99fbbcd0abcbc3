"""Local users cannot steer a mount (issue 13, security part).

s3pyfs runs as root on shared nodes.  Each test below is one way another
local user (uid `nobody`, through setpriv) tried to make the mount upload,
overwrite, leak or delete something, or to stop other users' mounts; every
attack is carried out for real, planting files where the code before the fix
looked for them, and the mounted tests go through FUSE against SeaweedFS.

A shared, sticky, world-writable directory (what /tmp and /var/tmp are) is
made per test and handed to the mount as tmpdir= or use_cache=, so the tests
never touch the machine's own /var/tmp or /var/lib.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import support

NOBODY = 65534          # uid and gid of `nobody` / `nogroup`
OTHER = 1               # uid and gid of `daemon`: a second unprivileged user
MiB = 1024 * 1024


def run_as(uid: int, code: str, *args: str, gid: int | None = None) -> subprocess.CompletedProcess:
    """Run `python -c code args` as `uid` (no capabilities, no supplementary groups)."""
    gid = uid if gid is None else gid
    return subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups",
                           sys.executable, "-c", code, *args],
                          capture_output=True, text=True, timeout=60, cwd="/")


def can_read(uid: int, path: Path) -> bool:
    result = run_as(uid, "import sys; open(sys.argv[1], 'rb').read(1)", str(path))
    return result.returncode == 0


@pytest.fixture
def shared_dir():
    """A fresh directory like /tmp: root-owned, mode 1777, reachable by every user."""
    path = Path(tempfile.mkdtemp(prefix="s3pyfs-shared-", dir="/tmp"))
    os.chmod(path, 0o1777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def open_dir():
    """A fresh root-owned 0755 directory every user can traverse (tmp_path cannot be)."""
    path = Path(tempfile.mkdtemp(prefix="s3pyfs-open-", dir="/tmp"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def old_store_name(endpoint: str, bucket: str) -> str:
    """Where the code before the fix kept a bucket's journal: tmpdir/s3pyfs-dirty/<this>."""
    return hashlib.sha256(f"{endpoint}\n{bucket}".encode()).hexdigest()[:20]


def object_bytes(s3, bucket: str, key: str) -> bytes | None:
    try:
        return s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except s3.exceptions.NoSuchKey:
        return None


def stats_of(run_dir: Path) -> dict:
    files = [p for p in run_dir.glob("*.json")]
    assert len(files) == 1, files
    return json.loads(files[0].read_text())


def fresh_stats(run_dir: Path, after: float) -> dict:
    """The statistics file once it was rewritten after `after` (it is rewritten every 2 s)."""
    found: list[dict] = []

    def rewritten() -> bool:
        try:
            found[:] = [stats_of(run_dir)]
        except (AssertionError, ValueError, OSError):
            return False
        return found[0]["updated"] > after
    assert support.wait_until(rewritten, 30), "the statistics file was not rewritten"
    return found[0]


PLANT_RECORD = r"""
import json, os, sys
directory, key = sys.argv[1], sys.argv[2]
os.umask(0)
os.makedirs(directory, mode=0o777)
with open(os.path.join(directory, "1.data"), "wb") as f:
    f.write(b"planted by nobody")
record = {"version": 1, "key": key, "base_etag": None, "source_limit": 0, "written": [],
          "metadata": {"uid": "0", "gid": "0", "mode": str(0o100644)}, "uploads": []}
with open(os.path.join(directory, "1.json"), "w") as f:
    json.dump(record, f)
"""


# ---------------------------------------------------------------------- 1: planted dead-mount record
def test_record_planted_by_another_user_is_never_uploaded(s3, seaweed, bucket, mount, shared_dir):
    s3.put_object(Bucket=bucket, Key="mounted-prefix/inside.txt", Body=b"inside")
    store = shared_dir / "s3pyfs-dirty" / old_store_name(seaweed.endpoint, bucket)
    planted = run_as(NOBODY, PLANT_RECORD, str(store / "20200101T000000-1-abcdef"), "outside-the-prefix/evil.txt")
    assert planted.returncode == 0, planted.stderr
    m = mount(bucket, f"tmpdir={shared_dir}", prefix="mounted-prefix")
    assert (m.path / "inside.txt").read_bytes() == b"inside"
    assert object_bytes(s3, bucket, "outside-the-prefix/evil.txt") is None
    assert m.unmount() == 0
    assert object_bytes(s3, bucket, "outside-the-prefix/evil.txt") is None
    # the mount kept its own state in a directory only root can enter
    own = shared_dir / "s3pyfs-0"
    st = own.lstat()
    assert stat.S_ISDIR(st.st_mode) and st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o700


def test_state_directory_made_by_another_user_is_refused_with_exit_5(s3, seaweed, bucket, mount, shared_dir):
    """nobody creates the mount's own per-uid directory first: the mount refuses, uploads nothing."""
    planted = run_as(NOBODY, PLANT_RECORD, str(shared_dir / "s3pyfs-0" / "dirty" / "x" / "dead"),
                     "outside-the-prefix/evil.txt")
    assert planted.returncode == 0, planted.stderr
    m = mount(bucket, f"tmpdir={shared_dir}", prefix="mounted-prefix", wait=False)
    assert m.proc.wait(60) == 5
    m.expect_clean_exit = False
    log = m.log_text()
    assert f"{shared_dir}/s3pyfs-0 belongs to uid {NOBODY}" in log, log
    assert object_bytes(s3, bucket, "outside-the-prefix/evil.txt") is None


def test_own_record_outside_the_prefix_goes_to_lost_and_found(s3, bucket, mount, tmp_path):
    """Even a record in root's own journal is applied only inside the mount's prefix."""
    stage = tmp_path / "stage"
    stage.mkdir()
    m = mount(bucket, f"tmpdir={stage}", prefix="mounted-prefix")
    fd = os.open(m.path / "note.txt", os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, b"written, never closed")
    m.expect_clean_exit = False
    m.proc.send_signal(signal.SIGKILL)
    m.proc.wait(10)
    support.force_unmount(m.path)
    try:
        os.close(fd)
    except OSError:
        pass
    records = [p for p in stage.rglob("*.json") if "lost+found" not in p.parts]
    assert len(records) == 1, records
    entry = json.loads(records[0].read_text())
    assert entry["key"] == "mounted-prefix/note.txt"
    entry["key"] = "outside-the-prefix/evil.txt"
    records[0].write_text(json.dumps(entry))

    m2 = mount(bucket, f"tmpdir={stage}", prefix="mounted-prefix")
    assert object_bytes(s3, bucket, "outside-the-prefix/evil.txt") is None
    kept = [p.parent for p in stage.rglob("record.json")]
    assert len(kept) == 1
    assert (kept[0] / "data").read_bytes() == b"written, never closed"
    reason = json.loads((kept[0] / "record.json").read_text())["reason"]
    assert "outside this mount's prefix" in reason
    assert str(kept[0]) in m2.log_text()
    assert not [p for p in stage.rglob("*.json") if "lost+found" not in p.parts]


# ---------------------------------------------------------------------- 2: symlinks in the journal
SWAP_INSTANCE = r"""
import os, sys
shared, victim = sys.argv[1], sys.argv[2]
os.umask(0)
swapped = 0
for top, dirs, files in os.walk(shared):
    for name in dirs:
        path = os.path.join(top, name)
        if os.access(path, os.R_OK | os.X_OK):
            continue
        # root's directory (a live instance directory, or a level above it) that we may
        # rename: put our own in its place, with the journal's next temporary file a symlink
        try:
            os.rename(path, path + ".moved")
            os.mkdir(path, 0o777)
            os.symlink(victim, os.path.join(path, "1.json.tmp"))
            swapped += 1
        except OSError as exc:
            print("could not swap", path, exc)
print("swapped", swapped)
"""


def test_journal_never_writes_through_a_planted_symlink(s3, seaweed, bucket, mount, shared_dir, open_dir):
    victim = open_dir / "root-owned-file"
    victim.write_bytes(b"precious root data")
    os.chmod(victim, 0o600)
    prepared = run_as(NOBODY, "import os, sys; os.umask(0); os.makedirs(sys.argv[1], 0o777)",
                      str(shared_dir / "s3pyfs-dirty" / old_store_name(seaweed.endpoint, bucket)))
    assert prepared.returncode == 0, prepared.stderr
    m = mount(bucket, f"tmpdir={shared_dir}")
    attack = run_as(NOBODY, SWAP_INSTANCE, str(shared_dir), str(victim))
    assert attack.returncode == 0, attack.stderr
    with open(m.path / "written.txt", "wb") as f:
        f.write(b"hello from root")
        f.flush()
        os.fsync(f.fileno())
    assert "could not swap" in attack.stdout or "swapped 1" in attack.stdout, attack.stdout
    assert victim.read_bytes() == b"precious root data", attack.stdout
    assert object_bytes(s3, bucket, "written.txt") == b"hello from root"


def test_journal_files_are_opened_without_following_symlinks(tmp_path):
    from s3pyfs.journal import Journal
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    instance = tmp_path / "instance"
    instance.mkdir(mode=0o700)
    (instance / "lock").symlink_to(victim)
    with pytest.raises(OSError) as caught:
        Journal(str(instance))
    assert caught.value.errno == errno.ELOOP
    (instance / "lock").unlink()
    journal = Journal(str(instance))
    record = journal.new_record()
    (instance / f"{record.stem}.json.tmp").symlink_to(victim)
    record.save({"key": "k"})
    assert victim.read_bytes() == b"precious"
    assert record.load()["key"] == "k"
    assert not (instance / f"{record.stem}.json").is_symlink()
    record.discard()
    journal.close()
    assert victim.read_bytes() == b"precious"


# ---------------------------------------------------------------------- 3: the first user blocks the rest
def user_mount(seaweed, bucket: str, uid: int, where: Path, *opts: str) -> support.Mount:
    """A mount made by unprivileged `uid` (through fusermount3), with its own passwd file."""
    home = where / f"user-{uid}"
    home.mkdir(mode=0o755)
    mountpoint = home / "mnt"
    mountpoint.mkdir()
    run_dir = home / "run"
    run_dir.mkdir(mode=0o700)
    passwd = home / "passwd"
    passwd.write_text(f"{seaweed.access_key}:{seaweed.secret_key}\n")
    os.chmod(passwd, 0o600)
    for path in (mountpoint, run_dir, passwd):
        os.chown(path, uid, uid)
    cmd = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", sys.executable, "-m", "s3pyfs",
           bucket, str(mountpoint), "-f", "-o",
           ",".join([f"url={seaweed.endpoint}", "use_path_request_style", f"passwd_file={passwd}", *opts])]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "XDG_"))}
    env.update(AWS_EC2_METADATA_DISABLED="true", AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull,
               PYTHONUNBUFFERED="1", S3PYFS_RUN_DIR=str(run_dir), HOME="/nonexistent")
    return support.Mount(mountpoint, cmd, env, home.parent / f"s3pyfs-{uid}.log").start()


@pytest.fixture
def user_mounts():
    mounts: list[support.Mount] = []
    yield mounts
    problems = []
    for m in reversed(mounts):
        problems += m.close()
    assert not problems, "\n\n".join(problems)


def users_may_open_dev_fuse() -> bool:
    return run_as(NOBODY, "import os; os.close(os.open('/dev/fuse', os.O_RDWR))").returncode == 0


def mount_or_reach_the_kernel(m: support.Mount) -> None:
    """Wait until `m` is mounted or, where /dev/fuse is root-only (mode 0600, as on this test
    machine), until it failed at exactly that point: everything before it, the state
    directories included, was done."""
    if users_may_open_dev_fuse():
        m.wait_mounted(30)
        assert m.unmount() == 0
        return
    assert m.proc.wait(60) == 5, m.log_text()
    m.expect_clean_exit = False
    assert "fuse: failed to open /dev/fuse: Permission denied" in m.log_text(), m.log_text()


def test_first_unprivileged_mount_does_not_block_other_users(seaweed, bucket, shared_dir, open_dir, user_mounts):
    first = user_mount(seaweed, bucket, NOBODY, open_dir, f"tmpdir={shared_dir}")
    user_mounts.append(first)
    mount_or_reach_the_kernel(first)
    second = user_mount(seaweed, bucket, OTHER, open_dir, f"tmpdir={shared_dir}")
    user_mounts.append(second)
    mount_or_reach_the_kernel(second)
    owners = {p.name: (p.lstat().st_uid, stat.S_IMODE(p.lstat().st_mode)) for p in shared_dir.iterdir()}
    assert owners == {f"s3pyfs-{NOBODY}": (NOBODY, 0o700), f"s3pyfs-{OTHER}": (OTHER, 0o700)}


# ---------------------------------------------------------------------- 4: readlink of a huge "symlink"
def test_readlink_of_a_huge_symlink_object_fetches_no_body(s3, bucket, mount, tmp_path):
    s3.put_object(Bucket=bucket, Key="small-link", Body=b"some/target",
                  Metadata={"mode": str(stat.S_IFLNK | 0o777)})
    s3.put_object(Bucket=bucket, Key="huge-link", Body=b"x" * (48 * MiB),
                  Metadata={"mode": str(stat.S_IFLNK | 0o777)})
    run_dir = tmp_path / "run"
    m = mount(bucket, env={"S3PYFS_RUN_DIR": str(run_dir)})
    assert os.readlink(m.path / "small-link") == "some/target"
    with pytest.raises(OSError) as caught:
        os.readlink(m.path / "huge-link")
    assert caught.value.errno == errno.ENAMETOOLONG
    done = time.time()
    received = fresh_stats(run_dir, done)["s3"]["received_bytes"]
    assert received < MiB, f"{received} bytes fetched from S3 for two readlinks"


# ---------------------------------------------------------------------- 5: use_cache on an existing directory
def test_cache_files_are_private_even_in_an_existing_open_directory(s3, bucket, mount, open_dir):
    cache = open_dir / "cache"
    (cache / "blocks").mkdir(parents=True, mode=0o755)
    os.chmod(cache / "blocks", 0o755)
    data = os.urandom(3 * MiB + 5)
    s3.put_object(Bucket=bucket, Key="secret.bin", Body=data)
    os.chmod(open_dir, 0o755)
    m = mount(bucket, f"use_cache={cache}")
    assert (m.path / "secret.bin").read_bytes() == data
    assert m.unmount() == 0
    created = [p for p in cache.rglob("*") if p != cache / "blocks"]
    files = [p for p in created if p.is_file()]
    assert sum(p.stat().st_size for p in files) >= len(data), "nothing was cached"
    for p in created:
        mode = stat.S_IMODE(p.lstat().st_mode)
        assert mode == (0o600 if p.is_file() else 0o700), f"{p} has mode {mode:04o}"
    readable = [p for p in files if can_read(NOBODY, p)]
    assert readable == [], f"nobody can read cached object data: {readable}"


# ---------------------------------------------------------------------- 6: use_cache=/tmp
def test_cache_in_a_shared_directory_deletes_nothing_it_did_not_create(s3, bucket, mount, shared_dir, tmp_path):
    planted = run_as(NOBODY, "import os, sys\n"
                     "os.mkdir(sys.argv[1] + '/blocks', 0o755)\n"
                     "open(sys.argv[1] + '/blocks/notes.txt', 'w').write('mine')\n"
                     "os.mkdir(sys.argv[1] + '/dirty', 0o755)\n", str(shared_dir))
    assert planted.returncode == 0, planted.stderr
    data = os.urandom(2 * MiB)
    s3.put_object(Bucket=bucket, Key="f.bin", Body=data)
    run_dir = tmp_path / "run"
    m = mount(bucket, f"use_cache={shared_dir}", env={"S3PYFS_RUN_DIR": str(run_dir)})
    assert (m.path / "f.bin").read_bytes() == data
    assert m.unmount() == 0
    assert (shared_dir / "blocks" / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in (shared_dir / "blocks").iterdir()) == ["notes.txt"]
    assert sorted(p.name for p in (shared_dir / "dirty").iterdir()) == []
    assert sorted(p.name for p in shared_dir.iterdir()) == ["blocks", "dirty", "s3pyfs-0"]
    # the next mount finds and reuses its own cache there
    again = mount(bucket, f"use_cache={shared_dir}", env={"S3PYFS_RUN_DIR": str(run_dir)})
    assert fresh_stats(run_dir, time.time())["disk_cache"]["bytes"] >= len(data)
    assert (again.path / "f.bin").read_bytes() == data
    assert (shared_dir / "blocks" / "notes.txt").read_text() == "mine"


# ---------------------------------------------------------------------- 7: the statistics file
def test_statistics_file_is_private_unless_a_group_is_given(bucket, mount, open_dir):
    run_dir = open_dir / "run"
    run_dir.mkdir(mode=0o755)                       # every user may look in, as in /run/s3pyfs
    m = mount(bucket, env={"S3PYFS_RUN_DIR": str(run_dir)})
    path = Path(fresh_stats(run_dir, 0)["mountpoint"])
    assert path == m.path
    stats = next(run_dir.glob("*.json"))
    assert stat.S_IMODE(stats.stat().st_mode) == 0o600
    assert not can_read(NOBODY, stats)
    status = subprocess.run([sys.executable, "-m", "s3pyfs", "status", str(m.path)], capture_output=True, text=True,
                            timeout=30, env=dict(os.environ, S3PYFS_RUN_DIR=str(run_dir)))
    assert status.returncode == 0, status.stdout + status.stderr
    assert m.unmount() == 0

    m2 = mount(bucket, f"stats_group={NOBODY}", env={"S3PYFS_RUN_DIR": str(run_dir)})
    fresh_stats(run_dir, 0)
    stats = next(run_dir.glob("*.json"))
    st = stats.stat()
    assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o640, NOBODY)
    assert can_read(NOBODY, stats)                  # the monitoring group
    assert not can_read(OTHER, stats)               # anyone else
    assert m2.unmount() == 0


def test_statistics_file_is_never_put_in_a_directory_others_can_write(tmp_path, monkeypatch):
    from s3pyfs import metrics
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    monkeypatch.setenv("S3PYFS_RUN_DIR", str(shared))
    path = metrics.stats_path_for_writing("/mnt/x")
    assert path is None or not path.startswith(str(shared) + os.sep)
    link = tmp_path / "link"
    link.symlink_to(tmp_path)
    monkeypatch.setenv("S3PYFS_RUN_DIR", str(link))
    path = metrics.stats_path_for_writing("/mnt/x")
    assert path is None or not path.startswith(str(link) + os.sep)
