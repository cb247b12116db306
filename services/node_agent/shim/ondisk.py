"""The names of a rank's files, and the stdlib-only primitives that write them and signal
processes (see ``rankdir`` for what each file means).

Only the standard library is imported here: the shim uses this module before its command
starts, and every millisecond of imports there delays the command.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

RECORD = "rank.json"
SPEC = "shim.json"
LOCK = "shim.lock"
SHIM_PID = "shim.pid"
COMMAND_PID = "command.pid"
EXIT = "exit.json"
SHIM_LOG = "shim.log"
SETUP_PID = "setup.pid"
DONE = "done"


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` so a reader sees the old file or the whole new one.

    Not fsynced: these files must outlive the death of a process (the agent's, a shim's), which
    the page cache survives. After a power loss no rank survives either, and a reader takes a
    file it cannot parse for a missing one.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
    tmp.replace(path)


def read_pid(path: Path) -> int | None:
    with contextlib.suppress(FileNotFoundError, ValueError):
        return int(path.read_text().strip())
    return None


def signal_group(pgid: int, signum: int) -> bool:
    """Send ``signum`` to a process group; False if the group is gone."""
    if pgid <= 1:
        raise ValueError(f"not a process group of a rank: {pgid}")
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def signal_process(pid: int, signum: int) -> bool:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        return False
    return True


def kill_group(pgid: int | None) -> None:
    if pgid is not None and pgid > 1:
        signal_group(pgid, signal.SIGKILL)
