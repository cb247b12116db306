"""The projector's transaction on a real server: all or nothing, checked, idempotent."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from events import keys
from projections.base import Row
from projections.engine import Batch, Part
from projections.errors import Superseded
from projections.storage import RedisStore


def batch(expected: str, checkpoint: str, *, activate: bool = False, active: str = "") -> Batch:
    rows = (
        Row(kind="run", id="r1", body=b'{"a":1}', index=(("created", 5),)),
        Row(kind="run", id="r0", body=None, unindex=("created",)),
    )
    part = Part(
        name="demo",
        namespace="v1",
        expected_checkpoint=expected,
        checkpoint=checkpoint,
        expect_active=active,
        activate=activate,
        rows=rows,
    )
    return Batch((part,))


async def test_a_batch_is_stored_whole_and_once(redis: aioredis.Redis) -> None:
    store = RedisStore(redis)
    await redis.hset(keys.projection_rows("demo", "v1", "run"), "r0", b"old")
    await redis.zadd(keys.projection_index("demo", "v1", "created"), {"r0": 1})
    first = batch("0-0", "10-0", activate=True)
    await store.commit(first)
    assert await redis.hgetall(keys.projection_rows("demo", "v1", "run")) == {b"r1": b'{"a":1}'}
    assert await redis.zrange(keys.projection_index("demo", "v1", "created"), 0, -1) == [b"r1"]
    assert await store.checkpoint("demo", "v1") == ((10, 0),)
    assert await store.active("demo") == "v1"
    await store.commit(first)  # sent again (a lost reply): recognised, nothing changes
    assert await store.checkpoint("demo", "v1") == ((10, 0),)
    with pytest.raises(Superseded, match="conflict"):
        await store.commit(batch("5-0", "20-0", active="v1"))  # another writer's view
    with pytest.raises(Superseded, match="moved"):
        await store.commit(batch("10-0", "20-0", active="v0"))  # readers are elsewhere
    assert await store.checkpoint("demo", "v1") == ((10, 0),)
    await store.commit(batch("10-0", "20-0", active="v1"))
    assert await store.checkpoint("demo", "v1") == ((20, 0),)
    assert await store.drop("demo", "v1") == 2
    assert await store.checkpoint("demo", "v1") == ((0, 0),)
    assert await store.active("demo") == "v1"  # the pointer is the projection's, not the build's
