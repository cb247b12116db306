"""Each projection's lag, as ``/metrics`` says it: the log time from its checkpoint to the
log's newest entry, asked of a real server at each scrape."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis.asyncio as aioredis

from events import codec, keys
from projections.catalog import NAMES
from services.core import acl, metrics
from services.core.client import connect
from services.core.settings import Settings
from services.core.store import EventStore
from services.projector.app import build_projector
from services.projector.metrics import export_lag
from services.projector.settings import ProjectorSettings
from tests.acl_users import refused, server_ms
from tests.integration.projector.test_projector_process import (
    LOG,
    append_all,
    last_position,
    simulated_events,
)


def lag(projection: str) -> float | None:
    return metrics.REGISTRY.get_sample_value(
        "runplane_projection_lag_seconds", {"projection": projection}
    )


@pytest.fixture
def exported(redis: aioredis.Redis) -> Iterator[None]:
    export_lag(redis)
    try:
        yield
    finally:
        metrics._REFRESHERS.pop("projection-lag")  # its client closes with the test


async def test_the_lag_is_the_log_time_from_the_checkpoint_to_the_newest_entry(
    redis: aioredis.Redis, redis_url: str, projector_user: aioredis.Redis
) -> None:
    since = server_ms(redis_url)
    export_lag(projector_user)  # asked as the projector asks: its ACL user's rights suffice
    try:
        await _measured(redis)
    finally:
        metrics._REFRESHERS.pop("projection-lag")
    assert refused(redis_url, acl.PROJECTOR, since) == []


async def _measured(redis: aioredis.Redis) -> None:
    await metrics.refresh()
    assert {name: lag(name) for name in NAMES} == dict.fromkeys(NAMES, 0.0)  # an empty log

    for position in ("1000-0", "4000-0", "4000-1", "9500-0"):
        await redis.xadd(LOG, {"k": "x"}, id=position)
    await redis.set(keys.projection_active("run_status"), "v1")
    await redis.set(keys.projection_checkpoint("run_status", "v1"), "4000-1")
    await redis.set(keys.projection_active("audit"), "v2")
    await redis.set(keys.projection_checkpoint("audit", "v2"), "9500-0")
    await redis.set(keys.projection_active("billing"), "v3")  # a build that stored nothing
    await metrics.refresh()

    assert lag("run_status") == 5.5
    assert lag("audit") == 0.0  # caught up
    assert lag("billing") == 8.5  # behind by the whole log
    assert lag("attempts") == 8.5  # no build at all yet
    assert 'runplane_projection_lag_seconds{projection="run_status"} 5.5' in metrics.render()


@pytest.mark.usefixtures("exported")
async def test_a_projector_folding_the_log_brings_every_lag_to_zero(
    redis: aioredis.Redis, redis_url: str
) -> None:
    events = simulated_events(seed=5, steps=300, runs=10)
    *early, late = events
    store = EventStore(connect(redis_url), Settings(redis_url=redis_url))
    try:
        await append_all(store, early)
    finally:
        await store.close()
    projector = build_projector(ProjectorSettings(redis_url=redis_url), redis)
    await projector.start()  # catches up with the log and stores it
    await metrics.refresh()
    assert {name: lag(name) for name in NAMES} == dict.fromkeys(NAMES, 0.0)

    # One more event, a minute later in log time than the last (the log's clock is the
    # server's: the position is given here so that the lag is known).
    newest_ms = int((await last_position(redis)).split("-")[0]) + 60_000
    version = sum(1 for event in events if event.aggregate == late.aggregate)
    late.time = 0
    fields = {**codec.encode(late), codec.VERSION: str(version).encode()}
    await redis.xadd(LOG, fields, id=f"{newest_ms}-0")  # type: ignore[arg-type]
    await metrics.refresh()
    assert {name: lag(name) for name in NAMES} == dict.fromkeys(NAMES, 60.0)

    assert await projector.step(block_ms=1000) == 1
    await projector.flush()
    await metrics.refresh()
    assert {name: lag(name) for name in NAMES} == dict.fromkeys(NAMES, 0.0)
