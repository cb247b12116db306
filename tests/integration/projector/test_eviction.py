"""The projector on a real server lets runs at rest go once their rows are stored, and takes
them back from those rows (``RedisStore.rows``) when the log says more of them: a restart of an
ended run, a delete. Every fold ends holding only the runs that move; its rows end as a
rebuild's from zero; logged in as the projector's ACL user, it is refused nothing."""

from __future__ import annotations

import redis.asyncio as aioredis

from services.core import acl
from services.core.client import connect
from services.core.settings import Settings
from services.core.store import EventStore
from services.projector.app import build_projector
from services.projector.settings import ProjectorSettings
from tests.acl_users import refused, server_ms
from tests.integration.projector.test_projector_process import (
    append_all,
    assert_rows_of_a_rebuild,
    simulated_events,
)
from tests.unit.projections.test_eviction import assert_only_moving_runs_held, moving


async def test_runs_at_rest_leave_the_projector_and_come_back_from_their_rows(
    redis: aioredis.Redis, redis_url: str, projector_user: aioredis.Redis
) -> None:
    since = server_ms(redis_url)
    events = simulated_events(seed=5, steps=3000, runs=30)
    store = EventStore(connect(redis_url), Settings(redis_url=redis_url))
    settings = ProjectorSettings(redis_url=redis_url, projector_batch=40, projector_rest_s=0)
    projector = build_projector(settings, projector_user)
    try:
        await projector.start()
        for start in range(0, len(events), 60):  # the log grows while the projector follows
            await append_all(store, events[start : start + 60])
            while await projector.step(0):
                pass
        await projector.flush()
    finally:
        await store.close()

    runner = projector.runner
    assert runner is not None
    assert runner.evicted > 50
    assert runner.restored > 5
    assert_only_moving_runs_held(runner, moving(events))
    await assert_rows_of_a_rebuild(redis)
    assert refused(redis_url, acl.PROJECTOR, since) == []
