"""A projector on a real server that stops cleanly writes its folds' memory down beside their
checkpoints; the next one takes it up and reads the log from there, not from zero, and its rows
end as a rebuild's from zero. Logged in as the projector's ACL user, it is refused nothing."""

from __future__ import annotations

import redis.asyncio as aioredis

from events import keys
from projections.catalog import NAMES
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


async def test_a_projector_takes_up_the_memory_its_predecessor_kept_at_a_clean_stop(
    redis: aioredis.Redis, redis_url: str, projector_user: aioredis.Redis
) -> None:
    since = server_ms(redis_url)
    events = simulated_events(seed=7, steps=2000, runs=30)
    half = len(events) // 2
    store = EventStore(connect(redis_url), Settings(redis_url=redis_url))
    settings = ProjectorSettings(redis_url=redis_url, projector_batch=40, projector_rest_s=0)
    try:
        first = build_projector(settings, projector_user)
        await first.start()
        await append_all(store, events[:half])
        while await first.step(0):
            pass
        await first.flush()
        await first.stop()
        kept = [
            await redis.hlen(keys.projection_memory(name, await _active(redis, name)))
            for name in NAMES
        ]
        assert kept == [1] * len(NAMES)

        await append_all(store, events[half:])  # written while no projector runs
        second = build_projector(settings, projector_user)
        await second.start()
        while await second.step(0):
            pass
        await second.flush()
    finally:
        await store.close()

    assert second.runner is not None
    assert sorted(second.runner.recalled) == sorted(NAMES)
    assert second.runner.restored > 0  # runs the first let go, back from their rows
    await assert_rows_of_a_rebuild(redis)
    assert refused(redis_url, acl.PROJECTOR, since) == []


async def _active(redis: aioredis.Redis, name: str) -> str:
    namespace = await redis.get(keys.projection_active(name))
    assert namespace is not None
    return namespace.decode() if isinstance(namespace, bytes) else str(namespace)
