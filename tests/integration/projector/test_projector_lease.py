"""Two projectors on one log: one folds and commits, the other stands by and takes over when
the first is killed -9; the rows end equal to a rebuild. And a commit from a projector that
lost its lease is refused whole."""

from __future__ import annotations

import signal
from typing import cast

import pytest
import redis.asyncio as aioredis

from events import keys
from projections.base import Row
from projections.engine import Batch, Part
from projections.errors import Superseded
from projections.storage import RedisStore
from services.core.client import connect
from services.core.settings import Settings
from services.core.store import EventStore
from tests.integration.projector.test_projector_process import (
    HeldWriter,
    assert_rows_of_a_rebuild,
    caught_up,
    checkpoints,
    projector_process,
    simulated_events,
)
from tests.waiting import eventually

LEASE = keys.projector_lease()


async def _holder(client: aioredis.Redis) -> str | None:
    value = cast(bytes | None, await client.get(LEASE))
    return value.decode().split("/", 1)[0] if value else None


async def test_one_projector_is_active_and_a_standby_takes_over_after_a_kill_9(
    redis: aioredis.Redis, redis_url: str
) -> None:
    events = simulated_events(seed=17, steps=4000, runs=60)
    store = EventStore(connect(redis_url), Settings(redis_url=redis_url))
    fast = {"RUNPLANE_PROJECTOR_LEASE_TTL_MS": "1000"}
    try:
        writer = HeldWriter(store, events)
        async with (
            projector_process(redis_url, RUNPLANE_PROJECTOR_CONSUMER="projector@a", **fast) as a,
            projector_process(redis_url, RUNPLANE_PROJECTOR_CONSUMER="projector@b", **fast) as b,
        ):
            first = await eventually(lambda: _holder(redis), what="a projector holding the lease")
            active, standby = (a, "projector@b") if first == "projector@a" else (b, "projector@a")
            await eventually(lambda: checkpoints(redis), what="some rows stored")
            active.send_signal(signal.SIGKILL)
            writer.release()
            await eventually(lambda: _holder(redis), equals=standby, what="the standby took over")
            await writer.done()
            await caught_up(redis)
        await assert_rows_of_a_rebuild(redis)
    finally:
        await store.close()


async def test_a_commit_without_the_lease_is_refused_and_writes_nothing(
    redis: aioredis.Redis,
) -> None:
    await redis.set(LEASE, "projector@other/1")
    part = Part(
        name="audit",
        namespace="v1",
        expected_checkpoint="0-0",
        checkpoint="5-0",
        expect_active="",
        activate=True,
        rows=(Row(kind="entry", id="r1", body=b"{}"),),
    )
    store = RedisStore(redis, fence=(LEASE, "projector@me/1"))
    with pytest.raises(Superseded) as refused:
        await store.commit(Batch((part,)))
    assert refused.value.what == "fenced"
    assert refused.value.found == "projector@other/1"
    assert await redis.get(keys.projection_checkpoint("audit", "v1")) is None
    assert await redis.get(keys.projection_active("audit")) is None

    await redis.set(LEASE, "projector@me/1")  # the same batch, from the holder: taken
    await store.commit(Batch((part,)))
    assert await redis.get(keys.projection_checkpoint("audit", "v1")) == b"5-0"
