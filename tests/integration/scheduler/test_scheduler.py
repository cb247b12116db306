"""The scheduler as a real process against the real server, with the test playing the
node-agents: runs go through the lifecycle, nothing is double-booked across a kill -9, one
instance is active at a time, and a lost node fails and retries its attempt."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from events import keys
from events.model import (
    AttemptCompleted,
    AttemptFailed,
    AttemptRunning,
    AttemptScheduled,
    AttemptStopped,
    NodeLost,
    RankExited,
    RetryScheduled,
)
from events.status import RunStatus as S
from services.core.client import connect
from services.core.settings import Settings
from services.core.store import EventStore
from services.core.valkey import ValkeyProcess
from tests.integration.scheduler.harness import (
    Agents,
    run_events,
    scheduler_process,
    status,
    submit,
)
from tests.waiting import eventually


@pytest.fixture
async def store(redis: aioredis.Redis, redis_url: str) -> AsyncIterator[EventStore]:
    store = EventStore(connect(redis_url), Settings(redis_url=redis_url))
    yield store
    await store.close()


async def _wait_status(store: EventStore, run_id: str, expected: S, within: float = 20) -> None:
    await eventually(
        lambda: status(store, run_id), equals=expected, what=f"{run_id} {expected}", within=within
    )


async def _scheduled(store: EventStore, run_id: str) -> list[AttemptScheduled]:
    return [e for e in await run_events(store, run_id) if isinstance(e, AttemptScheduled)]


async def test_a_one_gpu_run_goes_running_then_completed(
    store: EventStore, redis_url: str, tmp_path: Path
) -> None:
    async with scheduler_process(redis_url, tmp_path), Agents(store) as agents:
        await agents.register("n1")
        run_id = await submit(store, gpus=1)
        await _wait_status(store, run_id, S.RUNNING)
        await agents.exit(run_id, 0, 0)
        await _wait_status(store, run_id, S.COMPLETED)

    events = await run_events(store, run_id)
    [scheduled] = [e for e in events if isinstance(e, AttemptScheduled)]
    assert [(r.node, len(r.gpus)) for r in scheduled.ranks] == [("n1", 1)]
    ours = [
        e for e in events if isinstance(e, AttemptScheduled | AttemptRunning | AttemptCompleted)
    ]
    assert {e.actor for e in ours} == {"scheduler@a"}


async def test_a_two_node_run_gets_two_distinct_nodes(
    store: EventStore, redis_url: str, tmp_path: Path
) -> None:
    async with scheduler_process(redis_url, tmp_path), Agents(store) as agents:
        for node in ("n1", "n2", "n3"):
            await agents.register(node)
        run_id = await submit(store, gpus=16)
        await _wait_status(store, run_id, S.RUNNING)

    [scheduled] = await _scheduled(store, run_id)
    assert [rank.rank for rank in scheduled.ranks] == [0, 1]
    assert len({rank.node for rank in scheduled.ranks}) == 2
    assert all(rank.gpus == list(range(8)) for rank in scheduled.ranks)


async def test_kill_9_in_a_burst_places_every_run_once_and_double_books_nothing(
    store: EventStore, redis_url: str, tmp_path: Path
) -> None:
    async with Agents(store) as agents:
        for node in ("n1", "n2", "n3", "n4"):
            await agents.register(node, gpus=4)  # 16 GPUs for ~100 asked: most runs must wait
        async with scheduler_process(redis_url, tmp_path, "first") as first:
            await eventually(
                lambda: store.redis.exists(keys.scheduler_lease()), what="the scheduler active"
            )
            burst = asyncio.ensure_future(_submit_one_by_one(store, 50))
            await eventually(lambda: len(agents.placed) >= 3, what="placements under way")
            await first.kill()  # while the burst goes on
        run_ids = await burst
        agents.exit_code = 0  # from now on ranks exit as soon as they run
        await agents.finish_all()
        async with scheduler_process(redis_url, tmp_path, "second"):
            for run_id in run_ids:
                await _wait_status(store, run_id, S.COMPLETED, within=30)
            # The dead instance's unacknowledged entries were dropped, not left to be claimed.
            await eventually(lambda: _pending(store), equals=0, what="nothing pending")

    placements = [p for run_id in run_ids for p in await _scheduled(store, run_id)]
    assert sorted(p.run_id for p in placements) == sorted(run_ids)  # each run placed once
    assert {p.actor for p in placements} == {"scheduler@first", "scheduler@second"}
    await _assert_no_gpu_double_booked(store)


async def test_a_second_instance_stands_by_and_takes_over_when_the_first_dies(
    store: EventStore, redis_url: str, tmp_path: Path
) -> None:
    async with (
        Agents(store) as agents,
        scheduler_process(redis_url, tmp_path, "a") as first,
    ):
        await agents.register("n1")
        await eventually(
            lambda: store.redis.exists(keys.scheduler_lease()), what="the first instance active"
        )
        async with scheduler_process(redis_url, tmp_path, "b") as second:
            await eventually(
                lambda: "scheduler.standby" in second.output(), what="the second standing by"
            )
            before = await submit(store, gpus=1)
            await _wait_status(store, before, S.RUNNING)
            await first.kill()
            after = await submit(store, gpus=1)
            await _wait_status(store, after, S.RUNNING)

    [placed_before] = await _scheduled(store, before)
    [placed_after] = await _scheduled(store, after)
    assert placed_before.actor == "scheduler@a"
    assert placed_after.actor == "scheduler@b"
    assert placed_after.ranks[0].gpus != placed_before.ranks[0].gpus  # it knew what was held


async def test_an_instance_that_loses_its_lease_stands_by_and_serves_again_later(
    store: EventStore, redis_url: str, tmp_path: Path
) -> None:
    lease = keys.scheduler_lease()
    async with scheduler_process(redis_url, tmp_path) as scheduler, Agents(store) as agents:
        await agents.register("n1")
        await eventually(lambda: store.redis.exists(lease), what="the instance active")
        await store.redis.set(lease, "another-instance", px=60_000)  # taken over behind its back
        await eventually(
            lambda: "scheduler.deposed" in scheduler.output(), what="the instance deposed"
        )
        run_id = await submit(store, gpus=1)
        await store.redis.delete(lease)  # the other instance is gone
        await _wait_status(store, run_id, S.RUNNING)

    assert scheduler.output().count('"scheduler.active"') == 2


async def test_the_scheduler_carries_on_after_a_kill_9_of_the_server(
    valkey_server: ValkeyProcess, tmp_path: Path
) -> None:
    url = valkey_server.url
    async with scheduler_process(url, tmp_path):
        store = EventStore(connect(url), Settings(redis_url=url))
        async with Agents(store) as agents:
            await agents.register("n1")
            before = await submit(store, gpus=4)
            await _wait_status(store, before, S.RUNNING)
        await store.close()
        valkey_server.kill()
        await asyncio.to_thread(valkey_server.restart)  # same port, same AOF

        store = EventStore(connect(url), Settings(redis_url=url))
        try:
            async with Agents(store) as agents:
                await agents.exit(before, 0, 0)
                await _wait_status(store, before, S.COMPLETED)
                after = await submit(store, gpus=8)
                await _wait_status(store, after, S.RUNNING)
        finally:
            await store.close()


async def test_a_lost_node_fails_its_attempt_with_node_failure_and_the_retry_runs_elsewhere(
    store: EventStore, redis_url: str, tmp_path: Path
) -> None:
    async with scheduler_process(redis_url, tmp_path), Agents(store) as agents:
        await agents.register("n1")
        run_id = await submit(store, gpus=8, retry_on_system_failure=True)
        await _wait_status(store, run_id, S.RUNNING)
        await agents.register("n2")
        await agents.heartbeat("n1", expires_ms=200)  # its agent stops renewing it
        await eventually(
            lambda: _latest_attempt(store, run_id), equals=(1, S.RUNNING), what="attempt 1 runs"
        )

    events = await run_events(store, run_id)
    [exited] = [e for e in events if isinstance(e, RankExited)]
    assert exited.reason is not None
    assert (exited.exit_code, exited.reason.code) == (None, "NodeFailure")
    [failed] = [e for e in events if isinstance(e, AttemptFailed)]
    assert (failed.reason.category, failed.reason.code) == ("system", "NodeFailure")
    [retry] = [e for e in events if isinstance(e, RetryScheduled)]
    assert (retry.cause, retry.attempt) == ("system_failure", 1)
    first, second = await _scheduled(store, run_id)
    assert (first.ranks[0].node, second.ranks[0].node) == ("n1", "n2")
    assert not [e for e in events if isinstance(e, AttemptStopped)]
    lost = [r.event for r in await store.history("node:n1") if isinstance(r.event, NodeLost)]
    assert len(lost) == 1


async def _pending(store: EventStore) -> int:
    summary = await store.redis.xpending(keys.log_stream(0), "scheduler")
    return int(summary["pending"])


async def _submit_one_by_one(store: EventStore, count: int) -> list[str]:
    return [await submit(store, gpus=1 + i % 3) for i in range(count)]


async def _latest_attempt(store: EventStore, run_id: str) -> tuple[int, S] | None:
    state = await store.load_run(run_id)
    return (state.latest.index, state.status) if state is not None else None


async def _assert_no_gpu_double_booked(store: EventStore) -> None:
    """From the log: between an attempt's placement and its end, nobody else gets its GPUs."""
    holder: dict[tuple[str, int], tuple[str, int]] = {}
    held: dict[tuple[str, int], list[tuple[str, int]]] = {}
    async for record in store.replay():
        event = record.event
        if isinstance(event, AttemptScheduled):
            attempt = (event.run_id, event.attempt)
            held[attempt] = [(r.node, gpu) for r in event.ranks for gpu in r.gpus]
            for gpu in held[attempt]:
                assert gpu not in holder, f"{gpu} given to {attempt} while {holder[gpu]} holds it"
                holder[gpu] = attempt
        elif isinstance(event, AttemptCompleted | AttemptStopped | AttemptFailed):
            for gpu in held.pop((event.run_id, event.attempt), []):
                del holder[gpu]
    assert held == {}
