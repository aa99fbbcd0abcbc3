"""Listings and the headers behind them: what `ls -l`, `find` and `du` see, and what they cost.

Core tests drive the Filesystem against moto's S3 server; mounted tests go through FUSE
against SeaweedFS and count the S3 requests with the mount's own metrics endpoint.
"""

from __future__ import annotations

import os
import stat
import subprocess
import time
import urllib.request
import uuid

import boto3
import pytest
import support
import trio

from s3pyfs import metrics
from s3pyfs.concurrency import background_spawner
from s3pyfs.core import Config
from s3pyfs.filesystem import Filesystem
from s3pyfs.inodes import ROOT_INODE
from s3pyfs.metadata import Defaults
from s3pyfs.s3client import ClientSettings, open_client

META = {"mode": str(stat.S_IFREG | 0o600), "uid": "1234", "gid": "55", "mtime": "1700000000"}


def _heads() -> int:
    return sum(n for (op, _outcome), n in metrics.counters.s3_requests.items() if op == "HEAD")


# ---------------------------------------------------------------------------- core (moto)

@pytest.fixture
def moto_bucket(moto_server):
    client = boto3.client("s3", endpoint_url=moto_server.endpoint, aws_access_key_id="test",
                          aws_secret_access_key="test", region_name="us-east-1")
    name = "listing-" + uuid.uuid4().hex[:12]
    client.create_bucket(Bucket=name)
    return client, name


@pytest.mark.trio
async def test_tree_walk_fetches_headers_ahead_of_the_walker(moto_server, moto_bucket, tmp_path):
    """find/du read directory after directory: once a readdir is served from an ancestor's
    recursive listing, the headers of the directories the walk reads next are fetched in
    the background, so their readdirs wait for no HEAD, and the attributes are the
    objects' own (mode, owner from x-amz-meta-*; a small object that is a symlink)."""
    from s3pyfs.credentials import StaticKeys
    s3, bucket = moto_bucket
    for d in "abcd":
        for i in range(8):
            s3.put_object(Bucket=bucket, Key=f"t/{d}/f{i}", Body=b"x" * (10 + i), Metadata=META)
    s3.put_object(Bucket=bucket, Key="t/c/link", Body=b"f1", Metadata={"mode": str(stat.S_IFLNK | 0o777)})
    settings = ClientSettings(bucket=bucket, endpoint_url=moto_server.endpoint, path_style=True,
                              static_keys=StaticKeys("test", "test"), retries=2, request_timeout=30)
    async with open_client(settings) as client, trio.open_nursery() as nursery:
        fs = Filesystem(client, Config(defaults=Defaults(uid=1000, gid=1000), staging_dir=str(tmp_path),
                                       stat_ttl=60, negative_ttl=1))
        fs.spawn = background_spawner(nursery)

        async def readdir(directory) -> dict:
            """What the kernel does: every entry handed out is looked up (READDIRPLUS)."""
            handle = await fs.opendir(directory.ino)
            entries = dict(await fs.readdir(handle.fh))
            for node in entries.values():
                fs.entry_handed_out(handle.fh, node)
                fs.count_lookup(node)
            await fs.releasedir(handle.fh)
            return entries

        t = await fs.lookup(ROOT_INODE, "t")
        top = await readdir(t)                        # starts the recursive listing of t/
        assert sorted(top) == ["a", "b", "c", "d"]
        with trio.fail_after(30):             # the recursive listing, and the directories'
            while fs.core._tree_listings or fs.core._resolving or \
                    not all(fs.fresh(top[d]) for d in "abcd"):      # marker HEADs (background)
                await trio.sleep(0.02)
        first = _heads()
        assert len(await readdir(top["a"])) == 8      # served from the recursive listing: a walk
        with trio.fail_after(30):                     # b, c, d: 8 + 9 + 8 HEADs in the background
            while _heads() - first < 8 + 25:
                await trio.sleep(0.02)
        await trio.sleep(0.2)
        settled = _heads()
        seen = {d: await readdir(top[d]) for d in "bcd"}
        assert _heads() == settled                    # nothing left to fetch for the walker
        assert settled - first == 8 + 25              # one HEAD per object, none twice
        for d in "bcd":
            for i in range(8):
                a = seen[d][f"f{i}"].attrs
                assert (stat.S_IMODE(a.mode), a.uid, a.gid, a.size) == (0o600, 1234, 55, 10 + i)
        assert seen["c"]["link"].attrs.is_symlink()
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------------------- mounted

