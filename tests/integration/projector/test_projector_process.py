"""The projector as a real process over a real server: killed -9 while a writer appends, then
started again, it ends with exactly the rows of a rebuild from zero; and the read API on them.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import cast

import redis.asyncio as aioredis

from events import keys
from events.model import AnyEvent
from events.status import RunStatus
from projections import query
from projections.catalog import NAMES
from projections.rebuild import rebuild
from projections.run_status import RunRow, RunStatusProjection
from services.core.client import connect
from services.core.settings import Settings
from services.core.store import EventStore
from tests.unit.projections.simulator import Simulator
from tests.waiting import eventually

LOG = keys.log_stream(0)


@asynccontextmanager
async def projector_process(url: str, **extra: str) -> AsyncIterator[asyncio.subprocess.Process]:
    env = (
        os.environ
        | extra
        | {
            "RUNPLANE_REDIS_URL": url,
            "RUNPLANE_PROJECTOR_BATCH": "50",
            "RUNPLANE_PROJECTOR_POLL_MS": "20",
            "RUNPLANE_PROJECTOR_COMMIT_EVERY": "200",
            "RUNPLANE_PROJECTOR_PAGE": "100",
        }
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.projector",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


def simulated_events(seed: int, steps: int, runs: int) -> list[AnyEvent]:
    return [record.event for record in Simulator(random.Random(seed), runs=runs).play(steps)]


async def append_all(store: EventStore, events: Sequence[AnyEvent]) -> None:
    """Append in log order, consecutive events of one aggregate together (one script call)."""
    i = 0
    while i < len(events):
        j = i + 1
        while j < len(events) and events[j].aggregate == events[i].aggregate:
            j += 1
        for event in events[i:j]:
            event.time = 0  # the log stamps its own clock
        await store.append(events[i:j], expected_version=None)
        i = j


class HeldWriter:
    """Appends ``events`` in log order in the background (``append_all``), holding the second
    half back until ``release()``: a projector killed before the release is killed mid-stream,
    with events still to come, however fast the first half went."""

    def __init__(self, store: EventStore, events: Sequence[AnyEvent]) -> None:
        half = len(events) // 2
        self._released = asyncio.Event()
        self._task = asyncio.create_task(self._write(store, events[:half], events[half:]))

    async def _write(
        self, store: EventStore, first: Sequence[AnyEvent], rest: Sequence[AnyEvent]
    ) -> None:
        await append_all(store, first)
        await self._released.wait()
        await append_all(store, rest)

    def release(self) -> None:
        self._released.set()

    async def done(self) -> None:
        """Released, every event appended."""
        self.release()
        await self._task


async def last_position(client: aioredis.Redis) -> str:
    entries = cast(list[tuple[bytes, object]], await client.xrevrange(LOG, count=1))
    return entries[0][0].decode()


async def checkpoints(client: aioredis.Redis) -> set[str]:
    found = set()
    for name in NAMES:
        active = cast(bytes | None, await client.get(keys.projection_active(name)))
        if active is None:
            return {"none"}
        value = cast(
            bytes | None, await client.get(keys.projection_checkpoint(name, active.decode()))
        )
        found.add(value.decode() if value else "0-0")
    return found


async def dump(client: aioredis.Redis, name: str, namespace: str) -> dict[str, object]:
    prefix = keys.projection_prefix(name, namespace)
    found: dict[str, object] = {}
    async for raw_key in client.scan_iter(match=f"{prefix}*"):
        key = raw_key.decode()
        kind = await client.type(key)
        if kind == b"hash":
            found[key.removeprefix(prefix)] = await client.hgetall(key)
        elif kind == b"zset":
            found[key.removeprefix(prefix)] = await client.zrange(key, 0, -1, withscores=True)
        else:
            found[key.removeprefix(prefix)] = await client.get(key)
    return found


async def caught_up(client: aioredis.Redis) -> None:
    """Wait until every projection's checkpoint is the log's last entry."""
    end = await last_position(client)
    await eventually(lambda: checkpoints(client), equals={end}, what=f"every projection at {end}")


async def assert_rows_of_a_rebuild(client: aioredis.Redis, partitions: int = 1) -> None:
    """Every projection's active rows are those a rebuild from zero (of a log of
    ``partitions``) stores, and not empty."""
    for name in NAMES:
        active = cast(bytes, await client.get(keys.projection_active(name))).decode()
        fresh = (await rebuild(client, [name], now_ms=1, switch=False, partitions=partitions))[name]
        live = await dump(client, name, active)
        assert live == await dump(client, name, fresh), f"{name} differs from its rebuild"
        assert live, f"{name} is empty"


async def test_a_projector_killed_mid_stream_ends_with_the_rows_of_a_rebuild(
    redis: aioredis.Redis, redis_url: str
) -> None:
    events = simulated_events(seed=11, steps=4000, runs=60)
    store = EventStore(connect(redis_url), Settings(redis_url=redis_url))
    try:
        writer = HeldWriter(store, events)
        async with projector_process(redis_url) as first:
            await eventually(
                lambda: _stored_some(redis), what="the first projector stored some batches"
            )
            first.send_signal(signal.SIGKILL)
        writer.release()
        async with projector_process(redis_url):
            await writer.done()
            await caught_up(redis)
        await assert_rows_of_a_rebuild(redis)
    finally:
        await store.close()


async def _stored_some(client: aioredis.Redis) -> bool:
    value = await client.get(
        keys.projection_checkpoint("run_status", f"v{RunStatusProjection.version}")
    )
    return value is not None and value != b"0-0"


async def test_the_read_api_over_a_projected_log(redis: aioredis.Redis, redis_url: str) -> None:
    events = simulated_events(seed=5, steps=600, runs=12)
    store = EventStore(connect(redis_url), Settings(redis_url=redis_url))
    try:
        await append_all(store, events)
    finally:
        await store.close()
    async with projector_process(redis_url):
        await caught_up(redis)
    page = await query.list_runs(redis, limit=5, include_deleted=True)
    seen = list(page.runs)
    while page.next_cursor is not None:
        page = await query.list_runs(redis, limit=5, include_deleted=True, cursor=page.next_cursor)
        seen += page.runs
    assert len(seen) == 12
    assert [r.created_at for r in seen] == sorted((r.created_at for r in seen), reverse=True)
    first = seen[-1]
    assert await query.get_run(redis, first.name) == first
    assert await query.get_run(redis, first.run_uid) == first
    attempts = await query.attempts(redis, first.name)
    assert [a.index for a in attempts] == list(range(first.resumption_count))
    assert attempts[-1].status == first.status
    by_user = await query.list_runs(redis, user=first.created_by, include_deleted=True)
    assert {r.created_by for r in by_user.runs} == {first.created_by}
    terminal = [RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.STOPPED]
    done = await query.list_runs(redis, statuses=terminal, include_deleted=True, limit=100)
    assert {r.run_uid for r in done.runs} == {r.run_uid for r in seen if r.status in terminal}
    trail = await query.audit(redis, run=first.name)
    assert trail[0].action == "run.submitted"
    assert trail[0].actor == first.created_by
    mine = await query.audit(redis, user=first.created_by)
    assert {e.actor for e in mine} == {first.created_by}
    await the_audit_of_everyone_is_the_folds(redis, seen)
    report = await query.billing_report(redis, "user")
    by_run = await query.billing_report(redis, "run")
    assert (
        report.gpu_ms == by_run.gpu_ms == sum((await query.billing_totals(redis, "run")).values())
    )
    util = await query.utilization(redis)
    assert [c.cluster for c in util] == ["c1"]


async def the_audit_of_everyone_is_the_folds(redis: aioredis.Redis, runs: Sequence[RunRow]) -> None:
    """Everyone's entries come from the log itself: the very entries the fold stored for each
    run, in log order, with the run names; a window and a limit cut that list."""
    everyone = await query.audit(redis, limit=1_000_000)
    order = [_position(e.position) for e in everyone]
    assert order == sorted(order)
    trails = [e for run in runs for e in await query.audit(redis, run=run.run_uid)]
    assert [e for e in everyone if e.run_id] == sorted(trails, key=lambda e: _position(e.position))
    names = {run.run_uid: run.name for run in runs}
    assert all(e.run_name == names[e.run_id] for e in everyone if e.run_id)
    assert any(e.node and not e.run_id for e in everyone)  # node events too
    start, end = everyone[3].time, everyone[-3].time
    inside = [e for e in everyone if start <= e.time < end]
    assert await query.audit(redis, window=(start, end), limit=1_000_000) == inside
    assert await query.audit(redis, window=(start, end), limit=4) == inside[:4]


def _position(position: str) -> tuple[int, int]:
    ms, _, seq = position.partition("-")
    return int(ms), int(seq)


async def test_sigterm_stops_the_projector_cleanly(redis: aioredis.Redis, redis_url: str) -> None:
    store = EventStore(connect(redis_url), Settings(redis_url=redis_url))
    try:
        await append_all(store, simulated_events(seed=2, steps=100, runs=3))
    finally:
        await store.close()
    async with projector_process(redis_url) as process:
        await caught_up(redis)
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            assert await process.wait() == 0
    # It wrote its folds' memory down; the next start takes it up (and drops it).
    assert await _memories(redis) == len(NAMES)
    async with projector_process(redis_url):
        await eventually(lambda: _memories(redis), equals=0, what="the memory taken up")
        await caught_up(redis)
    await assert_rows_of_a_rebuild(redis)


async def _memories(client: aioredis.Redis) -> int:
    found = 0
    for name in NAMES:
        namespace = cast(bytes | None, await client.get(keys.projection_active(name)))
        if namespace is not None:
            found += await client.hlen(keys.projection_memory(name, namespace.decode()))
    return found


async def test_a_rebuild_is_adopted_by_the_running_projector(
    redis: aioredis.Redis, redis_url: str
) -> None:
    events = simulated_events(seed=3, steps=800, runs=10)
    half = len(events) // 2
    store = EventStore(connect(redis_url), Settings(redis_url=redis_url))
    try:
        await append_all(store, events[:half])
        async with projector_process(redis_url, RUNPLANE_PROJECTOR_RETIRE_AFTER_S="0"):
            await caught_up(redis)
            fresh = (await rebuild(redis, ["billing"], now_ms=7))["billing"]
            assert (await redis.get(keys.projection_active("billing"))) == fresh.encode()
            await append_all(store, events[half:])
            await caught_up(redis)  # the rebuild kept up
            await eventually(
                lambda: redis.exists(keys.projection_checkpoint("billing", "v1")),
                equals=0,
                what="the old build dropped",
            )
    finally:
        await store.close()
