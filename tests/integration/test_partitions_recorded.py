"""The number of partitions a log was made with is recorded on its server, and a process with
another one refuses it (``services.core.partitions``); the active scheduler records it, and every
store checks it before its first append or read."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from events import keys
from services.core import partitions
from services.core.client import connect
from services.core.partitions import PartitionsChanged
from services.core.settings import Settings
from services.core.store import EventStore
from tests import factories as f


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


async def test_a_store_with_another_number_appends_and_reads_nothing(
    redis: aioredis.Redis, redis_url: str
) -> None:
    # An appender (the API, a node-agent) pointed at a log of 3 partitions with 1 would put a
    # run's events in, and look for them in, the wrong partition: its store refuses both.
    await partitions.check(redis, 3, record=True)
    store = EventStore(connect(redis_url), Settings(redis_url=redis_url, partitions=1))
    submitted = f.submitted()
    try:
        with pytest.raises(PartitionsChanged, match="RUNPLANE_PARTITIONS is 1: set it to 3"):
            await store.append([submitted], expected_version=0)
        with pytest.raises(PartitionsChanged):
            await store.history(submitted.aggregate)
        assert await redis.keys("*") == [keys.log_partitions().encode()]
    finally:
        await store.close()
    right = EventStore(connect(redis_url), Settings(redis_url=redis_url, partitions=3))
    try:
        await right.append([submitted], expected_version=0)
        assert [r.event.aggregate for r in await right.history(submitted.aggregate)] == [
            submitted.aggregate
        ]
    finally:
        await right.close()
