"""Consumer groups on a real server: everything from position 0, acknowledgement after the
effect, entries of a killed consumer claimed by a live one, dead letters for what cannot be
decoded."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from events import codec, keys
from events.codec import Recorded
from events.model import AttemptQueued
from services.core.client import connect
from services.core.consumer import LogConsumer, make_broker
from services.core.settings import Settings
from services.core.store import EventStore
from tests import factories as f
from tests import raw
from tests.waiting import eventually

LOG = keys.log_stream(0)


@asynccontextmanager
async def running_consumer(
    url: str,
    group: str,
    consumer: str,
    handler: Callable[[Recorded], Awaitable[None]],
    takes: frozenset[type] | None = None,
) -> AsyncIterator[LogConsumer]:
    client = connect(url)
    broker = make_broker(Settings(redis_url=url))
    settings = Settings(redis_url=url, claim_idle_ms=300, max_deliveries=3)
    log_consumer = LogConsumer(
        broker,
        group=group,
        consumer=consumer,
        handler=handler,
        settings=settings,
        poll_ms=50,
        takes=takes,
    )
    await log_consumer.prepare(client)
    await broker.start()
    try:
        yield log_consumer
    finally:
        await broker.stop()
        await client.aclose()


async def _append_runs(url: str, n: int) -> list[str]:
    store = EventStore(connect(url), Settings(redis_url=url))
    try:
        return [
            (await store.append([f.submitted()], expected_version=0)).positions[0] for _ in range(n)
        ]
    finally:
        await store.close()


async def test_a_new_group_sees_what_was_written_before_it_and_after(
    redis: aioredis.Redis, redis_url: str
) -> None:
    before = await _append_runs(redis_url, 5)
    seen: list[str] = []

    async def record(recorded: Recorded) -> None:
        seen.append(recorded.position)

    async with running_consumer(redis_url, "projector", "p1", record):
        after = await _append_runs(redis_url, 5)
        await eventually(lambda: len(seen) == 10, what="all 10 events consumed")
        await eventually(
            lambda: _pending(redis, "projector"), equals=0, what="everything acknowledged"
        )
    assert seen == before + after


async def test_entries_of_a_killed_consumer_are_claimed_and_applied_once(
    redis: aioredis.Redis, redis_url: str
) -> None:
    positions = await _append_runs(redis_url, 30)
    dead = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.integration.consumer_proc", redis_url, "agents", "dead"
    )
    try:
        await eventually(
            lambda: _pending(redis, "agents"), equals=30, what="the doomed consumer took all 30"
        )
        await eventually(lambda: redis.llen("taken:dead"), what="its effect under way")
    finally:
        dead.kill()  # kill -9: after reading, before acknowledging
        await dead.wait()

    applied: list[str] = []

    async def idempotent_effect(recorded: Recorded) -> None:
        if await redis.set(f"effect:{recorded.event.id}", 1, nx=True):
            applied.append(recorded.position)

    async with running_consumer(redis_url, "agents", "alive", idempotent_effect):
        await eventually(lambda: len(applied) == 30, what="all 30 claimed and applied")
        await eventually(lambda: _pending(redis, "agents"), equals=0, what="all acknowledged")
    assert sorted(applied) == sorted(positions)


async def test_undecodable_and_failing_entries_go_to_dead_letters_and_the_consumer_goes_on(
    redis: aioredis.Redis, redis_url: str
) -> None:
    good_before = await _append_runs(redis_url, 2)
    corrupt = await raw.xadd(redis, LOG, {"k": "run.submitted@1", "e": b"{not json"})
    unknown = await raw.xadd(redis, LOG, {"k": "run.teleported@1", "e": b"{}"})
    poison = (await _append_runs(redis_url, 1))[0]
    good_after = await _append_runs(redis_url, 2)
    handled: list[str] = []

    async def handler(recorded: Recorded) -> None:
        if recorded.position == poison:
            raise RuntimeError("this entry always breaks the handler")
        handled.append(recorded.position)

    async with running_consumer(redis_url, "scheduler", "s1", handler):
        await eventually(lambda: len(handled) == 4, what="the good entries handled")
        await eventually(
            lambda: redis.xlen(keys.dead_letter_stream("scheduler")), equals=3, what="3 dead"
        )
        await eventually(lambda: _pending(redis, "scheduler"), equals=0, what="nothing stuck")

    assert handled == good_before + good_after
    letters = await raw.xrange(redis, keys.dead_letter_stream("scheduler"))
    by_position = {fields[b"position"].decode(): fields for _, fields in letters}
    assert set(by_position) == {corrupt, unknown, poison}
    assert b"broken JSON" in by_position[corrupt][b"error"]
    assert b"unknown event type 'run.teleported'" in by_position[unknown][b"error"]
    assert b"handler failed 3x" in by_position[poison][b"error"]
    assert by_position[corrupt][b"field:e"] == b"{not json"  # the entry is kept whole


async def test_a_consumer_that_names_its_types_gets_only_those_and_dead_letters_the_unknown(
    redis: aioredis.Redis, redis_url: str
) -> None:
    submitted = await _append_runs(redis_url, 3)
    entry = {name.decode(): value for name, value in codec.encode(f.queued("r-1")).items()}
    queued = await raw.xadd(redis, LOG, entry)
    unknown = await raw.xadd(redis, LOG, {"k": "run.teleported@1", "e": b"{}"})
    handled: list[str] = []

    async def handler(recorded: Recorded) -> None:
        handled.append(recorded.position)

    async with running_consumer(
        redis_url, "collector", "c1", handler, takes=frozenset({AttemptQueued})
    ):
        await eventually(
            lambda: redis.xlen(keys.dead_letter_stream("collector")), equals=1, what="1 dead"
        )
        await eventually(lambda: _pending(redis, "collector"), equals=0, what="all acknowledged")
        await eventually(lambda: len(handled), equals=1, what="the queued entry handled")

    assert handled == [queued]  # the submissions were passed over, undecoded
    assert submitted
    letters = await raw.xrange(redis, keys.dead_letter_stream("collector"))
    assert [fields[b"position"].decode() for _, fields in letters] == [unknown]


async def _pending(client: aioredis.Redis, group: str) -> int | None:
    try:
        summary = await client.xpending(LOG, group)
    except ResponseError:  # the group does not exist yet
        return None
    return int(summary["pending"])
