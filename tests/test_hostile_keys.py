"""Object keys no file system would create, put into the bucket by other S3 tools.

Responsibility: a mount over such keys never crashes, never shows a name that
cannot be a path component ('', '.', '..', anything with '/'), never lets a
path through the mount resolve outside it, never makes the disk cache
(`use_cache=DIR`) write outside DIR, and keeps ordinary files beside them
fully usable (read, write, rename, delete, copy out with cp -r).

SeaweedFS refuses keys with '.'/'..' segments and components over 255 bytes
and folds '//', a leading '/' and '\\' into plain '/'; moto stores every key
as given, so the keys SeaweedFS refuses are mounted from moto's server.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
import support

pytestmark = pytest.mark.mounted

# Keys SeaweedFS stores (some of them folded) and the mount must survive.
SEAWEED_KEYS = {
    "ctl\x01char": b"control character",
    "del\x7fchar": b"DEL character",
    "new\nline": b"newline in the name",
    "tab\tname": b"tab in the name",
    "pct%00null": b"an escaped NUL that is just text",
    "pct%2F..%2Fslash": b"escaped slashes that are just text",
    "sp ace ": b"trailing space",
    " lead": b"leading space",
    "rtl\u202eevil.txt": b"right-to-left override",
    "/etc/passwd": b"not the host's passwd",         # SeaweedFS stores etc/passwd
    "//double": b"double slash at the start",        # SeaweedFS stores double
    "back\\slash": b"backslash",                      # SeaweedFS stores back/slash
    "x": b"file named like a directory",
    "x/y": b"file below the directory x",
}

# Keys only moto keeps as written.
MOTO_KEYS = {
    "..": b"dot-dot object",
    ".": b"dot object",
    "../up": b"above the bucket",
    "./here": b"dot directory",
    "a/../b": b"dot-dot in the middle",
    "a/./c": b"dot in the middle",
    "a/..": b"ends in dot-dot",
    "a/b/../../../escape": b"climbs out three levels",
    "/etc/passwd": b"leading slash",
    "//double": b"two leading slashes",
    "d//e": b"double slash in the middle",
    "trail/": b"a trailing-slash object with a body",
    "nul\x00byte": b"NUL in the key",
    "k" * 300: b"component longer than 255 bytes",
    "deep/" + "q" * 1019: b"key of 1024 bytes",  # 5 + 1019
    "x": b"file named like a directory",
    "x/y": b"file below the directory x",
    "plain.txt": b"an ordinary file",
    "dir/ordinary": b"an ordinary file in a directory",
}

# Keys around a mount prefix `pre/` (moto).
PREFIX_KEYS = {
    "pre": b"key equal to the prefix without slash",
    "pre/": b"key equal to the prefix, with a body",
    "pre/..": b"dot-dot right below the prefix",
    "pre/../../out": b"tries to climb out of the prefix",
    "pre/../sibling": b"tries to reach a sibling of the prefix",
    "pre//x": b"empty component below the prefix",
    "pre/./y": b"dot component below the prefix",
    "prefix-sibling": b"shares the prefix's letters, not its directory",
    "outside": b"outside the prefix",
    "pre/inside": b"an ordinary file under the prefix",
}


def _bad_name(name: str) -> bool:
    return name in ("", ".", "..") or "/" in name or "\0" in name


def check_tree(root: Path) -> dict[str, bytes]:
    """Walk the mount: every name is a path component, every path stays inside,
    every file reads; returns {relative path: content}."""
    root_real = os.path.realpath(root)
    contents: dict[str, bytes] = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            assert not _bad_name(name), f"listed name {name!r} in {directory}"
            path = os.path.join(directory, name)
            real = os.path.realpath(path)
            assert real == root_real or real.startswith(root_real + os.sep), (path, real)
            st = os.lstat(path)
            assert st.st_ino != 0
        for name in files:
            path = os.path.join(directory, name)
            with open(path, "rb") as fh:
                contents[os.path.relpath(path, root)] = fh.read()
    return contents


def run_ok(*cmd: str, cwd=None) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, timeout=120)
    assert result.returncode == 0, (cmd, result.stderr.decode(errors="replace"))
    return result


def tools_agree(root: Path, expected_files: int) -> None:
    """ls -laR, find, stat, du and cat over the whole mount succeed and see the same files."""
    run_ok("ls", "-laR", str(root))
    found = run_ok("find", str(root), "-type", "f", "-print0").stdout.split(b"\0")
    found = [f for f in found if f]
    assert len(found) == expected_files
    run_ok("stat", *[f.decode(errors="surrogateescape") for f in found])
    run_ok("du", "-a", str(root))
    for f in found:
        run_ok("cat", f.decode(errors="surrogateescape"))


def assert_outside_unreachable(root: Path) -> None:
    """Names that would climb out of the mount stay inside it."""
    assert os.path.realpath(root / "..") == os.path.realpath(root.parent)
    assert sorted(os.listdir(root / ".")) == sorted(os.listdir(root))
    # `..` from the root of the mount is the mount point's parent (the kernel's), and
    # no file of the bucket appears there
    assert not (root.parent / "up").exists() and not (root.parent / "escape").exists()
    assert not (root / "etc" / "passwd").exists() or \
        (root / "etc" / "passwd").read_bytes() != Path("/etc/passwd").read_bytes()


def moto_mount(moto_server, bucket: str, workdir: Path, *opts: str, prefix: str | None = None) -> support.Mount:
    workdir.mkdir(parents=True, exist_ok=True)
    passwd = workdir / "passwd"
    fd = os.open(passwd, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write("testing:testing\n")
    source = bucket if prefix is None else f"{bucket}:/{prefix}"
    options = [f"url={moto_server.endpoint}", "use_path_request_style", f"passwd_file={passwd}", *opts]
    point = Path(os.path.realpath(workdir / "mnt"))
    cmd = [sys.executable, "-m", "s3pyfs", source, str(point), "-f", "-o", ",".join(options)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_EC2_METADATA_DISABLED="true", AWS_CONFIG_FILE=os.devnull,
               AWS_SHARED_CREDENTIALS_FILE=os.devnull, PYTHONUNBUFFERED="1")
    m = support.Mount(point, cmd, env, workdir / "s3pyfs.log").start()
    m.wait_mounted(30)
    return m


@pytest.fixture
def moto_mounts(fuse_ready):
    """Factory like `mount`, for moto's server; teardown fails on crashes and tracebacks."""
    started: list[support.Mount] = []

    def _start(*args, **kwargs) -> support.Mount:
        m = moto_mount(*args, **kwargs)
        started.append(m)
        return m

    yield _start
    problems = []
    for m in reversed(started):
        problems += m.close()
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


