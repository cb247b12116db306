"""The shim's minimal Redis client against the real server."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from services.node_agent.errors import RespError
from services.node_agent.shim.resp import Client
from tests import raw


async def test_pipelined_commands_against_the_server(redis: aioredis.Redis, redis_url: str) -> None:
    client = Client(redis_url)
    try:
        replies = client.execute(
            [[b"XADD", b"rp:test", b"*", b"l", b"one"], [b"XADD", b"rp:test", b"*", b"l", b"\xff"]]
        )
        assert len(replies) == 2
        assert [fields[b"l"] for _, fields in await raw.xrange(redis, "rp:test")] == [
            b"one",
            b"\xff",
        ]
        with pytest.raises(RespError, match="WRONGTYPE"):
            client.execute([[b"SET", b"rp:k", b"v"], [b"XADD", b"rp:k", b"*", b"l", b"x"]])
        assert client.execute([[b"PING"]]) == [b"PONG"]  # the connection goes on
    finally:
        client.close()


async def test_a_database_in_the_url_is_selected(redis: aioredis.Redis, redis_url: str) -> None:
    base = redis_url.rsplit("/", 1)[0] if redis_url.count("/") > 2 else redis_url
    client = Client(f"{base}/3")
    try:
        client.execute([[b"SET", b"rp:in-db-3", b"yes"]])
    finally:
        client.close()
    assert await redis.get("rp:in-db-3") is None  # the fixture's client is on database 0
    other = aioredis.Redis.from_url(f"{base}/3")
    try:
        assert await other.get("rp:in-db-3") == b"yes"
        await other.flushdb()
    finally:
        await other.aclose()
