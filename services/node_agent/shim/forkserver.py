"""Starting shims cheaply: a process with the shim already imported forks one per rank.

A shim started as ``python -m services.node_agent.shim`` spends 20 to 40 ms of CPU starting an
interpreter and importing before it supervises anything; on a busy node that was the largest
cost of a short run. The fork server starts once per agent, imports the shim and what it uses
while the command runs, and forks a shim per request: the same ``shim.main``, in about a
millisecond.

Protocol, over a socketpair the agent creates: a request is one message with the rank's
directory (JSON) and two file descriptors: the rank's lock, already locked by the agent, and
the write end of the agent's notification pipe. The reply is the new shim's pid.

Invariants:
- A shim gets what a shim started by ``Popen`` got: a session of its own, stdin from
  /dev/null, stdout and stderr appended to its ``shim.log``, its working directory the rank's
  directory, and the two descriptors; nothing else of the server's.
- The server reaps its children (SIGCHLD ignored; reset to the default in each shim, which
  waits for its own command).
- The server ends when the agent's end of the socket closes (agent stopped or killed); the
  shims it forked run on, each in its own session, and a restarted agent adopts them from
  their files as before.
- A request is sent once: if the server dies before answering, the launch fails (``OSError``)
  rather than risk a second shim for the rank; the next launch starts a new server.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import traceback
from pathlib import Path

from services.node_agent.shim import main as shim
from services.node_agent.shim import ondisk

_MAX_REQUEST = 65_536
_REPLY_TIMEOUT_S = 30.0
_FAILED = b"failed"


class ForkServer:
    """The agent's side: starts the server when needed and asks it for shims."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None

    def start(self) -> None:
        """Start the server unless it runs (``spawn`` starts it too, when it is gone)."""
        self._ensure()

    def spawn(self, root: Path, lock_fd: int, notify_fd: int) -> int:
        """Fork a shim for the rank at ``root``; its pid."""
        sock = self._ensure()
        request = json.dumps({"root": str(root)}).encode()
        try:
            socket.send_fds(sock, [request], [lock_fd, notify_fd])
            reply = sock.recv(64)
        except OSError:
            self.close()
            raise
        if not reply:
            self.close()
            raise ConnectionError("the shim fork server ended before it answered")
        if reply == _FAILED:
            raise OSError(f"the shim fork server could not start the shim (see {self.log_path})")
        return int(reply)

    def close(self) -> None:
        """Close the socket: the server ends by itself. Its shims run on."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._proc is not None:
            if self._proc.poll() is None:
                # SIGTERM to the server alone: the shims it forked are in sessions of their own
                # and run on (reparented), as after a kill -9 of the agent.
                self._proc.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._proc.wait(timeout=2)
            self._proc = None

    def _ensure(self) -> socket.socket:
        if self._sock is not None and self._proc is not None and self._proc.poll() is None:
            return self._sock
        self.close()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with self.log_path.open("ab") as log:
                self._proc = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "services.node_agent.shim.forkserver",
                        str(theirs.fileno()),
                    ],
                    pass_fds=(theirs.fileno(),),
                    start_new_session=True,  # like the shims it forks: outside the agent's group
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
        except OSError:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.settimeout(_REPLY_TIMEOUT_S)
        self._sock = ours
        return ours


# --- the server -------------------------------------------------------------------------


def serve(sock: socket.socket) -> None:
    """Fork a shim per request until the agent's end closes."""
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    while True:
        try:
            message, fds, _flags, _addr = socket.recv_fds(sock, _MAX_REQUEST, 2)
        except InterruptedError:
            continue
        if not message:
            return  # the agent is gone
        try:
            root = Path(json.loads(message)["root"])
            lock_fd, notify_fd = fds
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                _child(sock, root, lock_fd, notify_fd)  # never returns
            sock.send(b"%d" % pid)
        except Exception:  # noqa: BLE001 - a bad request must not end the server
            traceback.print_exc()
            sock.send(_FAILED)
        finally:
            for fd in fds:
                os.close(fd)


def _child(sock: socket.socket, root: Path, lock_fd: int, notify_fd: int) -> None:
    code = 1
    try:
        sock.close()
        os.setsid()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the shim waits for its command
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        log = os.open(root / ondisk.SHIM_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        os.chdir(root)
        shim.main(root, lock_fd, notify_fd)
        code = 0
    except BaseException:  # noqa: BLE001 - whatever happens, the fork must not return
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


if __name__ == "__main__":
    # Imported now, not in each shim once its command runs: every fork inherits them.
    from services.node_agent.shim import follow  # noqa: F401

    serve(socket.socket(fileno=int(sys.argv[1])))