@pytest.fixture
def moto_bucket(moto_server):
    import uuid
    client = moto_server.client()
    name = "hostile-" + uuid.uuid4().hex[:12]
    client.create_bucket(Bucket=name)
    return client, name


def put_all(client, bucket: str, keys: dict[str, bytes]) -> None:
    for key, body in keys.items():
        client.put_object(Bucket=bucket, Key=key, Body=body)


def keys_and_bodies(client, bucket: str) -> dict[str, bytes]:
    found = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            found[obj["Key"]] = client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
    return found


def assert_inside(directory: Path) -> list[str]:
    """Every path below `directory` resolves inside it; returns the relative paths."""
    top = os.path.realpath(directory)
    seen = []
    for parent, dirs, files in os.walk(directory):
        for name in dirs + files:
            real = os.path.realpath(os.path.join(parent, name))
            assert real.startswith(top + os.sep), real
            seen.append(os.path.relpath(real, top))
    return seen


# ----------------------------------------------------------------------------- moto: keys as written
MOTO_VISIBLE_FILES = {
    "k" * 300: b"component longer than 255 bytes",
    "deep/" + "q" * 1019: b"key of 1024 bytes",
    "x/y": b"file below the directory x",
    "plain.txt": b"an ordinary file",
    "dir/ordinary": b"an ordinary file in a directory",
}


