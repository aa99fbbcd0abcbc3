"""systemd units and fstab lines (deploy/systemd, the volume plugin's unit).

systemd is installed here but is not PID 1, so units cannot be started by systemctl.  Each
file is checked twice instead:
  * `systemd-analyze verify` (systemd 252) parses it with systemd's own loader: unknown keys,
    bad values, missing executables fail the test (the Documentation= man page is not
    installed by pip, hence --man=no);
  * its commands are run the way systemd runs them: ExecStart with specifiers (%i, %f) and
    EnvironmentFile variables expanded by systemd's rules, NOTIFY_SOCKET for Type=notify,
    KillSignal to stop, ExecStopPost after a crash; the .mount unit and the fstab line through
    mount(8) and mount.fuse3, the fstab line also through systemd-fstab-generator.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time

import pytest
import support
from deploy_support import DEPLOY, S3PYFS_BIN, VENV_BIN, clean_env, fstype, s3pyfs_pids_for, wait_for

SYSTEMD = DEPLOY / "systemd"
TEMPLATE = SYSTEMD / "s3pyfs@.service"
MOUNT_UNIT = SYSTEMD / "mnt-photos.mount"
FSTAB = SYSTEMD / "fstab.example"
PLUGIN_UNIT = DEPLOY / "docker-volume-plugin" / "s3pyfs-volume-plugin.service"


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> values (a key may repeat), with `\\` line continuations joined."""
    text = re.sub(r"\\\n", " ", text)
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def systemd_escape(*args: str) -> str:
    return subprocess.run(["systemd-escape", *args], capture_output=True, text=True, check=True).stdout.strip()


def expand_command(line: str, specifiers: dict[str, str], env: dict[str, str]) -> list[str]:
    """An Exec*= line as systemd turns it into argv (specifiers, quoting, $VAR / ${VAR})."""
    line = line.lstrip("-@:+!")
    line = re.sub(r"%(.)", lambda m: "%" if m.group(1) == "%" else specifiers[m.group(1)], line)
    argv = []
    for word in shlex.split(line):
        whole = re.fullmatch(r"\$([A-Za-z_][A-Za-z0-9_]*)", word)
        if whole:                                   # $VAR alone: split at whitespace
            argv += env.get(whole.group(1), "").split()
            continue
        word = re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", lambda m: env.get(m.group(1), ""), word)
        argv.append(word.replace("$$", "$"))
    return argv


def read_env_file(path) -> dict[str, str]:
    env = {}
    for line in open(path).read().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip()
    return env


def verify(*units) -> None:
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", *map(str, units)],
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, "SYSTEMD_LOG_LEVEL": "notice"})
    assert result.returncode == 0 and not result.stdout.strip() and not result.stderr.strip(), \
        result.stdout + result.stderr


