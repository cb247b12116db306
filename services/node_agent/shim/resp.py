"""A minimal blocking Redis client, standard library only, for the shim: pipelined commands.

Why not redis-py: the shim is one process per rank, and importing redis-py costs ~100 ms of
CPU each time (more than everything else the shim does for a short command). The shim only
ever appends to one stream, so this client does just that: it connects (``redis://``,
``rediss://``, ``unix://``, with user, password and database, or a user and the file holding
its password, read at each connect), sends a batch of commands in one write and reads every
reply.

Invariants:
- A connection is used only once the server answers ``PING`` on it: a server still loading its
  data after a restart (``LOADING``) is reported like one that is down (``ConnectionError``),
  so no command of a batch meets it.
- ``send`` appends each reply as it is read: when the connection breaks mid-batch (``OSError``,
  reconnecting on the next call), the replies read so far say exactly which commands the server
  acknowledged; the others may be sent again. (A command whose reply was lost with the
  connection may have been carried out: such a resend is the only way a line is stored twice.)
- ``execute`` raises the first error reply (``RespError``) after the whole batch was read.
- On a Valkey Cluster, a ``MOVED`` reply names the node that serves the stream's slot now: the
  connection moves there (the commands it refused were not carried out: the caller sends them
  again). A node that cannot be reached sends the next connection to the next address known
  (the URL's, then those ``MOVED`` named), so a primary killed does not strand the shim.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import BinaryIO
from urllib.parse import parse_qs, unquote, urlsplit

from services.core import resp
from services.core.resp import Command, encode
from services.node_agent.errors import RespError


def read_reply(stream: BinaryIO) -> object:
    """One reply, a ``RespError`` for an error reply (``services.core.resp``)."""
    return resp.read_reply(stream, RespError)


class Client:
    def __init__(
        self,
        url: str,
        timeout: float = 10.0,
        *,
        username: str | None = None,
        password_file: str | None = None,
    ) -> None:
        self.url = url
        self.timeout = timeout
        self.username = username
        self.password_file = password_file
        self._sock: socket.socket | None = None
        self._stream: BinaryIO | None = None
        seed = urlsplit(url)
        #: Where to connect: the URL's node first, then the nodes ``MOVED`` named (a cluster).
        self._addresses: list[tuple[str, int]] = [(seed.hostname or "localhost", seed.port or 6379)]

    def execute(self, commands: Sequence[Command]) -> list[object]:
        """Send ``commands`` in one write, read every reply; raise the first error reply."""
        replies: list[object] = []
        self.send(commands, replies)
        for reply in replies:
            if isinstance(reply, RespError):
                raise reply
        return replies

    def send(self, commands: Sequence[Command], replies: list[object]) -> None:
        """Send ``commands`` in one write and append their replies to ``replies`` as they are
        read (a ``RespError`` for an error reply). On ``OSError``, ``replies`` holds the
        replies of the commands acknowledged before the connection broke, in order."""
        if self._stream is None:
            self._connect()
        start = len(replies)
        self._send(commands, replies)
        moved = next((r for r in replies[start:] if isinstance(r, RespError) and r.moved_to), None)
        if moved is not None and moved.moved_to is not None:
            self._move(moved.moved_to)

    def _move(self, address: tuple[str, int]) -> None:
        """Connect to ``address`` next (the node a ``MOVED`` named), and remember it."""
        if address in self._addresses:
            self._addresses.remove(address)
        self._addresses.insert(0, address)
        self.close()

    def _send(self, commands: Sequence[Command], replies: list[object]) -> None:
        assert self._sock is not None
        assert self._stream is not None
        try:
            self._sock.sendall(b"".join(encode(command) for command in commands))
            for _ in commands:
                replies.append(read_reply(self._stream))  # noqa: PERF401 - one by one: a break keeps those read
        except OSError:
            self.close()
            raise

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
        self._sock = self._stream = None

    def _connect(self) -> None:
        url = urlsplit(self.url)
        query = parse_qs(url.query)
        password = unquote(url.password) if url.password else query.get("password", [None])[0]
        user = unquote(url.username) if url.username else None
        if self.password_file is not None:
            with open(self.password_file) as file:
                password, user = file.readline().rstrip("\r\n"), self.username
        sock: socket.socket
        if url.scheme == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            sock.connect(url.path)
        elif url.scheme in ("redis", "rediss"):
            address = self._addresses[0]
            try:
                sock = socket.create_connection(address, timeout=self.timeout)
            except OSError:
                self._addresses.append(self._addresses.pop(0))  # the next one, next time
                raise
            if url.scheme == "rediss":
                # Imported here: ssl maps OpenSSL (5 MiB in every shim and fork server) and only
                # a TLS server needs it.
                import ssl  # noqa: PLC0415 - see above

                sock = ssl.create_default_context().wrap_socket(sock, server_hostname=address[0])
        else:
            raise ValueError(f"unsupported Redis URL scheme {url.scheme!r} in {self.url!r}")
        self._sock, self._stream = sock, sock.makefile("rb")
        setup: list[Command] = []
        if password:
            setup.append(["AUTH", user, password] if user else ["AUTH", password])
        database = url.path.strip("/") if url.scheme != "unix" else query.get("db", ["0"])[0]
        if database and database != "0":
            setup.append(["SELECT", database])
        setup.append(["PING"])  # refused while the server loads its data
        replies: list[object] = []
        self._send(setup, replies)
        error = next((reply for reply in replies if isinstance(reply, RespError)), None)
        if error is not None:
            self.close()
            if error.transient:
                raise ConnectionError(f"the server is not ready: {error}")
            raise error