def test_unusable_names_are_hidden_and_nothing_resolves_outside(moto_server, moto_bucket, moto_mounts, tmp_path):
    client, bucket = moto_bucket
    put_all(client, bucket, MOTO_KEYS)
    cache = tmp_path / "cache"
    m = moto_mounts(moto_server, bucket, tmp_path / "m", f"use_cache={cache}")
    before_outside = set(os.listdir(tmp_path))

    # names: only path components; '.', '..', '', '/' and NUL keys are not shown
    assert sorted(os.listdir(m.path)) == sorted(["a", "d", "deep", "dir", "k" * 300, "plain.txt", "trail", "x"])
    assert check_tree(m.path) == MOTO_VISIBLE_FILES
    tools_agree(m.path, expected_files=len(MOTO_VISIBLE_FILES))
    assert_outside_unreachable(m.path)
    # a directory whose only keys are unusable shows empty (its keys stay in the bucket)
    assert os.listdir(m.path / "a") == ["b"] and os.listdir(m.path / "a" / "b") == []
    assert os.listdir(m.path / "d") == []
    # a trailing-slash object with a body is a directory marker: the directory shows
    assert os.path.isdir(m.path / "trail") and os.listdir(m.path / "trail") == []
    # names and lookups of unusable keys fail as for any missing name
    for name in ("nul", "up", "here", "etc", "double"):
        assert not (m.path / name).exists()
    # the file `x` and the directory `x/`: the directory wins, its files stay reachable
    assert os.path.isdir(m.path / "x")
    with pytest.raises(IsADirectoryError):
        (m.path / "x").read_bytes()

    # the disk cache stored blocks of every file read, all inside DIR
    cached = assert_inside(cache)
    assert any(name.endswith(".blk") for name in cached)
    assert set(os.listdir(tmp_path)) == before_outside
    # read again from the cache: same bytes
    assert check_tree(m.path) == MOTO_VISIBLE_FILES

    # cp -r out of the mount copies what is shown (the 300-byte name cannot exist on
    # the local disk, so it is left out here)
    out = tmp_path / "copy"
    out.mkdir()
    run_ok("cp", "-r", str(m.path / "dir"), str(m.path / "x"), str(m.path / "a"),
           str(m.path / "plain.txt"), str(out))
    assert (out / "dir" / "ordinary").read_bytes() == MOTO_KEYS["dir/ordinary"]
    assert (out / "x" / "y").read_bytes() == MOTO_KEYS["x/y"]
    assert assert_inside(out) and not (tmp_path / "b").exists() and not (tmp_path / "escape").exists()

    # ordinary files beside stay fully usable
    (m.path / "new.txt").write_bytes(b"written beside")
    os.rename(m.path / "new.txt", m.path / "dir" / "moved.txt")
    (m.path / "plain.txt").unlink()
    stored = keys_and_bodies(client, bucket)
    assert stored["dir/moved.txt"] == b"written beside" and "plain.txt" not in stored
    # and nothing hidden was touched
    for key, body in MOTO_KEYS.items():
        if key != "plain.txt":
            assert stored[key] == body, key


def test_rmdir_and_rm_rf_never_delete_hidden_data(moto_server, moto_bucket, moto_mounts, tmp_path):
    """rmdir deletes `dir/`, `dir` and `dir_$folder$`: a directory that hides data under
    those keys, or keys below it that cannot be shown, is not empty (ENOTEMPTY)."""
    client, bucket = moto_bucket
    put_all(client, bucket, MOTO_KEYS)
    m = moto_mounts(moto_server, bucket, tmp_path / "m")
    (m.path / "x" / "y").unlink()
    for name in ("x", "trail", "d", "a/b", "a"):
        with pytest.raises(OSError) as info:
            os.rmdir(m.path / name)
        assert info.value.errno == errno.ENOTEMPTY, name
    result = subprocess.run(["rm", "-rf", str(m.path / "a"), str(m.path / "d")], capture_output=True, text=True)
    assert result.returncode != 0 and "Directory not empty" in result.stderr
    stored = keys_and_bodies(client, bucket)
    for key, body in MOTO_KEYS.items():
        if key != "x/y":
            assert stored.get(key) == body, key
    # an ordinary empty directory still goes
    (m.path / "dir" / "ordinary").unlink()
    os.rmdir(m.path / "dir")
    assert not any(k.startswith("dir") for k in keys_and_bodies(client, bucket))


def test_directory_rename_carries_unusable_keys_and_touches_nothing_outside(moto_server, moto_bucket,
                                                                            moto_mounts, tmp_path):
    client, bucket = moto_bucket
    keys = {"a/../b": b"dot-dot inside a", "b": b"the real b", "a/f": b"f", "a/./g": b"dot g",
            "g": b"the real g", "a/.": b"a dot", "a/..": b"a dot-dot", "a//h": b"empty segment"}
    put_all(client, bucket, keys)
    m = moto_mounts(moto_server, bucket, tmp_path / "m")
    os.rename(m.path / "a", m.path / "z")
    assert os.listdir(m.path / "z") == ["f"] and not (m.path / "a").exists()
    stored = keys_and_bodies(client, bucket)
    expected = {("z" + k[1:] if k.startswith("a/") else k): v for k, v in keys.items()}
    expected["z/"] = b""
    assert stored == expected


