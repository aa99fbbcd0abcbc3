"""Docker volume plugin (deploy/docker-volume-plugin) end to end over a real unix socket.

The requests are the ones dockerd (and Cloud Foundry's volman) sends: HTTP/1.1 POSTs with a
JSON body on the plugin's socket.  Mounts are real s3pyfs mounts against SeaweedFS.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import stat
import subprocess
import sys

import pytest
import support
from deploy_support import DEPLOY, S3PYFS_BIN, clean_env, fstype, s3pyfs_pids_for, wait_for

pytestmark = pytest.mark.mounted

PLUGIN = DEPLOY / "docker-volume-plugin" / "s3pyfs-volume-plugin"
MEDIA_TYPE = "application/vnd.docker.plugins.v1.2+json"


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str):
        super().__init__("localhost", timeout=120)
        self.socket_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.socket_path)


class Plugin:
    def __init__(self, tmp_path):
        self.socket = str(tmp_path / "plugins" / "s3pyfs.sock")
        self.state_dir = tmp_path / "state"
        self.log = tmp_path / "plugin.log"
        self.proc: subprocess.Popen | None = None
        self.conn: UnixHTTPConnection | None = None

    def start(self):
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(PLUGIN), "--socket", self.socket, "--state-dir", str(self.state_dir)],
                env=clean_env(S3PYFS_BIN=S3PYFS_BIN), stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(lambda: os.path.exists(self.socket), 60, "plugin socket", self.proc, self.log)
        self.conn = UnixHTTPConnection(self.socket)      # one keep-alive connection, like dockerd
        return self

    def stop(self):
        if self.conn:
            self.conn.close()
        code = support.stop_process(self.proc, grace=10)
        assert code == 0, support.tail(self.log)
        assert not os.path.exists(self.socket)

    def __call__(self, endpoint: str, body: dict | None = None) -> dict:
        self.conn.request("POST", endpoint, body=json.dumps(body or {}),
                          headers={"Accept": MEDIA_TYPE, "Content-Type": MEDIA_TYPE})
        response = self.conn.getresponse()
        data = response.read()
        assert response.status == 200, (endpoint, response.status, data)
        assert response.getheader("Content-Type") == MEDIA_TYPE
        return json.loads(data)


@pytest.fixture
def plugin(tmp_path, fuse_ready):
    p = Plugin(tmp_path).start()
    yield p
    if p.proc.poll() is None:
        support.stop_process(p.proc)
    for entry in support.mountinfo():
        if entry["mountpoint"].startswith(str(tmp_path) + os.sep):
            support.force_unmount(entry["mountpoint"])


def mount_config(seaweed, bucket, **extra):
    """What s3-volume-release's broker puts in a binding's mount_config (JSON types)."""
    config = {"bucket": bucket, "endpoint": seaweed.endpoint, "region": "us-east-1",
              "access_key_id": seaweed.access_key, "secret_access_key": seaweed.secret_key,
              "subdomain": False, "acl": "private", "storage_class": "STANDARD",
              "use_sse": False, "use_kms": False, "kms_key_id": "",
              "mount_options": {"uid": "1000", "gid": "1000", "allow_other": ""}}
    config.update(extra)
    return config


def test_protocol_basics_and_create_validation(plugin, seaweed, bucket):
    assert plugin("/Plugin.Activate") == {"Implements": ["VolumeDriver"]}
    assert plugin("/VolumeDriver.Capabilities") == {"Capabilities": {"Scope": "local"}}
    assert plugin("/VolumeDriver.List") == {"Volumes": [], "Err": ""}

    def create_err(**opts):
        return plugin("/VolumeDriver.Create", {"Name": "v", "Opts": opts})["Err"]

    config = mount_config(seaweed, bucket)
    for field in ("bucket", "access_key_id", "secret_access_key"):
        partial = {k: v for k, v in config.items() if k != field}
        assert create_err(**partial) == f"Missing mandatory '{field}' field in 'Opts'"
    assert "use_kms" in create_err(**{**config, "kms_key_id": "arn:aws:kms:k"})
    assert "'bukket'" in create_err(**{**config, "bukket": "x"})
    assert "subdomain" in create_err(**{**config, "subdomain": "maybe"})
    assert "passwd_file" in create_err(**{**config, "mount_options": "passwd_file=/etc/x"})
    # Write settings become s3pyfs options (kept in the state file for the mount).
    for extra, expected in [
            ({"use_sse": True}, ["default_acl=private", "storage_class=STANDARD", "use_sse=1"]),
            ({"use_sse": "true", "use_kms": "true", "kms_key_id": "arn:aws:kms:eu-west-3:1:key/k"},
             ["default_acl=private", "storage_class=STANDARD", "use_sse=kmsid:arn:aws:kms:eu-west-3:1:key/k"]),
            ({"use_kms": True, "acl": "", "storage_class": "standard_ia"},
             ["storage_class=standard_ia", "use_sse=kmsid"])]:
        assert create_err(**{**config, **extra}) == ""
        state = json.loads((plugin.state_dir / "state.json").read_text())
        assert state["volumes"]["v"]["opts"]["write_options"] == expected
    assert plugin("/VolumeDriver.Remove", {"Name": "v"}) == {"Err": ""}
    assert "invalid volume name" in plugin("/VolumeDriver.Create", {"Name": "../etc", "Opts": config})["Err"]
    assert plugin("/VolumeDriver.List")["Volumes"] == []
    assert plugin("/VolumeDriver.Mount", {"Name": "nope", "ID": "c1"})["Err"] == "volume nope not found"
    assert plugin("/VolumeDriver.Get", {"Name": "nope"})["Err"] == "volume nope not found"
    plugin.conn.request("POST", "/VolumeDriver.Bogus", body="{}")
    response = plugin.conn.getresponse()
    assert response.status == 404 and "Err" in json.loads(response.read())


def test_refcounted_mounts_survive_plugin_restart(plugin, seaweed, s3, bucket, tmp_path):
    # Docker-CLI style options: every value a string, mount_options an -o string.
    assert plugin("/VolumeDriver.Create", {"Name": "photos", "Opts": {
        "bucket": bucket, "endpoint": seaweed.endpoint, "access_key_id": seaweed.access_key,
        "secret_access_key": seaweed.secret_key, "subdomain": "false", "use_sse": "false",
        "prefix": "/shared/", "mount_options": "uid=1000,gid=1000"}}) == {"Err": ""}
    state_file = plugin.state_dir / "state.json"
    assert stat.S_IMODE(state_file.stat().st_mode) == 0o600
    listed = plugin("/VolumeDriver.List")
    assert listed["Err"] == "" and [(v["Name"], v["Mountpoint"]) for v in listed["Volumes"]] == [("photos", "")]
    assert plugin("/VolumeDriver.Path", {"Name": "photos"}) == {"Mountpoint": "", "Err": ""}

    first = plugin("/VolumeDriver.Mount", {"Name": "photos", "ID": "container-a"})
    assert first["Err"] == ""
    point = first["Mountpoint"]
    assert fstype(point) == support.FSTYPE
    daemons = s3pyfs_pids_for(point)
    assert len(daemons) == 1
    cmdline = open(f"/proc/{daemons[0]}/cmdline", "rb").read().decode(errors="replace")
    assert seaweed.secret_key not in cmdline
    assert os.listdir(plugin.state_dir / "run") == []            # passwd file gone after mount
    with open(os.path.join(point, "a.txt"), "w") as fh:
        fh.write("from container a")
    assert s3().get_object(Bucket=bucket, Key="shared/a.txt")["Body"].read() == b"from container a"
    assert os.stat(os.path.join(point, "a.txt")).st_uid == 1000

    second = plugin("/VolumeDriver.Mount", {"Name": "photos", "ID": "container-b"})
    assert second == {"Mountpoint": point, "Err": ""}
    assert s3pyfs_pids_for(point) == daemons                      # one mount for both callers
    assert plugin("/VolumeDriver.Path", {"Name": "photos"}) == {"Mountpoint": point, "Err": ""}
    status = plugin("/VolumeDriver.Get", {"Name": "photos"})["Volume"]["Status"]
    assert status["mounted"] is True and status["callers"] == 2 and status["prefix"] == "shared"
    assert "in use" in plugin("/VolumeDriver.Remove", {"Name": "photos"})["Err"]

    # Restart 1: the plugin stops (mounts stay), comes back with the same state.
    plugin.stop()
    assert fstype(point) == support.FSTYPE and s3pyfs_pids_for(point) == daemons
    plugin.start()
    assert plugin("/VolumeDriver.Get", {"Name": "photos"})["Volume"]["Status"]["callers"] == 2

    # Restart 2: s3pyfs died while the plugin was down; the plugin mounts the volume again.
    plugin.stop()
    os.kill(daemons[0], signal.SIGKILL)
    wait_for(lambda: not s3pyfs_pids_for(point), 10, "s3pyfs killed")
    plugin.start()
    wait_for(lambda: plugin("/VolumeDriver.Get", {"Name": "photos"})["Volume"]["Status"]["mounted"], 30,
             "remounted after restart", plugin.proc, plugin.log)
    wait_for(lambda: len(s3pyfs_pids_for(point)) == 1, 10, "one daemon after the remount")
    with open(os.path.join(point, "a.txt")) as fh:
        assert fh.read() == "from container a"

    # Last caller out unmounts; unknown callers and repeats are harmless.
    assert plugin("/VolumeDriver.Unmount", {"Name": "photos", "ID": "container-a"}) == {"Err": ""}
    assert fstype(point) == support.FSTYPE
    assert plugin("/VolumeDriver.Unmount", {"Name": "photos", "ID": "container-a"}) == {"Err": ""}
    assert fstype(point) == support.FSTYPE
    assert plugin("/VolumeDriver.Unmount", {"Name": "photos", "ID": "container-b"}) == {"Err": ""}
    assert fstype(point) is None and s3pyfs_pids_for(point) == []
    assert plugin("/VolumeDriver.Path", {"Name": "photos"}) == {"Mountpoint": "", "Err": ""}

    assert plugin("/VolumeDriver.Remove", {"Name": "photos"}) == {"Err": ""}
    assert plugin("/VolumeDriver.List")["Volumes"] == []
    assert json.loads(state_file.read_text())["volumes"] == {}
    assert not os.path.exists(point)
    plugin.stop()
    assert "Traceback" not in plugin.log.read_text()


def test_mount_failure_is_a_clear_err_and_leaves_nothing(plugin, seaweed, s3, bucket):
    wrong = "not-the-secret-" + "w" * 16
    assert plugin("/VolumeDriver.Create", {"Name": "bad", "Opts": mount_config(
        seaweed, bucket, secret_access_key=wrong)}) == {"Err": ""}
    answer = plugin("/VolumeDriver.Mount", {"Name": "bad", "ID": "c1"})
    assert "exit code 3" in answer["Err"] and "credentials" in answer["Err"], answer
    assert wrong not in answer["Err"]
    point = os.path.join(plugin.state_dir, "mounts", "bad")
    assert fstype(point) is None
    assert plugin("/VolumeDriver.Get", {"Name": "bad"})["Volume"]["Status"]["callers"] == 0
    # Create again with the right key (Cloud Foundry re-sends Create): now it mounts.
    assert plugin("/VolumeDriver.Create", {"Name": "bad", "Opts": mount_config(seaweed, bucket)}) == {"Err": ""}
    assert plugin("/VolumeDriver.Mount", {"Name": "bad", "ID": "c1"})["Err"] == ""
    assert os.stat(point).st_uid == 1000                             # CF map mount_options applied
    daemon = s3pyfs_pids_for(point)[0]
    cmdline = open(f"/proc/{daemon}/cmdline", "rb").read().decode().split("\0")
    opts = cmdline[cmdline.index("-o") + 1].split(",")
    assert {"default_acl=private", "storage_class=STANDARD", "uid=1000", "allow_other"} <= set(opts)
    with open(os.path.join(point, "cf.txt"), "w") as fh:
        fh.write("cloud foundry")
    assert s3().get_object(Bucket=bucket, Key="cf.txt")["Body"].read() == b"cloud foundry"
    assert plugin("/VolumeDriver.Unmount", {"Name": "bad", "ID": "c1"}) == {"Err": ""}
    assert fstype(point) is None

    # A value s3pyfs refuses: Create records it, Mount answers with s3pyfs's reason.
    assert plugin("/VolumeDriver.Create", {"Name": "bad", "Opts": mount_config(
        seaweed, bucket, acl="world-writable")}) == {"Err": ""}
    answer = plugin("/VolumeDriver.Mount", {"Name": "bad", "ID": "c2"})
    assert "exit code 2" in answer["Err"] and "default_acl" in answer["Err"], answer
    assert fstype(point) is None