def scrape(port: int) -> dict[str, float]:
    """{operation: requests} of the mount's S3 request counter, and "inodes": the inodes
    the mount holds for the kernel."""
    from prometheus_client.parser import text_string_to_metric_families
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    found: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "s3pyfs_s3_requests_total":
                found[s.labels["operation"]] = found.get(s.labels["operation"], 0) + s.value
            if s.name == "s3pyfs_inodes":
                found["inodes"] = s.value
    return found


def delta(after: dict, before: dict, op: str) -> float:
    return after.get(op, 0) - before.get(op, 0)


def ls_l(path) -> dict[str, list[str]]:
    out = subprocess.run(["ls", "-ln", "--time-style=+%s", str(path)], capture_output=True, text=True,
                         check=True, timeout=120).stdout
    rows = {}
    for line in out.splitlines()[1:]:
        fields = line.split()
        rows[fields[6]] = fields
    return rows


@pytest.mark.mounted
def test_ls_l_shows_s3fs_metadata_with_bounded_requests(s3, bucket, mount):
    n = 300
    for i in range(n):
        s3.put_object(Bucket=bucket, Key=f"d/f{i:04d}", Body=b"y" * 64, Metadata=META)
    s3.put_object(Bucket=bucket, Key="d/big", Body=b"z" * 10_000,
                  Metadata={"mode": str(stat.S_IFREG | 0o640), "uid": "77", "gid": "78", "mtime": "1600000000"})
    s3.put_object(Bucket=bucket, Key="d/link", Body=b"f0001", Metadata={"mode": str(stat.S_IFLNK | 0o777)})
    s3.put_object(Bucket=bucket, Key="d/pipe", Body=b"", Metadata={"mode": str(stat.S_IFIFO | 0o644)})
    port = support.free_ports(1)[0]
    m = mount(bucket, f"metrics=127.0.0.1:{port}", "stat_cache_expire=60")
    before = scrape(port)
    rows = ls_l(m.path / "d")
    after = scrape(port)
    assert len(rows) == n + 3
    for i in range(n):
        assert rows[f"f{i:04d}"][:6] == ["-rw-------", "1", "1234", "55", "64", "1700000000"]
    assert rows["big"][:6] == ["-rw-r-----", "1", "77", "78", "10000", "1600000000"]
    assert rows["link"][0] == "lrwxrwxrwx" and rows["link"][-1] == "f0001"
    assert rows["pipe"][0] == "prw-r--r--"
    # one HEAD per object (their headers hold mode and owner), a few for the mount point and d
    assert delta(after, before, "HEAD") <= n + 3 + 5
    assert delta(after, before, "LIST") <= 4
    assert delta(after, before, "GET") <= 1                 # the link's target
    held = scrape(port)
    again = ls_l(m.path / "d")
    assert again == rows
    if held["inodes"] >= n + 3:
        assert delta(scrape(port), held, "HEAD") == 0       # within stat_cache_expire: no request
    else:
        # the kernel forgot the inodes meanwhile (memory pressure, or drop_caches by another
        # program on this machine): their attributes went with them, so they are fetched again
        assert delta(scrape(port), held, "HEAD") <= n + 3


@pytest.mark.mounted
def test_listing_is_not_used_past_stat_cache_expire(s3, bucket, mount):
    for i in range(5):
        s3.put_object(Bucket=bucket, Key=f"d/f{i}", Body=b"v1", Metadata=META)
    m = mount(bucket, "stat_cache_expire=2", "negative_cache_expire=1")
    first = ls_l(m.path / "d")
    assert sorted(first) == [f"f{i}" for i in range(5)] and first["f1"][0] == "-rw-------"
    # another client: a new name, a removed one, a rewrite with other metadata
    s3.put_object(Bucket=bucket, Key="d/new", Body=b"hello", Metadata=META)
    s3.delete_object(Bucket=bucket, Key="d/f0")
    s3.put_object(Bucket=bucket, Key="d/f1", Body=b"version 2",
                  Metadata={**META, "mode": str(stat.S_IFREG | 0o644), "uid": "999"})
    time.sleep(2.5)                                          # past stat_cache_expire (lower bound)
    second = ls_l(m.path / "d")
    assert sorted(second) == ["f1", "f2", "f3", "f4", "new"]
    assert second["f1"][:5] == ["-rw-r--r--", "1", "999", "55", "9"]
    assert second["new"][4] == "5"
    assert not os.path.exists(m.path / "d" / "f0")


