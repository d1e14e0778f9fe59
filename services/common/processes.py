"""Child processes of the local launcher and tests (the mesh's services, the embedded Triton)."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import BinaryIO


def terminate(process: subprocess.Popen[bytes] | None, timeout_s: float) -> int | None:
    """SIGTERM (the child drains and exits), killed if it takes longer than `timeout_s`;
    returns its exit status, or None if it was never started."""
    if process is None:
        return None
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def owner_only_log(path: Path) -> BinaryIO:
    """A child's log file, opened for appending, readable by its owner only (0600, also if an
    older start left it wider)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, "ab")


def owner_only_tree(root: Path) -> None:
    """Makes a data folder owner-only: folders 0700, files without group and other bits (a
    folder from before, with 0644 databases and logs, is tightened at the next start)."""
    root.mkdir(parents=True, exist_ok=True)
    for folder, _, files in os.walk(root):
        os.chmod(folder, 0o700)
        for name in files:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                os.chmod(path, os.stat(path).st_mode & 0o700)
