"""A consumer group's lag, as ``/metrics`` says it: asked of a real server at each scrape."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from services.core import metrics
from services.core.groups import ensure_group


def lag(group: str) -> float | None:
    return metrics.REGISTRY.get_sample_value("runplane_consumer_lag_events", {"group": group})


async def test_the_lag_counts_what_is_undelivered_and_unacknowledged(
    redis: aioredis.Redis,
) -> None:
    stream, group = "lag-test", "lag-group"
    for n in range(5):
        await redis.xadd(stream, {"n": n})
    await ensure_group(redis, stream, group)
    await metrics.refresh()
    assert lag(group) == 5  # none delivered yet

    read: Any = await redis.xreadgroup(group, "c1", {stream: ">"}, count=2)
    positions = [position for position, _ in read[0][1]]
    assert len(positions) == 2
    await metrics.refresh()
    assert lag(group) == 5  # 3 not delivered, 2 delivered but not acknowledged

    await redis.xack(stream, group, *positions)
    await metrics.refresh()
    assert lag(group) == 3
    assert f'runplane_consumer_lag_events{{group="{group}"}} 3.0' in metrics.render()


async def test_a_failing_hook_leaves_the_scrape_answering(redis: aioredis.Redis) -> None:
    async def broken() -> None:
        raise ConnectionError("the server is gone")

    metrics.refresh_with("broken-for-test", broken)
    try:
        await metrics.refresh()  # logged, not raised
        assert "process_start_time_seconds" in metrics.render()
    finally:
        metrics._REFRESHERS.pop("broken-for-test")
