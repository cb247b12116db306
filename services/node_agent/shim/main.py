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
import traceback
from pathlib import Path
from typing import Any

from services.node_agent.shim import ondisk
from services.node_agent.shim.ondisk import atomic_write
from services.node_agent.shim.supervisor import Supervisor


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
        from services.node_agent.shim.follow import follow  # noqa: PLC0415

        try:
            status = follow(supervisor, supervisor.spec)
        except Exception as exc:  # noqa: BLE001 - a bug here must not leave the command unwatched
            traceback.print_exc()
            supervisor.kill()
            status = {"error": f"the shim failed: {exc!r}"}
        supervisor.ended()
    atomic_write(root / ondisk.EXIT, json.dumps(status).encode())
    os.close(lock_fd)  # from here on, "unlocked" means "ended, and exit.json tells how"
