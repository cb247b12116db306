"""The shim's hold on its command: the process, and what the shim was told to do with it.

Signal handlers call ``stop`` and ``kill`` at any moment; ``follow`` reads ``proc`` and
``stopped`` and calls ``ended`` once the command is gone. Standard library only.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

from services.node_agent.shim import ondisk, subreaper
from services.node_agent.shim.cgroup import Cgroup
from services.node_agent.shim.ondisk import atomic_write, signal_group

_KILL_ROUNDS = 50
_KILL_PAUSE_S = 0.01


class Supervisor:
    """The command's process and what the shim was told to do with it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.spec: dict[str, Any] = json.loads((root / ondisk.SPEC).read_bytes())
        self.proc: subprocess.Popen[bytes] | None = None
        self.error: str | None = None
        self.stopped = False
        self.fenced = False  # its agent went silent: stopped by the shim (``fence``)
        self.exited = False
        #: No cgroup holds the command's processes: the shim is their subreaper instead.
        self.subreaper = False
        self._killer: threading.Timer | None = None

    def on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGUSR1:
            self.kill()
        else:
            self.stop()

    def stop(self) -> None:
        """SIGTERM to the command's group now, SIGKILL after the grace period."""
        if self.stopped or self.exited:
            return
        self.stopped = True
        if self.proc is not None:
            self._terminate(float(self.spec["grace_period_s"]))

    def fence(self) -> None:
        """The lease expired: SIGTERM now, SIGKILL after the fence's grace (shorter than the
        grace of a stop, which may be under way: the fence overtakes it)."""
        if self.fenced or self.exited or self.proc is None:
            return
        self.fenced = self.stopped = True
        self._terminate(float(self.spec["fence_grace_s"]))

    def kill(self) -> None:
        self.stopped = True
        if self.proc is not None and not self.exited:
            self._group(signal.SIGKILL)

    def told_to_stop(self) -> bool:
        return self.stopped  # set by a signal handler, at any moment

    def _terminate(self, grace_s: float) -> None:
        self._group(signal.SIGTERM)
        if self._killer is not None:
            self._killer.cancel()
        self._killer = threading.Timer(grace_s, self.kill)
        self._killer.daemon = True
        self._killer.start()

    def start(self) -> None:
        if self.stopped:
            return  # told to stop before the command began: it never runs
        if self.spec.get("cgroup") is None:
            self.subreaper = subreaper.adopt()
        try:
            self.proc = subprocess.Popen(
                ["bash", "-c", self.spec["command"]],
                cwd=self.spec["cwd"],
                env=self.spec["env"],
                start_new_session=True,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                preexec_fn=self._enter if self._entering() else None,  # noqa: PLW1509
            )
        except (OSError, subprocess.SubprocessError) as exc:
            self.error = f"the command could not start: {exc}"
            return
        atomic_write(self.root / ondisk.COMMAND_PID, b"%d" % self.proc.pid)
        if self.told_to_stop():  # the stop came while the command was being started
            self._terminate(float(self.spec["grace_period_s"]))

    def _entering(self) -> bool:
        return self.spec.get("cgroup") is not None or self.spec.get("uid") is not None

    def _enter(self) -> None:
        """In the command's process, before it execs: into the rank's cgroup (while still
        root), then the rank's user, for good (no supplementary group, umask 077).

        A ``preexec_fn`` is safe here: the shim has no other thread yet (they start once the
        command runs), and this calls no Python code that takes a lock.
        """
        if (cgroup := self.spec.get("cgroup")) is not None:
            fd = os.open(os.path.join(cgroup, "cgroup.procs"), os.O_WRONLY)
            os.write(fd, b"0")
            os.close(fd)
        uid, gid = self.spec.get("uid"), self.spec.get("gid")
        if uid is not None and gid is not None:
            os.setgroups([])
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
            os.umask(0o077)

    def _group(self, signum: int) -> None:
        """``signum`` to the command's process group and to every process of its cgroup
        (a daemon that left the group is still in the cgroup)."""
        if self.proc is None:
            return
        signal_group(self.proc.pid, signum)
        if (cgroup := self.spec.get("cgroup")) is not None:
            if signum == signal.SIGKILL:
                Cgroup(cgroup).kill()
            else:
                Cgroup(cgroup).signal(signum)
        elif self.subreaper:
            rounds = _KILL_ROUNDS if signum == signal.SIGKILL else 1
            # A process may fork while it is being killed: again, until none is left.
            while subreaper.signal_all(os.getpid(), signum) and (rounds := rounds - 1):
                time.sleep(_KILL_PAUSE_S)  # allowed: bounded, while the kernel delivers
            subreaper.reap(keep=self.proc.pid)

    def end_leftovers(self) -> None:
        """The command has exited: SIGKILL to what is left of it (its group, its cgroup)."""
        self._group(signal.SIGKILL)

    def ended(self) -> None:
        self.exited = True
        if self._killer is not None:
            self._killer.cancel()
