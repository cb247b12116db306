"""The event store against a real server: atomic appends, optimistic concurrency,
idempotency across a lost reply, durability across kill -9, and reads."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import msgspec
import pytest
import redis.asyncio as aioredis

from events import codec, keys
from events.errors import IllegalTransition
from events.lifecycle import RunState
from events.model import AnyRunEvent, AttemptQueued, UpdateRequested, tag_of
from services.core.client import connect
from services.core.errors import Fenced, StoreUnavailable, VersionConflict
from services.core.metrics import REGISTRY
from services.core.settings import Settings
from services.core.store import Append, Appended, Decide, EventStore, Fence
from services.core.valkey import ValkeyProcess
from tests import factories as f
from tests import raw
from tests.integration.dropping_proxy import DroppingProxy


@pytest.fixture
async def store(redis: aioredis.Redis, redis_url: str) -> AsyncIterator[EventStore]:
    store = EventStore(connect(redis_url), Settings(redis_url=redis_url))
    yield store
    await store.close()


async def test_append_writes_run_stream_and_global_log_with_the_servers_clock(
    store: EventStore, redis: aioredis.Redis
) -> None:
    submitted = f.submitted()
    server_before_ms = _ms(await redis.time())
    appended = await store.append([submitted], expected_version=0)
    server_after_ms = _ms(await redis.time())

    assert appended.version == 1
    assert not appended.duplicate
    [recorded] = await store.history(submitted.aggregate)
    assert recorded.position == appended.positions[0]
    assert server_before_ms <= recorded.event.time <= server_after_ms
    assert [r.position for r in await store.read_log()] == appended.positions
    assert recorded.event == msgspec.structs.replace(submitted, time=recorded.event.time)


async def test_a_multi_event_append_is_all_or_nothing_in_order(store: EventStore) -> None:
    submitted = f.submitted()
    run_id = submitted.run_id
    appended = await store.append(
        [submitted, f.queued(run_id), f.updated(run_id, 2)], expected_version=0
    )
    assert appended.version == 3
    history = await store.history(submitted.aggregate)
    assert [r.position for r in history] == appended.positions
    assert [type(r.event) for r in history] == [type(submitted), AttemptQueued, UpdateRequested]

    with pytest.raises(VersionConflict) as conflict:
        await store.append([f.queued(run_id)], expected_version=1)
    assert (conflict.value.expected, conflict.value.actual) == (1, 3)
    assert len(await store.history(submitted.aggregate)) == 3
    assert len(await store.read_log()) == 3


async def test_twenty_racing_writers_one_wins_and_retries_converge(store: EventStore) -> None:
    submitted = f.submitted()
    await store.append([submitted], expected_version=0)
    run_id = submitted.run_id

    async def try_once(n: int) -> bool:
        try:
            await store.append([f.updated(run_id, n)], expected_version=1)
        except VersionConflict:
            return False
        return True

    outcomes = await asyncio.gather(*(try_once(n) for n in range(20)))
    assert outcomes.count(True) == 1

    # Re-read and re-decide: every writer gets its update in exactly once.
    def decide_for(n: int) -> Decide:
        def decide(state: RunState | None) -> Sequence[AnyRunEvent]:
            assert state is not None
            return [f.updated(run_id, 100 + n)]

        return decide

    await asyncio.gather(*(store.update_run(run_id, decide_for(n)) for n in range(20)))
    state = await store.load_run(run_id)
    assert state is not None
    assert state.version == 1 + 1 + 20
    history = await store.history(submitted.aggregate)
    retries = sorted(
        r.event.max_retries
        for r in history
        if isinstance(r.event, UpdateRequested) and r.event.max_retries is not None
    )
    assert retries[1:] == list(range(100, 120))


async def test_update_run_refuses_what_the_rules_forbid_and_writes_nothing(
    store: EventStore,
) -> None:
    submitted = f.submitted()
    await store.append([submitted], expected_version=0)
    with pytest.raises(IllegalTransition, match="attempt 3 is not the current attempt"):
        await store.update_run(submitted.run_id, lambda _: [f.queued(submitted.run_id, attempt=3)])
    assert len(await store.history(submitted.aggregate)) == 1


async def test_update_run_on_a_known_state_that_lags_decides_again_on_the_run_as_read(
    store: EventStore,
) -> None:
    """A node-agent decides on the run as its inbox told it: when that lags the log, the
    version check refuses the append, and whatever it decided (events, nothing, a refusal)
    stands only once decided again on the run as read."""
    submitted = f.submitted()
    await store.append([submitted], expected_version=0)
    stale = await store.load_run(submitted.run_id)
    assert stale is not None
    await store.append([f.queued(submitted.run_id)], expected_version=1)
    seen: list[int] = []

    def decide(state: RunState | None) -> Sequence[AnyRunEvent]:
        assert state is not None
        seen.append(state.version)
        if state.version == 1:  # the lagging state: a refusal
            raise IllegalTransition(submitted.aggregate, "run.update_requested", "stale")
        return [UpdateRequested(id=f.new_id(), actor="u", run_id=submitted.run_id, max_retries=7)]

    after, appended = await store.update_run(submitted.run_id, decide, known=stale)
    assert seen == [1, 2]
    assert appended is not None
    assert after is not None
    assert after.version == 3

    def nothing(state: RunState | None) -> Sequence[AnyRunEvent]:
        assert state is not None
        seen.append(state.version)
        return []

    seen.clear()
    after, appended = await store.update_run(submitted.run_id, nothing, known=stale)
    assert seen == [1, 3]  # "nothing to do" on the stale state is asked again
    assert appended is None

    seen.clear()
    known = await store.load_run(submitted.run_id)  # up to date: decided once, no read
    after, appended = await store.update_run(submitted.run_id, decide, known=known)
    assert seen == [3]
    assert appended is not None


async def test_a_retried_append_after_a_lost_reply_is_stored_once(
    redis_url: str, redis: aioredis.Redis
) -> None:
    host, port = _host_port(redis_url)
    async with DroppingProxy(host, port) as proxy:
        store = EventStore(connect(proxy.url), Settings(redis_url=proxy.url))
        try:
            submitted = f.submitted()
            await store.append([submitted], expected_version=0)
            queued = f.queued(submitted.run_id)
            proxy.drop_next_reply = True
            appended = await store.append([queued], expected_version=1)
        finally:
            await store.close()
    assert proxy.dropped == 1
    assert appended.duplicate  # the retry found the first try's work
    log = await raw.xrange(redis, keys.log_stream(0))
    assert [position for position, _ in log][1:] == appended.positions
    assert len(log) == 2


async def test_append_all_sends_several_runs_appends_each_checked_alone(
    store: EventStore, redis: aioredis.Redis
) -> None:
    first, second, third = f.submitted(), f.submitted(), f.submitted()
    await store.append([first], expected_version=0)
    await store.append([second], expected_version=0)
    await store.append([f.queued(second.run_id)], expected_version=1)  # second moved on

    outcomes = await store.append_all(
        [
            Append([f.queued(first.run_id), f.updated(first.run_id, 2)], 1),
            Append([f.updated(second.run_id, 2)], 1),  # decided on a stale version
            Append([third], 0),
        ]
    )

    landed, conflict, new = outcomes
    assert isinstance(landed, Appended)
    assert landed.version == 3
    assert isinstance(conflict, VersionConflict)
    assert (conflict.expected, conflict.actual) == (1, 2)
    assert isinstance(new, Appended)
    assert new.version == 1
    assert [r.position for r in await store.history(first.aggregate)][1:] == landed.positions
    assert len(await store.history(second.aggregate)) == 2  # the stale one wrote nothing
    assert [r.position for r in await store.history(third.aggregate)] == new.positions
    log = [position for position, _ in await raw.xrange(redis, keys.log_stream(0))]
    assert log[3:] == landed.positions + new.positions
    assert await store.append_all([]) == []


async def test_append_all_refuses_a_stale_fence_and_stores_the_others(
    store: EventStore, redis: aioredis.Redis
) -> None:
    await redis.set("test:fence", "holder")
    current, stale = Fence("test:fence", "holder"), Fence("test:fence", "deposed")
    one, other = f.submitted(), f.submitted()

    outcomes = await store.append_all([Append([one], 0, stale), Append([other], 0, current)])

    assert isinstance(outcomes[0], Fenced)
    assert outcomes[0].holder == "holder"
    assert isinstance(outcomes[1], Appended)
    assert outcomes[1].version == 1
    assert await store.history(one.aggregate) == []


async def test_append_all_retried_after_a_lost_reply_stores_each_append_once(
    redis_url: str, redis: aioredis.Redis
) -> None:
    host, port = _host_port(redis_url)
    runs = [f.submitted() for _ in range(5)]
    async with DroppingProxy(host, port) as proxy:
        store = EventStore(connect(proxy.url), Settings(redis_url=proxy.url))
        try:
            await store.append_all([Append([runs[0]], 0)])  # the connection is up
            proxy.drop_next_reply = True
            outcomes = await store.append_all([Append([run], 0) for run in runs])
        finally:
            await store.close()
    assert proxy.dropped == 1
    assert [isinstance(o, Appended) and o.duplicate for o in outcomes] == [True] * len(runs)
    log = await raw.xrange(redis, keys.log_stream(0))
    assert len(log) == len(runs)
    streams = [keys.aggregate_stream(run.aggregate, 0) for run in runs]
    assert [await redis.xlen(stream) for stream in streams] == [1] * len(runs)


@pytest.mark.slow
async def test_acknowledged_appends_survive_kill_9(valkey_server: ValkeyProcess) -> None:
    settings = Settings(redis_url=valkey_server.url)
    store = EventStore(connect(valkey_server.url), settings)
    runs = [f.submitted() for _ in range(50)]
    acknowledged: list[str] = []

    async def writer(run_index: int) -> None:
        run = runs[run_index]
        acknowledged.extend((await store.append([run], expected_version=0)).positions)
        for n in range(19):
            appended = await store.append([f.updated(run.run_id, n)], expected_version=None)
            acknowledged.extend(appended.positions)

    await asyncio.gather(*(writer(i) for i in range(len(runs))))
    await store.close()
    valkey_server.kill()
    valkey_server.restart()

    store = EventStore(connect(valkey_server.url), settings)
    try:
        positions = [r.position async for r in store.replay()]
        assert positions == sorted(acknowledged, key=_position_key)
        assert len(positions) == 1000
        for run in runs:
            assert len(await store.history(run.aggregate)) == 20
    finally:
        await store.close()


async def test_an_unreachable_server_is_a_clear_temporary_error() -> None:
    url = "redis://127.0.0.1:1/0"
    store = EventStore(connect(url), Settings(redis_url=url))
    with pytest.raises(StoreUnavailable, match=r"127\.0\.0\.1:1/0 is unreachable"):
        await store.append([f.submitted()], expected_version=0, retry_for_s=0.3)
    await store.close()


async def test_an_append_waits_out_a_server_restart(valkey_server: ValkeyProcess) -> None:
    store = EventStore(connect(valkey_server.url), Settings(redis_url=valkey_server.url))
    try:
        first = f.submitted()
        await store.append([first], expected_version=0)
        valkey_server.kill()
        pending = asyncio.create_task(store.append([f.submitted()], expected_version=0))
        await asyncio.to_thread(valkey_server.restart)
        appended = await pending
        assert not appended.duplicate
        assert len([r async for r in store.replay()]) == 2
    finally:
        await store.close()


async def test_replay_pages_through_the_log_after_a_position(store: EventStore) -> None:
    submitted = f.submitted()
    appended = await store.append(
        [submitted, *(f.updated(submitted.run_id, n) for n in range(5))], expected_version=0
    )
    after_second = [r.position async for r in store.replay(after=appended.positions[1])]
    assert after_second == appended.positions[2:]
    page = await store.read_log(after=appended.positions[0], count=2)
    assert [r.position for r in page] == appended.positions[1:3]
    assert codec.kind_of(page[0].event) == b"run.update_requested@1"


def _ms(server_time: tuple[int, int]) -> int:
    seconds, micros = server_time
    return seconds * 1000 + micros // 1000


def _position_key(position: str) -> tuple[int, int]:
    ms, seq = position.split("-")
    return int(ms), int(seq)


def _host_port(url: str) -> tuple[str, int]:
    hostport = url.split("//", 1)[1].split("/", 1)[0]
    host, port = hostport.rsplit(":", 1)
    return host, int(port)


async def test_a_command_loop_cancelled_at_any_instant_ends(redis_url: str) -> None:
    """Cancelling a task mid-command must end it, wherever in the command the cancel lands.

    redis-py's ``asyncio.wait_for`` around a write swallows a cancel that meets the write's end
    on Python 3.11; the loop then ran on forever. Each round cancels one step later, so the
    rounds sweep every instant of a command's life."""
    client = connect(redis_url)
    try:

        async def commands() -> None:
            while True:
                await client.ping()

        for steps in range(60):
            task = asyncio.create_task(commands())
            for _ in range(steps):
                await asyncio.sleep(0)  # allowed: one loop step, to place the cancel
            task.cancel()
            done, _ = await asyncio.wait([task], timeout=10)
            assert done, f"a command loop cancelled after {steps} loop steps never ended"
    finally:
        await client.aclose()


async def test_each_stored_event_is_counted_once_by_type_a_duplicate_not_again(
    store: EventStore,
) -> None:
    def counted(event: AnyRunEvent) -> float:
        labels = {"type": tag_of(type(event))}
        return REGISTRY.get_sample_value("runplane_events_appended_total", labels) or 0.0

    submitted = f.submitted()
    queued = f.queued(submitted.run_id)
    before = counted(submitted), counted(queued)
    await store.append([submitted, queued], expected_version=0)
    again = await store.append([submitted, queued], expected_version=0)  # the same key: a retry
    assert again.duplicate
    with pytest.raises(VersionConflict):
        await store.append([f.queued(submitted.run_id)], expected_version=0)
    assert (counted(submitted), counted(queued)) == (before[0] + 1, before[1] + 1)
