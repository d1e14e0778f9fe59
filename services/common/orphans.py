"""Children that die with their parent: `python -I services/common/orphans.py PID -- COMMAND...`
asks Linux for SIGTERM when its parent dies (prctl PR_SET_PDEATHSIG, kept across exec),
checks that the parent is still PID (it may have died before the request), then becomes
COMMAND. The launcher starts every service and Triton this way, so a launcher killed with
`kill -9`, or one that died on a broken stdout, leaves nothing holding the ports.

Linux sends the signal when the *thread* that started the child ends; the launcher starts
its children from its main thread. Elsewhere (no prctl) the command just runs.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def guarded(command: list[str]) -> list[str]:
    """`command`, started so that it gets SIGTERM when this process dies."""
    # By path, isolated (-I): it imports the standard library only, from any working folder.
    return [sys.executable, "-I", os.path.abspath(__file__), str(os.getpid()), "--", *command]


def main(argv: list[str]) -> None:
    parent, separator, *command = argv
    if separator != "--" or not command:
        raise SystemExit("usage: orphans.py PARENT_PID -- COMMAND...")
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != int(parent):  # the parent died before the request: nobody would stop it
            raise SystemExit(f"parent {parent} is gone; not starting {command[0]}")
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
