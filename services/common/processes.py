"""Child processes of the local launcher and tests (the mesh's services, the embedded Triton)."""

from __future__ import annotations

import signal
import subprocess


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
