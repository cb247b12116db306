"""The projector's consumer group on one partition's global stream: read, claim, acknowledge,
advance (the projector has one per partition, each on its own stream: no command names two)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

import redis.asyncio as aioredis

from events import keys
from projections.reader import Entry
from services.core.groups import Delivery, dead_letter, ensure_group, group_info


def _entries(raw: Any) -> list[Entry]:
    return [(position.decode(), fields) for position, fields in raw if fields is not None]


def _after(a: str, b: str) -> bool:
    def parse(p: str) -> tuple[int, int]:
        ms, _, seq = p.partition("-")
        return int(ms), int(seq or 0)

    return parse(a) > parse(b)


class RedisGroup:
    def __init__(
        self, client: aioredis.Redis, group: str, consumer: str, partition: int = 0
    ) -> None:
        self.redis = client
        self.group = group
        self.consumer = consumer
        self.stream = keys.log_stream(partition)

    async def ensure(self) -> None:
        await ensure_group(self.redis, self.stream, self.group)

    async def read(self, count: int, block_ms: int) -> Sequence[Entry]:
        """New entries for this consumer (waiting up to ``block_ms`` for the first; 0: not)."""
        block = block_ms if block_ms > 0 else None  # the server's BLOCK 0 waits forever
        reply = cast(
            list[tuple[bytes, Any]],
            await self.redis.xreadgroup(
                self.group, self.consumer, {self.stream: ">"}, count=count, block=block
            ),
        )
        found: list[Entry] = []
        for _, entries in reply or []:
            found += _entries(entries)
        return found

    async def claim(self, min_idle_ms: int, start: str, count: int) -> tuple[str, Sequence[Entry]]:
        """One page of pending entries idle for ``min_idle_ms``, taken over by this consumer."""
        reply = await self.redis.xautoclaim(
            self.stream, self.group, self.consumer, min_idle_ms, start_id=start, count=count
        )
        next_start = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
        return next_start, _entries(reply[1])

    async def ack(self, positions: Sequence[str]) -> None:
        if positions:
            await self.redis.xack(self.stream, self.group, *positions)

    async def dead_letter(self, position: str, fields: Mapping[bytes, bytes], why: str) -> None:
        """Keep an entry nobody can decode, whole, with the error (as ``LogConsumer`` does)."""
        where = Delivery(self.stream, self.group, self.consumer, position)
        await dead_letter(self.redis, where, fields, why)

    async def advance(self, position: str) -> None:
        """Move the group's delivery point up to ``position`` (never back)."""
        info = await group_info(self.redis, self.stream, self.group)
        if info is None:
            return
        last = info["last-delivered-id"]
        last_text = last.decode() if isinstance(last, bytes) else str(last)
        if _after(position, last_text):
            await self.redis.xgroup_setid(self.stream, self.group, position)
