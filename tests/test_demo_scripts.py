"""scripts/demo-common.sh helpers that `make demo` / `make demo-stop` use: no shell noise for
processes that vanish while /proc is scanned, and a SeaweedFS stop that says what it waits for."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

COMMON = Path(__file__).resolve().parent.parent / "scripts" / "demo-common.sh"


def bash(script: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", f'. "{COMMON}"\n{script}'], capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})})


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_reading_the_command_line_of_a_gone_process_is_silent():
    pid = dead_pid()
    assert not os.path.exists(f"/proc/{pid}")
    result = bash(f"proc_cmdline {pid}; echo rc=$?")
    assert result.stderr == ""
    assert result.stdout.strip() not in ("", "rc=0")        # it failed, quietly


def test_pids_matching_finds_a_live_process_by_its_arguments(tmp_path):
    marker = f"demo-test-{os.getpid()}"
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "server", marker])
    try:
        result = bash(f'pids_matching " server " "{marker}"')
        assert result.stdout.split() == [str(proc.pid)] and result.stderr == ""
    finally:
        proc.kill()
        proc.wait()


def test_stop_weed_says_what_it_waits_for_and_kills_a_server_that_keeps_draining(tmp_path):
    data_dir = tmp_path / "seaweed"
    # stands in for `weed server -dir=...` whose filer keeps draining after SIGTERM
    fake = subprocess.Popen([sys.executable, "-c",
                             "import signal, sys, time\n"
                             "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                             "print('ready', flush=True)\n"
                             "time.sleep(300)",
                             "server", f"-dir={data_dir}", "-filer"], stdout=subprocess.PIPE, text=True)
    try:
        assert fake.stdout.readline() == "ready\n"
        result = bash(f'DATA_DIR="{data_dir}"\nstop_weed', env={"S3PYFS_DEMO_WEED_STOP_GRACE": "1"})
        assert fake.wait(timeout=30) == -signal.SIGKILL
        lines = result.stderr.splitlines()
        assert lines == [f"demo: stopping SeaweedFS (pid {fake.pid}): up to 1 s for a clean exit, then SIGKILL",
                         "demo: SeaweedFS is still draining its filer's gRPC streams; killing it (its data is on disk)"]
    finally:
        if fake.poll() is None:
            fake.kill()
            fake.wait()
