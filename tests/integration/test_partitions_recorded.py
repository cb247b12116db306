"""The number of partitions a log was made with is recorded on its server, and a process with
another one refuses it (``services.core.partitions``); the active scheduler records it."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from events import keys
from services.core import partitions
from services.core.partitions import PartitionsChanged


async def test_the_first_record_stands_and_another_number_is_refused(
    redis: aioredis.Redis,
) -> None:
    await partitions.check(redis, 3)  # nothing recorded yet: a reader goes on
    assert await redis.get(keys.log_partitions()) is None
    await partitions.check(redis, 3, record=True)
    await partitions.check(redis, 3, record=True)
    assert await redis.get(keys.log_partitions()) == b"3"
    for other, record in ((1, False), (4, True)):
        with pytest.raises(PartitionsChanged, match="made with 3 partitions") as refused:
            await partitions.check(redis, other, record=record)
        assert (refused.value.recorded, refused.value.configured) == (3, other)
    assert await redis.get(keys.log_partitions()) == b"3"
