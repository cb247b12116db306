"""The shim: a small supervisor of one rank's command, outliving the node-agent that started it.

``python -m services.node_agent.shim <rank dir> <lock fd> <notify fd>``, started by the agent
in a session of its own, holding the rank's ``shim.lock`` (see ``rankdir``) until its very end,
and the write end of a pipe to the agent that started it (``running <pid>`` once the command
runs; the end of the pipe, when the shim is gone, however it went). It:

1. installs its signal handlers, then writes ``shim.pid`` (from then on it may be signalled):
   SIGTERM stops the command (SIGTERM to its process group, the grace period, SIGKILL);
   SIGUSR1 kills it at once. A stop that comes before the command starts means it never runs;
2. starts ``bash -c <command>`` in a new process group (its pid is the group id), writes
   ``command.pid`` and tells the agent, before it imports anything heavy: the command starts
   within milliseconds;
3. follows it (``follow``): sends stdout and stderr, line by line, to the ingest stream itself,
   so output keeps flowing while the agent is down; when the command ends, kills what is left
   of its process group (as a container's end does) and sends the remaining output;
4. writes ``exit.json`` atomically, then releases the lock and exits.

It never reports events: the agent reads ``exit.json`` and reports the exit.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import traceback
from pathlib import Path
from types import FrameType
from typing import Any

from services.node_agent import ondisk
from services.node_agent.ondisk import atomic_write, signal_group


class Supervisor:
    """The command's process and what the shim was told to do with it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.spec: dict[str, Any] = json.loads((root / ondisk.SPEC).read_bytes())
        self.proc: subprocess.Popen[bytes] | None = None
        self.error: str | None = None
        self.stopped = False
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
            self._terminate(self.proc.pid)

    def kill(self) -> None:
        self.stopped = True
        if self.proc is not None and not self.exited:
            signal_group(self.proc.pid, signal.SIGKILL)

    def told_to_stop(self) -> bool:
        return self.stopped  # set by a signal handler, at any moment

    def _terminate(self, pgid: int) -> None:
        signal_group(pgid, signal.SIGTERM)
        self._killer = threading.Timer(float(self.spec["grace_period_s"]), self.kill)
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
            self._terminate(self.proc.pid)

    def ended(self) -> None:
        self.exited = True
        if self._killer is not None:
            self._killer.cancel()


def _notify(fd: int, message: bytes) -> None:
    # The agent that started this shim may be gone: a new one reads the files instead.
    with contextlib.suppress(OSError):
        os.write(fd, message)


def main(root: Path, lock_fd: int, notify_fd: int) -> None:
    supervisor = Supervisor(root)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
        signal.signal(signum, supervisor.on_signal)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a shim has no terminal; ignore its loss
    atomic_write(root / ondisk.SHIM_PID, b"%d" % os.getpid())
    supervisor.start()
    if supervisor.proc is not None:
        _notify(notify_fd, b"running %d\n" % supervisor.proc.pid)
    status: dict[str, Any]
    if supervisor.proc is None:
        status = {"stopped": supervisor.stopped, "error": supervisor.error}
    else:
        # Imported once the command runs: it must not wait for them.
        from services.node_agent.follow import follow  # noqa: PLC0415

        try:
            status = follow(supervisor, supervisor.spec)
        except Exception as exc:  # noqa: BLE001 - a bug here must not leave the command unwatched
            traceback.print_exc()
            supervisor.kill()
            status = {"error": f"the shim failed: {exc!r}"}
        supervisor.ended()
    atomic_write(root / ondisk.EXIT, json.dumps(status).encode())
    os.close(lock_fd)  # from here on, "unlocked" means "ended, and exit.json tells how"


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
