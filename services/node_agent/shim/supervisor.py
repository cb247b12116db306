"""The shim's hold on its command: the process, and what the shim was told to do with it.

Signal handlers call ``stop`` and ``kill`` at any moment; ``follow`` reads ``proc`` and
``stopped`` and calls ``ended`` once the command is gone. Standard library only.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from services.node_agent.shim import ondisk
from services.node_agent.shim.ondisk import atomic_write, signal_group


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
            self._terminate(self.proc.pid, float(self.spec["grace_period_s"]))

    def fence(self) -> None:
        """The lease expired: SIGTERM now, SIGKILL after the fence's grace (shorter than the
        grace of a stop, which may be under way: the fence overtakes it)."""
        if self.fenced or self.exited or self.proc is None:
            return
        self.fenced = self.stopped = True
        self._terminate(self.proc.pid, float(self.spec["fence_grace_s"]))

    def kill(self) -> None:
        self.stopped = True
        if self.proc is not None and not self.exited:
            signal_group(self.proc.pid, signal.SIGKILL)

    def told_to_stop(self) -> bool:
        return self.stopped  # set by a signal handler, at any moment

    def _terminate(self, pgid: int, grace_s: float) -> None:
        signal_group(pgid, signal.SIGTERM)
        if self._killer is not None:
            self._killer.cancel()
        self._killer = threading.Timer(grace_s, self.kill)
        self._killer.daemon = True
        self._killer.start()

    def start(self) -> None:
        if self.stopped:
            return  # told to stop before the command began: it never runs
        try:
            self.proc = subprocess.Popen(
                ["bash", "-c", self.spec["command"]],
                cwd=self.spec["cwd"],
                env=self.spec["env"],
                start_new_session=True,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        except OSError as exc:
            self.error = f"the command could not start: {exc}"
            return
        atomic_write(self.root / ondisk.COMMAND_PID, b"%d" % self.proc.pid)
        if self.told_to_stop():  # the stop came while the command was being started
            self._terminate(self.proc.pid, float(self.spec["grace_period_s"]))

    def ended(self) -> None:
        self.exited = True
        if self._killer is not None:
            self._killer.cancel()
