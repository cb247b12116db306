"""The connection's packer: hiredis packs what it takes, byte for byte as redis-py would."""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import DataError

from services.core.client import connection_class

COMMANDS: list[tuple[Any, ...]] = [
    ("FCALL", "runplane_append", 2, "log:{0}", b"run:{0}:x", -1, 1.5, 1e20, "é", b""),
    ("CONFIG GET", "appendfsync"),  # a command name holding a space is split
    (b"PING",),
    ("SET", "a", memoryview(b"xy")),
    ("SET", "a", bytearray(b"xy")),
]


@pytest.mark.parametrize("args", COMMANDS)
def test_packs_as_redis_py(args: tuple[Any, ...]) -> None:
    ours = _ours()
    theirs = aioredis.Connection(host="localhost")
    assert b"".join(ours.pack_command(*args)) == b"".join(theirs.pack_command(*args))


def test_refuses_a_bool_as_redis_py() -> None:
    with pytest.raises(DataError):
        _ours().pack_command("SET", "a", True)


def _ours() -> aioredis.connection.AbstractConnection:
    kind: Any = connection_class("redis://localhost")
    connection: aioredis.connection.AbstractConnection = kind(host="localhost")
    return connection
