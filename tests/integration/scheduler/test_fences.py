"""The scheduler's fences over three partitions (``services.scheduler.fences``), on the real
server and its append function: a deposed scheduler appends nothing to any partition once its
successor claimed the fences; two real scheduler processes, the first paused (SIGSTOP) past its
lease and woken after the second appended, never interleave on a partition."""

from __future__ import annotations

import itertools
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from events import keys
from events.model import AttemptScheduled, NodeRegistered
from events.status import RunStatus as S
from services.core.client import connect
from services.core.errors import Fenced
from services.core.groups import ensure_group, group_info
from services.core.lease import Lease, LeaseLost
from services.core.settings import Settings
from services.core.store import EventStore
from services.scheduler import fences
from services.scheduler.app import GROUP
from tests.integration.scheduler.harness import Agents, new_id, scheduler_process, status, submit
from tests.waiting import eventually

P = 3


@pytest.fixture
async def store(redis: aioredis.Redis, redis_url: str) -> AsyncIterator[EventStore]:
    store = EventStore(connect(redis_url), Settings(redis_url=redis_url, partitions=P))
    yield store
    await store.close()


def node_on(partition: int) -> str:
    """A node name whose events go to ``partition``."""
    return next(
        name
        for name in (f"node-{i}" for i in itertools.count())
        if keys.partition_of(f"node:{name}", P) == partition
    )


def run_on(partition: int) -> str:
    """A new run id whose events go to ``partition``."""
    return next(
        run_id
        for run_id in iter(new_id, None)
        if keys.partition_of(f"run:{run_id}", P) == partition
    )


def on_every_partition(count: int) -> list[str]:
    """``count`` new run ids spread over every partition, so each partition's log is checked."""
    return [run_on(i % P) for i in range(count)]


def registration(node: str, actor: str) -> NodeRegistered:
    return NodeRegistered(
        id=new_id(), actor=actor, node=node, cluster="local", gpu_type="a100", gpus=8
    )


async def running(store: EventStore, run_ids: list[str]) -> None:
    async def every_one() -> bool:
        return all([await status(store, run_id) == S.RUNNING for run_id in run_ids])

    await eventually(every_one, what=f"{len(run_ids)} runs RUNNING", within=30)


async def test_a_deposed_scheduler_appends_to_no_partition_once_its_successor_claimed(
    store: EventStore,
) -> None:
    client = store.redis
    first = Lease(client, keys.scheduler_lease(0), "a", 60_000)
    assert await first.hold()
    a = await fences.claim(client, "a", P)
    nodes = [node_on(p) for p in range(P)]
    for node in nodes:
        await store.append(
            [registration(node, "a")], expected_version=None, fence=a.of(f"node:{node}")
        )

    await client.delete(keys.scheduler_lease(0))  # a's lease expired (it was paused)
    second = Lease(client, keys.scheduler_lease(0), "b", 60_000)
    assert await second.hold()
    b = await fences.claim(client, "b", P)
    assert b.term > a.term
    for node in nodes:
        await store.append(
            [registration(node, "b")], expected_version=None, fence=b.of(f"node:{node}")
        )

    for node in nodes:  # a wakes up: every partition refuses it
        with pytest.raises(Fenced):
            await store.append(
                [registration(node, "a")], expected_version=None, fence=a.of(f"node:{node}")
            )
    with pytest.raises(LeaseLost):  # and it cannot draw a new term to claim with
        await fences.claim(client, "a", P)
    for partition in range(1, P):
        assert (await client.get(keys.scheduler_lease(partition))) == f"{b.term}/b".encode()


