"""``RUNPLANE_RETAIN``: the active log-collector archives what of the log is older, pass after
pass, as ``mcli admin archive --before`` does; every reader still reads the whole log."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis.asyncio as aioredis
from pydantic import ValidationError

from events import keys
from services.core.archive import MANIFEST, Archive, pointer
from services.core.client import connect
from services.core.settings import Settings
from services.core.store import EventStore
from services.log_collector.settings import LogCollectorSettings
from tests.integration.log_collector.helpers import collector
from tests.integration.test_archive import a_log, whole_log
from tests.waiting import eventually


async def test_the_active_collector_archives_what_is_older_pass_after_pass(
    redis: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    root = tmp_path / "event-archive"
    store = EventStore(connect(redis_url), Settings(redis_url=redis_url))
    try:
        await a_log(store, seed=3, steps=300, runs=6)
        first = await whole_log(store)
        retained = {"RUNPLANE_RETAIN": "1s", "RUNPLANE_RETAIN_EVERY_S": "0.2"}
        async with collector(
            redis_url, redis, tmp_path / "output", RUNPLANE_EVENT_ARCHIVE=str(root), **retained
        ):
            await eventually(
                lambda: redis.xlen(keys.log_stream(0)), equals=0, what="the log archived"
            )
            await a_log(store, seed=4, steps=100, runs=2)  # newer: archived a pass later
            everything = await whole_log(store)
            await eventually(
                lambda: redis.xlen(keys.log_stream(0)), equals=0, what="the newer part too"
            )
        assert everything[: len(first)] == first
        listed = Archive(root).manifest().segments
        assert sum(segment.events for segment in listed) == len(everything)
        found = await pointer(redis, 0)
        assert found is not None
        assert (found.dir, found.last) == (str(root.resolve()), everything[-1].position)
        assert (root / MANIFEST).exists()
        fresh = EventStore(connect(redis_url), Settings(redis_url=redis_url))
        try:  # a new reader reads the whole log, from the archive
            assert await whole_log(fresh) == everything
        finally:
            await fresh.close()
    finally:
        await store.close()


def test_retain_is_a_span_and_needs_a_place() -> None:
    with pytest.raises(ValidationError, match="a positive span such as 30m"):
        LogCollectorSettings(retain="a week", event_archive=Path("/a"))
    with pytest.raises(ValidationError, match="RUNPLANE_RETAIN needs RUNPLANE_EVENT_ARCHIVE"):
        LogCollectorSettings(retain="7d")
    assert LogCollectorSettings(retain="7d", event_archive=Path("/a")).retain_s == 7 * 86400
    assert LogCollectorSettings().retain_s is None