def test_prefix_mount_shows_only_keys_below_the_prefix(moto_server, moto_bucket, moto_mounts, tmp_path):
    client, bucket = moto_bucket
    put_all(client, bucket, PREFIX_KEYS)
    cache = tmp_path / "cache"
    m = moto_mounts(moto_server, bucket, tmp_path / "m", f"use_cache={cache}", prefix="pre")
    assert os.listdir(m.path) == ["inside"]
    assert check_tree(m.path) == {"inside": b"an ordinary file under the prefix"}
    tools_agree(m.path, expected_files=1)
    for name in ("..", "out", "sibling", "x", "y", "outside", "prefix-sibling"):
        assert os.path.realpath(m.path / name).startswith(str(m.path.parent))
        assert name == ".." or not (m.path / name).exists(), name
    assert_inside(cache)
    (m.path / "new").write_bytes(b"new under the prefix")
    (m.path / "inside").unlink()
    stored = keys_and_bodies(client, bucket)
    assert stored["pre/new"] == b"new under the prefix" and "pre/inside" not in stored
    for key, body in PREFIX_KEYS.items():
        if key != "pre/inside":
            assert stored[key] == body, key


# ----------------------------------------------------------------------------- SeaweedFS
def test_awkward_keys_on_seaweedfs(s3, bucket, mount, tmp_path):
    put_all(s3, bucket, SEAWEED_KEYS)
    stored = keys_and_bodies(s3, bucket)
    cache = tmp_path / "cache"
    m = mount(bucket, f"use_cache={cache}")
    files = check_tree(m.path)
    # every object SeaweedFS holds is a file of the mount, under the name it stored
    visible_objects = {k: v for k, v in stored.items() if not k.endswith("/") and k != "x"}
    assert files == visible_objects
    tools_agree(m.path, expected_files=len(visible_objects))
    assert_outside_unreachable(m.path)
    assert assert_inside(cache)
    out = tmp_path / "copy"
    run_ok("cp", "-r", str(m.path), str(out))
    assert check_tree(out) == visible_objects
    # rename and delete names with control characters, newline, escapes
    os.rename(m.path / "new\nline", m.path / "tab\tname2")
    (m.path / "ctl\x01char").unlink()
    with open(m.path / "pct%2F..%2Fslash", "ab") as fh:
        fh.write(b", appended")
    (m.path / "del\x7fmade").write_bytes(b"created through the mount")
    after = keys_and_bodies(s3, bucket)
    assert after["tab\tname2"] == SEAWEED_KEYS["new\nline"] and "new\nline" not in after
    assert "ctl\x01char" not in after
    assert after["pct%2F..%2Fslash"] == SEAWEED_KEYS["pct%2F..%2Fslash"] + b", appended"
    assert after["del\x7fmade"] == b"created through the mount"
    assert after["etc/passwd"] == SEAWEED_KEYS["/etc/passwd"]


def test_disk_cache_block_files_stay_in_their_directory_whatever_the_key(tmp_path):
    from s3pyfs.disk_cache import DiskCache
    cache_dir = tmp_path / "deep" / "cache"
    cache = DiskCache(str(cache_dir), "../../bucket", min_free=0)
    keys = ["../../../../escape", "/etc/passwd", "a/../../b", "..", "nul\x00", "\udcff-surrogate", "k" * 1024]
    for key in keys:
        cache.put(key, "../etag", 0, 0, b"block of " + key.encode("utf-8", "surrogateescape")[:20])
    assert sorted(os.listdir(tmp_path)) == ["deep"] and os.listdir(tmp_path / "deep") == ["cache"]
    stored = assert_inside(cache_dir)
    assert len([p for p in stored if p.endswith(".blk")]) == len(keys)
    for key in keys:
        assert cache.get(key, "../etag", 0, 0, 9 + len(key.encode("utf-8", "surrogateescape")[:20])) is not None
