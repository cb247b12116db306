"""A rank's cgroup (v2): every process of the rank, daemonized ones included, held together so
that a stop, a fence or the rank's end reaches all of them.

A process group is not enough: ``setsid sleep 1000 &`` leaves it, and on a GPU node such a
process keeps its GPU memory after the run is gone. A cgroup cannot be left by an unprivileged
process (moving needs write access to the common ancestor's ``cgroup.procs``, which is root's).

Layout: ``<parent>/<run_id>.<attempt>.<rank>``, where the parent is ``RUNPLANE_CGROUP_PARENT``
or ``runplane-ranks`` under the agent's own cgroup (``/proc/self/cgroup`` on the cgroup2
mount found in ``/proc/self/mountinfo``; the unified hierarchy of a hybrid host counts). No
controller is enabled: membership, ``cgroup.kill`` and ``cgroup.events`` are the core's, so
this works under a service whose cgroup has processes of its own.

Invariants:
- a rank's command joins its cgroup before it execs (the shim's ``preexec``); a setup tool
  right after it starts (``join``): everything it forks from then on is inside;
- ``kill`` leaves the cgroup empty (``cgroup.kill``, or SIGKILL to each member until none is
  left on kernels before 5.14); ``remove`` kills first, so no process outlives its rank's
  directory;
- signals only ever go to members: a pid read from ``cgroup.procs`` that has left (exited) is
  skipped.

Standard library only: the shim imports it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from pathlib import Path

__all__ = ["Cgroup", "CgroupUnavailable", "own_cgroup", "ranks_parent"]

PARENT_NAME = "runplane-ranks"
_EMPTIED_S = 5.0
_POLL_S = 0.01


class CgroupUnavailable(Exception):
    """No cgroup v2 can be made here; the message says why."""


def _cgroup2_mount(mountinfo: str) -> Path | None:
    for line in mountinfo.splitlines():
        fields = line.split(" - ", 1)
        if len(fields) == 2 and fields[1].split()[0] == "cgroup2":
            return Path(fields[0].split()[4])
    return None


def own_cgroup() -> Path:
    """This process's cgroup v2 directory; ``CgroupUnavailable`` when there is none."""
    try:
        mount = _cgroup2_mount(Path("/proc/self/mountinfo").read_text())
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError as exc:
        raise CgroupUnavailable(f"cannot read this process's cgroups: {exc}") from None
    if mount is None:
        raise CgroupUnavailable("no cgroup2 filesystem is mounted")
    for line in lines:
        if line.startswith("0::"):
            return mount / line[3:].lstrip("/")
    raise CgroupUnavailable("this process is in no cgroup v2")


def ranks_parent(configured: Path | None) -> Path:
    """Where the ranks' cgroups go, created now; ``CgroupUnavailable`` (with why) when this
    process cannot make one there."""
    parent = configured if configured is not None else own_cgroup() / PARENT_NAME
    try:
        parent.mkdir(exist_ok=True)
        probe = parent / f".probe-{os.getpid()}"
        probe.mkdir()
        probe.rmdir()
    except OSError as exc:
        raise CgroupUnavailable(f"cannot create a cgroup under {parent}: {exc.strerror}") from None
    if not (parent / "cgroup.procs").exists():
        raise CgroupUnavailable(f"{parent} is not a cgroup v2 directory")
    return parent


class Cgroup:
    """One rank's cgroup, by its directory."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    @classmethod
    def for_rank(cls, parent: Path, run_id: str, attempt: int, rank: int) -> Cgroup:
        return cls(parent / f"{run_id}.{attempt}.{rank}")

    def create(self) -> None:
        self.path.mkdir(exist_ok=True)

    def join(self, pid: int = 0) -> None:
        """Move ``pid`` (0: the calling process) into the cgroup."""
        fd = os.open(self.path / "cgroup.procs", os.O_WRONLY)
        try:
            os.write(fd, b"%d" % pid)
        finally:
            os.close(fd)

    def members(self) -> list[int]:
        try:
            text = (self.path / "cgroup.procs").read_text()
        except FileNotFoundError:
            return []
        return [int(pid) for pid in text.split()]

    def populated(self) -> bool:
        try:
            events = (self.path / "cgroup.events").read_text()
        except FileNotFoundError:
            return False
        return "populated 1" in events

    def signal(self, signum: int) -> int:
        """Send ``signum`` to every member; how many got it."""
        sent = 0
        for pid in self.members():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)
                sent += 1
        return sent

    def kill(self) -> None:
        """SIGKILL to every member, until none is left (bounded)."""
        try:
            (self.path / "cgroup.kill").write_bytes(b"1")
        except FileNotFoundError:
            if not self.path.exists():
                return
            self._kill_each()  # a kernel before 5.14: no cgroup.kill
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENODEV):
                raise
            return
        deadline = time.monotonic() + _EMPTIED_S
        while self.populated() and time.monotonic() < deadline:
            time.sleep(_POLL_S)  # allowed: the kernel empties a killed cgroup asynchronously

    def _kill_each(self) -> None:
        deadline = time.monotonic() + _EMPTIED_S
        while self.signal(signal.SIGKILL) and time.monotonic() < deadline:
            time.sleep(_POLL_S)  # allowed: a member may fork while it is being killed

    def remove(self) -> None:
        """Kill what is left, then remove the directory (gone already: nothing to do)."""
        if not self.path.exists():
            return
        self.kill()
        with contextlib.suppress(FileNotFoundError):
            self.path.rmdir()
