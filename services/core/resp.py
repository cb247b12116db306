"""The Redis protocol (RESP2), standard library only: commands encoded, replies read. For the
clients that must not load redis-py: the local stack's launcher and supervisor
(``services.core.valkey``), and each rank's shim (``services.node_agent.shim.resp``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import BinaryIO

Command = Sequence[bytes | str | int]


def encode(command: Command) -> bytes:
    """One command in the protocol's array form (any byte in an argument is safe)."""
    parts = [b"*%d\r\n" % len(command)]
    for arg in command:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts += (b"$%d\r\n" % len(data), data, b"\r\n")
    return b"".join(parts)


def read_reply(stream: BinaryIO, error: Callable[[str], Exception]) -> object:
    """One reply: a simple or bulk string (bytes), an integer, a list of replies, None (a
    null), or ``error(message)`` for an error reply (returned, not raised: in a pipeline, the
    replies after it are still to be read). ``ConnectionError`` when the stream ends first."""
    line = stream.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError("the server closed the connection")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest
    if kind == b"-":
        return error(rest.decode(errors="replace"))
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        if size < 0:
            return None
        data = stream.read(size + 2)
        if len(data) != size + 2:
            raise ConnectionError("the server closed the connection")
        return data[:-2]
    if kind == b"*":
        count = int(rest)
        return None if count < 0 else [read_reply(stream, error) for _ in range(count)]
    raise ConnectionError(f"not a RESP reply: {line[:40]!r}")