def passwd_file(tmp_path, seaweed):
    path = tmp_path / "passwd-s3fs"
    path.write_text(f"{seaweed.access_key}:{seaweed.secret_key}\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def unmount_leftovers(tmp_path):
    yield
    for entry in support.mountinfo():
        if entry["mountpoint"].startswith(str(tmp_path) + os.sep):
            support.force_unmount(entry["mountpoint"])


# --------------------------------------------------------------------------- verify
def test_units_pass_systemd_analyze_verify(tmp_path):
    assert shutil.which("systemd-analyze"), "systemd-analyze missing (apt-get install systemd)"
    units = tmp_path / "units"
    units.mkdir()
    # Same files, with the executables pointed at where they are on this machine.
    text = TEMPLATE.read_text().replace("/usr/local/bin/s3pyfs", S3PYFS_BIN)
    (units / "s3pyfs@.service").write_text(text)
    shutil.copy(MOUNT_UNIT, units / MOUNT_UNIT.name)
    plugin = PLUGIN_UNIT.read_text().replace(
        "/usr/local/bin/s3pyfs-volume-plugin", str(DEPLOY / "docker-volume-plugin" / "s3pyfs-volume-plugin"))
    (units / PLUGIN_UNIT.name).write_text(plugin)
    verify(units / "s3pyfs@mnt-photos.service", units / MOUNT_UNIT.name, units / PLUGIN_UNIT.name)

    # verify really reads these files: a typo is caught.
    (units / "s3pyfs@.service").write_text(text.replace("Type=notify", "Type=notfy"))
    with pytest.raises(AssertionError, match="Failed to parse service type"):
        verify(units / "s3pyfs@mnt-photos.service")

    # The .mount unit's name matches its Where= (systemd refuses it otherwise).
    where = parse_unit(MOUNT_UNIT.read_text())["Mount"]["Where"][0]
    assert systemd_escape("--path", "--suffix=mount", where) == MOUNT_UNIT.name


def test_service_unit_fields():
    unit = parse_unit(TEMPLATE.read_text())
    service = unit["Service"]
    assert service["Type"] == ["notify"] and service["NotifyAccess"] == ["main"]
    exec_start = shlex.split(service["ExecStart"][0])
    assert exec_start[0] == "/usr/local/bin/s3pyfs" and exec_start[2] == "%f" and "-f" in exec_start
    assert service["KillSignal"] == ["SIGTERM"]
    assert int(service["TimeoutStopSec"][0]) >= 120
    assert set(service["RestartPreventExitStatus"][0].split()) == {"2", "3"}
    assert "network-online.target" in unit["Unit"]["After"][0]
    plugin = parse_unit(PLUGIN_UNIT.read_text())["Service"]
    assert plugin["KillMode"] == ["process"]          # plugin restarts must not kill the mounts


# --------------------------------------------------------------------------- the service, run
@pytest.mark.mounted
def test_service_notifies_ready_when_mounted_and_stops_cleanly(seaweed, s3, bucket, tmp_path, unmount_leftovers):
    point = tmp_path / "srv" / "photos"
    point.mkdir(parents=True)
    instance = systemd_escape("--path", str(point))
    specifiers = {"i": instance, "f": systemd_escape("--unescape", "--path", instance)}
    assert specifiers["f"] == str(point)
    env_file = tmp_path / f"{instance}.env"
    env_file.write_text(f"S3PYFS_SOURCE={bucket}:/svc\n"
                        f"S3PYFS_ARGS=-o url={seaweed.endpoint},use_path_request_style,allow_other,"
                        f"passwd_file={passwd_file(tmp_path, seaweed)}\n")
    env_file.chmod(0o600)
    service = parse_unit(TEMPLATE.read_text().replace("/usr/local/bin/s3pyfs", S3PYFS_BIN))["Service"]
    assert service["EnvironmentFile"] == ["/etc/s3pyfs/%i.env"]
    env = clean_env(**read_env_file(env_file))
    start = expand_command(service["ExecStart"][0], specifiers, env)
    stop_post = expand_command(service["ExecStopPost"][0], specifiers, env)

    notify_path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(notify_path)
        notify.settimeout(float(service["TimeoutStartSec"][0]))
        log = tmp_path / "service.log"

        def start_service():
            with open(log, "ab") as out:
                return subprocess.Popen(start, env={**env, "NOTIFY_SOCKET": notify_path},
                                        stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                        start_new_session=True)

        proc = start_service()
        try:
            message = notify.recv(4096)
            assert b"READY=1" in message.split(b"\n")
            assert fstype(point) == support.FSTYPE        # READY only once the mount is live
            (point / "from-systemd.txt").write_text("unit data")
            proc.send_signal(getattr(signal, service["KillSignal"][0]))
            assert proc.wait(timeout=int(service["TimeoutStopSec"][0])) == 0, support.tail(log)
            assert fstype(point) is None
            assert subprocess.run(stop_post, env=env, timeout=30).returncode == 0   # nothing to do
        finally:
            support.stop_process(proc)
        assert s3().get_object(Bucket=bucket, Key="svc/from-systemd.txt")["Body"].read() == b"unit data"

        # A crash leaves a dead mount; ExecStopPost (run by systemd after any stop) detaches it.
        proc = start_service()
        try:
            notify.recv(4096)
            wait_for(lambda: fstype(point) == support.FSTYPE, 10, "mounted again")
            proc.kill()
            proc.wait(timeout=10)
            assert fstype(point) == support.FSTYPE
            assert subprocess.run(stop_post, env=env, timeout=30).returncode == 0
            assert fstype(point) is None
            assert os.listdir(point) == []
        finally:
            support.stop_process(proc)


# --------------------------------------------------------------------------- fstab and .mount
def fstab_line_for(seaweed, bucket, point, passwd) -> str:
    lines = [line for line in FSTAB.read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert len(lines) == 1
    source, where, fs_type, options, dump, fsck = lines[0].split()
    assert (where, fs_type, dump, fsck) == ("/mnt/photos", "fuse.s3pyfs", "0", "0")
    assert {"_netdev", "nofail", "allow_other"} <= set(options.split(","))
    options = options.replace("https://minio.example:9000", seaweed.endpoint)
    options = options.replace("/etc/passwd-s3fs", str(passwd))
    return f"{bucket}:/fstab {point} {fs_type} {options} {dump} {fsck}\n"


def mount_env():
    # mount(8) -> /sbin/mount.fuse3 -> `s3pyfs` from PATH (on a host: /usr/local/bin/s3pyfs)
    return clean_env(PATH=f"{VENV_BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")


def unmount_and_wait(point):
    subprocess.run(["umount", str(point)], check=True, timeout=60)
    wait_for(lambda: not s3pyfs_pids_for(point), 30, "s3pyfs exits after umount")


@pytest.mark.mounted
def test_fstab_line_mounts_through_mount_helper_and_generator(seaweed, s3, bucket, tmp_path, unmount_leftovers):
    point = tmp_path / "photos"
    point.mkdir()
    fstab = tmp_path / "fstab"
    fstab.write_text(fstab_line_for(seaweed, bucket, point, passwd_file(tmp_path, seaweed)))

    started = time.monotonic()
    result = subprocess.run(["mount", "-T", str(fstab), str(point)], env=mount_env(), capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert time.monotonic() - started < 60
    assert fstype(point) == support.FSTYPE
    (point / "via-fstab.txt").write_text("fstab")
    unmount_and_wait(point)
    assert s3().get_object(Bucket=bucket, Key="fstab/via-fstab.txt")["Body"].read() == b"fstab"

    # What systemd makes of the line at boot: a .mount unit pulled in by remote-fs.target.
    generated = tmp_path / "generator"
    generated.mkdir()
    result = subprocess.run(["/lib/systemd/system-generators/systemd-fstab-generator", *[str(generated)] * 3],
                            env={**os.environ, "SYSTEMD_FSTAB": str(fstab), "SYSTEMD_LOG_LEVEL": "warning",
                                 "SYSTEMD_PROC_CMDLINE": ""},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    name = systemd_escape("--path", "--suffix=mount", str(point))
    unit = parse_unit((generated / name).read_text())
    assert unit["Mount"]["Type"] == ["fuse.s3pyfs"] and unit["Mount"]["What"] == [f"{bucket}:/fstab"]
    # _netdev: a remote mount, after the network; nofail: wanted (not required) by remote-fs.target
    assert (generated / "remote-fs.target.wants" / name).exists()
    assert not (generated / "local-fs.target.requires" / name).exists()
    assert unit["Mount"]["TimeoutSec"] == ["2min"]                              # x-systemd.mount-timeout


@pytest.mark.mounted
def test_mount_unit_mounts_as_systemd_would(seaweed, s3, bucket, tmp_path, unmount_leftovers):
    section = parse_unit(MOUNT_UNIT.read_text())["Mount"]
    point = tmp_path / "photos"
    point.mkdir()
    options = section["Options"][0].replace("https://minio.example:9000", seaweed.endpoint)
    options = options.replace("/etc/passwd-s3fs", str(passwd_file(tmp_path, seaweed)))
    what = section["What"][0].replace("photos", bucket, 1)
    # systemd's mount unit runs: mount WHAT WHERE -t TYPE -o OPTIONS
    result = subprocess.run(["mount", what, str(point), "-t", section["Type"][0], "-o", options],
                            env=mount_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert fstype(point) == support.FSTYPE
    (point / "unit.txt").write_text("mount unit")
    unmount_and_wait(point)
    assert s3().get_object(Bucket=bucket, Key="2024/unit.txt")["Body"].read() == b"mount unit"
