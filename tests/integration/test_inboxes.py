"""The per-node inboxes on a real server: each append copies its events, under their log ids,
into the inboxes of the nodes concerned (``events.inbox``) in the same atomic call: a run's
events from its placement to its attempt's end to the nodes of its ranks, a node's events to
that node, nothing else to anyone."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import cast

import pytest
import redis.asyncio as aioredis

from events import keys
from events.model import (
    AttemptFailed,
    AttemptRunning,
    AttemptScheduled,
    Event,
    NodeRegistered,
    RankPlacement,
    Reason,
    StopRequested,
    UserAdded,
)
from services.core.client import connect
from services.core.settings import Settings
from services.core.store import EventStore
from tests import factories as f

NODES = ("node-a", "node-b", "node-c")


@pytest.fixture
async def store(redis: aioredis.Redis, redis_url: str) -> AsyncIterator[EventStore]:
    store = EventStore(connect(redis_url), Settings(redis_url=redis_url, inbox_max_len=1000))
    yield store
    await store.close()


def placed(run_id: str, attempt: int, *nodes: str) -> AttemptScheduled:
    ranks = [RankPlacement(rank=i, node=node, gpus=[0]) for i, node in enumerate(nodes)]
    return AttemptScheduled(
        id=f.new_id(),
        actor="scheduler@test",
        run_id=run_id,
        attempt=attempt,
        cluster="c",
        ranks=ranks,
    )


def failed(run_id: str, attempt: int) -> AttemptFailed:
    reason = Reason(category="system", code="NodeFailure")
    return AttemptFailed(
        id=f.new_id(), actor="scheduler@test", run_id=run_id, attempt=attempt, reason=reason
    )


async def inboxes(redis: aioredis.Redis) -> dict[str, list[tuple[str, str]]]:
    """Each node's inbox: (entry id, kind) in order."""
    found = {}
    for node in NODES:
        entries = await _range(redis, keys.inbox(node, 0))
        found[node] = [
            (p.decode(), fields[b"k"].decode().partition("@")[0]) for p, fields in entries
        ]
    return found


async def _range(
    redis: aioredis.Redis, stream: str, only: str | None = None
) -> list[tuple[bytes, dict[bytes, bytes]]]:
    found = await redis.xrange(stream, only or "-", only or "+")
    return cast(list[tuple[bytes, dict[bytes, bytes]]], found)


async def append(store: EventStore, *events: Event) -> list[str]:
    return (await store.append(list(events), expected_version=None)).positions


async def test_a_run_is_told_to_its_nodes_from_placement_to_its_attempts_end(
    store: EventStore, redis: aioredis.Redis
) -> None:
    submitted = f.submitted()
    run = submitted.run_id
    await append(store, submitted, f.queued(run))
    assert await inboxes(redis) == {node: [] for node in NODES}  # placed nowhere yet

    first = await append(store, placed(run, 0, "node-a", "node-b", "node-a"))
    running = await append(store, AttemptRunning(id=f.new_id(), actor="s", run_id=run))
    ended = await append(store, failed(run, 0))
    after_end = await append(store, StopRequested(id=f.new_id(), actor="alice", run_id=run))
    retry = await append(store, placed(run, 1, "node-c"))
    stop = await append(store, StopRequested(id=f.new_id(), actor="alice", run_id=run, attempt=1))

    told = await inboxes(redis)
    first_attempt = [
        (first[0], "attempt.scheduled"),
        (running[0], "attempt.running"),
        (ended[0], "attempt.failed"),
    ]
    assert told["node-a"] == first_attempt
    assert told["node-b"] == first_attempt
    assert told["node-c"] == [(retry[0], "attempt.scheduled"), (stop[0], "run.stop_requested")]
    assert after_end[0] not in {p for entries in told.values() for p, _ in entries}
    # a copy is the log's entry: same id, same fields
    [(_, logged)] = await _range(redis, keys.log_stream(0), stop[0])
    [(_, copied)] = await _range(redis, keys.inbox("node-c", 0), stop[0])
    assert copied == logged


async def test_one_append_of_several_events_routes_each(
    store: EventStore, redis: aioredis.Redis
) -> None:
    submitted = f.submitted()
    run = submitted.run_id
    positions = await append(store, submitted, placed(run, 0, "node-b"), failed(run, 0))
    told = await inboxes(redis)
    assert told["node-b"] == [(positions[1], "attempt.scheduled"), (positions[2], "attempt.failed")]
    assert told["node-a"] == told["node-c"] == []
    assert not await redis.exists(keys.told_nodes(submitted.aggregate, 0))  # ended: none


async def test_a_nodes_events_go_to_that_node_and_users_to_none(
    store: EventStore, redis: aioredis.Redis
) -> None:
    registered = NodeRegistered(
        id=f.new_id(), actor="node-agent@node-b", node="node-b", cluster="c", gpu_type=None, gpus=8
    )
    [position] = await append(store, registered)
    await append(store, UserAdded(id=f.new_id(), actor="root", user="ana", role="user"))
    assert await inboxes(redis) == {
        "node-a": [],
        "node-b": [(position, "node.registered")],
        "node-c": [],
    }


async def test_an_inbox_is_trimmed_to_about_its_length(
    store: EventStore, redis: aioredis.Redis
) -> None:
    submitted = f.submitted()
    run = submitted.run_id
    await append(store, submitted, placed(run, 0, "node-a"))
    for _ in range(30):
        await append(
            store, *(StopRequested(id=f.new_id(), actor="alice", run_id=run) for _ in range(100))
        )
    length = await redis.xlen(keys.inbox("node-a", 0))
    assert 1000 <= length < 3002  # trimmed (approximately: whole nodes of the stream)
