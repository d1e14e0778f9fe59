"""Issue 28: the launcher's children die with it (a `kill -9` of the launcher, or `make up | tee`
and Ctrl-C, where tee goes first and stdout breaks), and the data folder is owner-only."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from services.launcher import ROOT


def _alive(pid: int) -> bool:
    """Running (a zombie nobody reaped yet counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def _marked(marker: str) -> list[int]:
    """Processes of this user whose environment names `marker` (the test's own folder)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker.encode() in (entry / "environ").read_bytes() and _alive(int(entry.name)):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _wait_gone(pids: list[int], within_s: float) -> list[int]:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.1)
    return [pid for pid in pids if _alive(pid)]


def test_a_service_dies_with_its_launcher_after_kill_9(tmp_path):
    # A launcher of its own (the launcher's ServiceProcess, as `make up` starts every service),
    # killed with SIGKILL: it cannot stop anything itself.
    script = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from services.launcher import retention_process
        run, data = Path({str(tmp_path / "run")!r}), Path({str(tmp_path / "data")!r})
        run.mkdir(), data.mkdir()
        service = retention_process(run, data, {{}})
        service.start()
        service.wait_serving()
        print(service.process.pid, flush=True)
        time.sleep(600)
        """
    )
    launcher = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    child = 0
    try:
        line = launcher.stdout.readline() if launcher.stdout else ""
        assert line.strip().isdigit(), "the service did not start"
        child = int(line)
        assert _alive(child)
        launcher.kill()
        launcher.wait()
        assert _wait_gone([child], 10) == [], "the service outlived its launcher by 10 s"
    finally:
        launcher.kill()
        launcher.wait()
        if child and _alive(child):  # left behind (the test failed): not left running
            os.kill(child, signal.SIGKILL)
    # What the service wrote and the launcher's logs are owner-only.
    for path in [tmp_path / "run" / "retention.log", tmp_path / "data" / "retention.db"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


@pytest.mark.parametrize("run", range(2))
def test_make_up_through_tee_stops_every_service_on_ctrl_c(tmp_path, run):
    data = tmp_path / "data"
    data.mkdir()
    (data / "old.log").write_text("from a start before\n")
    os.chmod(data / "old.log", 0o644)
    env = {
        **os.environ,
        "CUTOUT_DATA_DIR": str(data),
        "CUTOUT_GATEWAY_PORT": "0",
        "CUTOUT_TEST_MARKER": str(tmp_path),
    }
    log = tmp_path / "tee.log"
    # `make up 2>&1 | tee log` in a terminal: Ctrl-C reaches the whole foreground group, so tee
    # may die before the launcher writes "stopping ...".
    shell = subprocess.Popen(
        ["sh", "-c", f"{sys.executable} -m services.launcher 2>&1 | tee {log}"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        while "Ctrl-C stops everything" not in (log.read_text() if log.exists() else ""):
            assert shell.poll() is None and time.monotonic() < deadline, log.read_text() if log.exists() else ""
            time.sleep(0.5)
        services = _marked(str(tmp_path))
        assert len(services) >= 6, services  # launcher, tee's shell side, Triton and the four services
        os.killpg(shell.pid, signal.SIGINT)
        shell.wait(60)
        assert _wait_gone(services, 40) == [], "processes outlived `make up | tee` after Ctrl-C"
        # And what it left is owner-only (a file of a start before is tightened too).
        assert stat.S_IMODE(data.stat().st_mode) == 0o700
        assert stat.S_IMODE((data / "old.log").stat().st_mode) == 0o600
        assert stat.S_IMODE((data / "accounts" / "accounts.db").stat().st_mode) == 0o600
        assert stat.S_IMODE((data / "run" / "gateway.log").stat().st_mode) == 0o600
    finally:
        for pid in _marked(str(tmp_path)):
            os.kill(pid, signal.SIGKILL)
