"""Typed raw stream commands for tests that look under the store (redis-py's replies are
typed as unions of every decoding mode)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import cast

import redis.asyncio as aioredis

Entry = tuple[str, dict[bytes, bytes]]


async def xrange(client: aioredis.Redis, stream: str) -> list[Entry]:
    entries = cast(list[tuple[bytes, dict[bytes, bytes]]], await client.xrange(stream))
    return [(position.decode(), fields) for position, fields in entries]


async def xadd(client: aioredis.Redis, stream: str, fields: Mapping[str, str | bytes]) -> str:
    position = cast(bytes, await client.xadd(stream, fields))  # type: ignore[arg-type]
    return position.decode()
