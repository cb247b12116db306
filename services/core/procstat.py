"""A process's ``/proc/PID/stat``, read one way for everyone who asks.

The command name (field 2) may hold spaces and parentheses, so the fields are those after its
last ``)``: ``[0]`` the state (``Z`` a zombie, ``X`` dead), ``[1]`` the parent's pid, ``[19]``
the start time in clock ticks since boot. Standard library only: the shim uses it.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["ENDED", "stat"]

#: States of a process that has exited (a zombie waits only to be reaped).
ENDED = frozenset({"Z", "X"})


def stat(pid: int | str) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name; None once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
