"""Where a rank has no cgroup (an agent that may create none): the shim is its command's child
subreaper, so a process that leaves the command's group and is orphaned (``setsid sleep 1000 &``)
becomes the shim's child instead of init's, and a stop still reaches it.

``adopt`` makes the calling process a subreaper (``prctl(PR_SET_CHILD_SUBREAPER)``);
``descendants`` lists every process under it (from ``/proc``'s parent links); ``signal_all``
signals them; ``reap`` collects those of its own children that have ended, never the one its
caller waits for itself (the command: ``subprocess`` must get its exit status).

A process can still leave by being adopted elsewhere only if the shim itself dies; then the
agent kills what the rank's files name. Standard library only: the shim imports it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections import defaultdict
from pathlib import Path

from services.core.procstat import ENDED, stat

_PR_SET_CHILD_SUBREAPER = 36


def adopt() -> bool:
    """Become a child subreaper; False where the kernel (or libc) does not allow it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def descendants(pid: int) -> list[int]:
    """Every live process under ``pid`` (children first, then theirs)."""
    children: dict[int, list[int]] = defaultdict(list)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := stat(entry.name)) and fields[0] not in ENDED:
            children[int(fields[1])].append(int(entry.name))
    found: list[int] = []
    frontier = [pid]
    while frontier:
        found_now = [child for parent in frontier for child in children.get(parent, [])]
        found += found_now
        frontier = found_now
    return found


def signal_all(pid: int, signum: int) -> int:
    """Send ``signum`` to every process under ``pid``; how many got it."""
    sent = 0
    for child in descendants(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signum)
            sent += 1
    return sent


def reap(keep: int | None) -> None:
    """Collect this process's ended children, but ``keep`` (its caller waits for that one)."""
    me = str(os.getpid())
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == keep:
            continue
        fields = stat(entry.name)
        if fields is not None and fields[0] == "Z" and fields[1] == me:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(int(entry.name), os.WNOHANG)
