"""The projector over a log of three partitions, a real process over a real server: killed -9
while a writer appends to every partition, then started again, it ends with each projection's
checkpoint at every partition's end and exactly the rows of a rebuild from zero (which reads
the partitions one after another), also one over two lanes (processes); and the lag it exports
counts every partition."""

from __future__ import annotations

import random
import signal
from typing import cast

import redis.asyncio as aioredis

from events import keys
from events.model import AnyEvent
from projections.base import format_checkpoint, parse_position
from projections.catalog import NAMES
from services.core import metrics
from services.core.client import connect
from services.core.settings import Settings
from services.core.store import EventStore
from services.projector.lanes import rebuild_many
from services.projector.metrics import measure_lag
from tests.integration.projector.test_projector_process import (
    HeldWriter,
    _stored_some,
    assert_rows_of_a_rebuild,
    checkpoints,
    dump,
    projector_process,
)
from tests.unit.projections.simulator import Simulator
from tests.unit.projections.test_partitions import with_refusals
from tests.waiting import eventually

P = 3


def lag(projection: str) -> float | None:
    return metrics.REGISTRY.get_sample_value(
        "runplane_projection_lag_seconds", {"projection": projection}
    )


def simulated_events(seed: int, steps: int, runs: int) -> list[AnyEvent]:
    """Runs, nodes and users' refused requests about runs: every partition gets some."""
    rng = random.Random(seed)
    return [r.event for r in with_refusals(Simulator(rng, runs=runs).play(steps), rng)]


async def ends(client: aioredis.Redis) -> str:
    """The checkpoint of a build that folded every partition to its end."""
    found = []
    for partition in range(P):
        entries = cast(
            list[tuple[bytes, object]],
            await client.xrevrange(keys.log_stream(partition), count=1),
        )
        found.append(parse_position(entries[0][0].decode()) if entries else (0, 0))
    return format_checkpoint(found)


async def test_a_projector_over_three_partitions_killed_mid_stream_ends_with_a_rebuild(
    redis: aioredis.Redis, redis_url: str
) -> None:
    events = simulated_events(seed=11, steps=3000, runs=40)
    assert {keys.partition_of(e.aggregate, P) for e in events} == set(range(P))
    store = EventStore(connect(redis_url), Settings(redis_url=redis_url, partitions=P))
    env = {"RUNPLANE_PARTITIONS": str(P)}
    try:
        writer = HeldWriter(store, events)
        async with projector_process(redis_url, **env) as first:
            await eventually(
                lambda: _stored_some(redis), what="the first projector stored some batches"
            )
            first.send_signal(signal.SIGKILL)
        writer.release()
        async with projector_process(redis_url, **env):
            await writer.done()
            end = await ends(redis)
            assert "," in end  # positions of several partitions
            await eventually(
                lambda: checkpoints(redis), equals={end}, what=f"every projection at {end}"
            )
        await assert_rows_of_a_rebuild(redis, P)
        # Over two lanes, the second a process of its own: it reads the three partitions too.
        settings = Settings(redis_url=redis_url, partitions=P)
        laned = await rebuild_many(settings, NAMES, now_ms=2, switch=False, lanes=2)
        for name in NAMES:
            active = cast(bytes, await redis.get(keys.projection_active(name))).decode()
            assert await dump(redis, name, laned[name]) == await dump(redis, name, active), name
        await measure_lag(redis, NAMES, P)
        for name in NAMES:
            assert lag(name) == 0
    finally:
        await store.close()