async def test_a_deposed_scheduler_takes_nothing_from_the_group_its_successor_reads(
    store: EventStore,
) -> None:
    """a, paused past its lease, wakes and reads the log through the group before it appends:
    its read is refused, and b, elected meanwhile, is given every entry."""
    client = store.redis
    await store.load_function()
    await client.set(keys.scheduler_lease(0), "a")
    a = await fences.claim(client, "a", P)
    node = node_on(1)
    stream = keys.log_stream(1)
    await ensure_group(client, stream, GROUP)
    await store.append([registration(node, "a")], expected_version=None, fence=a.of(f"node:{node}"))
    assert len(await store.read_fenced(stream, GROUP, "a-1", 10, a.fences[1])) == 1

    await client.set(keys.scheduler_lease(0), "b")  # a's lease expired; b elected
    b = await fences.claim(client, "b", P)
    await store.append([registration(node, "b")], expected_version=None, fence=b.of(f"node:{node}"))
    with pytest.raises(Fenced):
        await store.read_fenced(stream, GROUP, "a-1", 10, a.fences[1])
    entries = await store.read_fenced(stream, GROUP, "b-1", 10, b.fences[1])
    assert [fields[b"n"] for _, fields in entries] == [b"2"]  # b's, which a did not take
    assert await store.read_fenced(stream, GROUP, "b-1", 10, b.fences[1]) == []
    info = await group_info(client, stream, GROUP)
    assert info is not None
    assert info["pending"] == 0  # NOACK: nothing left to claim


async def test_a_term_drawn_before_a_later_election_cannot_take_back_a_fence(
    store: EventStore,
) -> None:
    """a drew its term, then paused before claiming; b was elected and claimed meanwhile."""
    client = store.redis
    await client.set(keys.scheduler_lease(0), "a")
    stale = int(await client.incr(keys.scheduler_term()))  # a's term, drawn while elected
    await client.set(keys.scheduler_lease(0), "b")
    b = await fences.claim(client, "b", P)
    assert b.term > stale
    claim = fences._CLAIM  # a's claim of its stale term, as it would send it
    for partition in range(1, P):
        key = keys.scheduler_lease(partition)
        assert await client.eval(claim, 1, key, f"{stale}/a", stale) == 0
        assert await client.get(key) == f"{b.term}/b".encode()


async def test_a_paused_scheduler_woken_after_its_successor_appended_appends_nothing_after(
    store: EventStore, redis_url: str, tmp_path: Path
) -> None:
    async with Agents(store) as agents:
        for node in ("n1", "n2", "n3"):
            await agents.register(node, gpus=8)
        async with scheduler_process(redis_url, tmp_path, "a", partitions=P) as first:
            await eventually(lambda: "scheduler.term" in first.output(), what="a active")
            async with scheduler_process(redis_url, tmp_path, "b", partitions=P) as second:
                await eventually(lambda: "scheduler.standby" in second.output(), what="b standby")
                before = [await submit(store, run_id=r) for r in on_every_partition(6)]
                await running(store, before)
                assert first.proc is not None
                first.proc.send_signal(signal.SIGSTOP)  # paused past its lease
                try:
                    await eventually(lambda: "scheduler.term" in second.output(), what="b active")
                    after = [await submit(store, run_id=r) for r in on_every_partition(6)]
                    await running(store, after)
                finally:
                    first.proc.send_signal(signal.SIGCONT)
                await eventually(lambda: "scheduler.deposed" in first.output(), what="a deposed")
                more = await submit(store, gpus=1)
                await running(store, [more])

    assert await store.redis.get(keys.log_partitions()) == str(P).encode()  # recorded
    for partition in range(P):  # on each partition: a's appends, then b's, never a's again
        actors = [
            r.event.actor
            async for r in store.replay(partition)
            if r.event.actor.startswith("scheduler@")
        ]
        if "scheduler@b" in actors:
            assert "scheduler@a" not in actors[actors.index("scheduler@b") :], actors
    placed = [e for e in agents.placed if isinstance(e, AttemptScheduled)]
    assert sorted(p.run_id for p in placed) == sorted([*before, *after, more])  # each once
    assert {p.actor for p in placed} == {"scheduler@a", "scheduler@b"}
    assert {keys.partition_of(f"run:{p.run_id}", P) for p in placed} == set(range(P))
    held = [(r.node, gpu) for p in placed for r in p.ranks for gpu in r.gpus]
    assert len(held) == len(set(held))  # every run still runs: no GPU given twice