@pytest.mark.mounted
def test_find_and_du_walk_a_tree_once(s3, bucket, mount):
    """A walk sees every name with its true type and size; the headers fetched ahead of it
    are fetched once per object (no HEAD twice)."""
    files = {}
    for d in ("a", "a/x", "a/y", "b", "c", "c/z"):
        for i in range(6):
            key = f"tree/{d}/f{i}"
            files[key] = 100 * (i + 1)
            s3.put_object(Bucket=bucket, Key=key, Body=b"q" * files[key], Metadata=META)
    s3.put_object(Bucket=bucket, Key="tree/b/link", Body=b"f1", Metadata={"mode": str(stat.S_IFLNK | 0o777)})
    port = support.free_ports(1)[0]
    m = mount(bucket, f"metrics=127.0.0.1:{port}", "stat_cache_expire=60")
    before = scrape(port)
    found = subprocess.run(["find", str(m.path / "tree"), "-printf", "%y %s %P\n"], capture_output=True,
                           text=True, check=True, timeout=120).stdout.splitlines()
    after = scrape(port)
    want = {f"f {size} {key[len('tree/'):]}" for key, size in files.items()}
    want |= {f"d 0 {d}" for d in ("a", "a/x", "a/y", "b", "c", "c/z")} | {"l 2 b/link"}
    got = {line for line in found if line.split(" ", 2)[2]}      # the root line has an empty path
    # directory sizes are the mounter's choice: compare types and names for them
    assert {g for g in got if not g.startswith("d ")} == {w for w in want if not w.startswith("d ")}
    assert {g.split(" ")[2] for g in got if g.startswith("d ")} == {"a", "a/x", "a/y", "b", "c", "c/z"}
    objects = len(files) + 1
    assert delta(after, before, "HEAD") <= objects + 6 + 3       # files, markers/dirs, tree itself
    du = subprocess.run(["du", "-s", "--apparent-size", "-B1", str(m.path / "tree")], capture_output=True,
                        text=True, check=True, timeout=120).stdout.split()[0]
    dir_sizes = sum(os.stat(m.path / "tree" / d).st_size for d in ("a", "a/x", "a/y", "b", "c", "c/z")) + \
        os.stat(m.path / "tree").st_size
    assert int(du) == sum(files.values()) + 2 + dir_sizes


# ---------------------------------------------------------------------------- 200 bodies

def _op(name: str):
    client = boto3.client("s3", endpoint_url="http://127.0.0.1:9", aws_access_key_id="a",
                          aws_secret_access_key="b", region_name="us-east-1")
    return client.meta.service_model.operation_model(name)


@pytest.mark.parametrize("body, status", [
    (b'<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult><Name>b</Name></ListBucketResult>\n', 200),
    (b'<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult><Name>b</Name><Contents><Key>a', 500),
    (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InternalError</Code></Error>', 500),
    (b"", 500),
])
def test_listing_cut_short_or_an_error_document_is_a_500(body, status):
    """A listing's body is judged by its closing tag (no second XML parse): complete ->
    kept; cut short in transit or an <Error> document -> 500, which botocore retries."""
    from s3pyfs.s3client import check_200_body
    response = {"status_code": 200, "body": body, "headers": {}}
    check_200_body(_op("ListObjectsV2"), response)
    assert response["status_code"] == status


def test_other_operations_keep_botocores_200_error_check():
    from s3pyfs.s3client import check_200_body
    response = {"status_code": 200, "headers": {},
                "body": b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code></Error>'}
    check_200_body(_op("CopyObject"), response)
    assert response["status_code"] == 500
    fine = {"status_code": 200, "headers": {}, "body": b"<CopyObjectResult><ETag>x</ETag></CopyObjectResult>"}
    check_200_body(_op("CopyObject"), fine)
    assert fine["status_code"] == 200
