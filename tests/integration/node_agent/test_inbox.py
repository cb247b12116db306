"""Node-agents read their own inboxes, never the global log: a run placed on one node is
delivered to that node's agent alone, whatever other agents run beside it (issue 15)."""

from __future__ import annotations

from typing import Any, cast

import redis.asyncio as aioredis

from events import keys
from events.status import RunStatus
from tests.integration.node_agent.conftest import AgentFactory
from tests.integration.node_agent.harness import MiniScheduler, spec
from tests.waiting import eventually


async def _groups(redis: aioredis.Redis, stream: str) -> dict[str, dict[str, Any]]:
    found: list[dict[str, Any]] = await redis.xinfo_groups(stream)
    return {info["name"].decode(): info for info in found}


async def test_each_agent_is_delivered_its_own_runs_and_never_reads_the_log(
    make_agent: AgentFactory, scheduler: MiniScheduler, redis: aioredis.Redis
) -> None:
    here, there = make_agent("node-a"), make_agent("node-b")
    await here.start()
    await there.start()
    runs = [await scheduler.submit(spec(f"echo {i}"), [("node-a", [i])]) for i in range(3)]
    for run_id in runs:
        await scheduler.wait_status(run_id, RunStatus.COMPLETED)

    logged = await _groups(redis, keys.log_stream(0))
    assert not [name for name in logged if name.startswith("agent:")]
    a_inbox, b_inbox = keys.inbox("node-a", 0), keys.inbox("node-b", 0)

    async def read_all(stream: str, group: str) -> bool:
        info = (await _groups(redis, stream)).get(group)
        return info is not None and info["lag"] == 0 and info["pending"] == 0

    await eventually(lambda: read_all(a_inbox, "agent:node-a"), what="node-a read its inbox")
    kinds_a = [k for _, k in await _kinds(redis, a_inbox)]
    assert kinds_a.count("attempt.scheduled") == kinds_a.count("attempt.completed") == 3
    assert "run.submitted" not in kinds_a  # told from the placement on

    async def registered_b() -> bool:  # node-b starts on its own time: the runs do not wait
        return bool(await _kinds(redis, b_inbox)) and await read_all(b_inbox, "agent:node-b")

    await eventually(registered_b, what="node-b registered and read its inbox")
    assert [k for _, k in await _kinds(redis, b_inbox)] == ["node.registered"]
    assert (await _groups(redis, b_inbox))["agent:node-b"]["entries-read"] == 1


async def _kinds(redis: aioredis.Redis, stream: str) -> list[tuple[bytes, str]]:
    entries = cast(list[tuple[bytes, dict[bytes, bytes]]], await redis.xrange(stream))
    return [(position, fields[b"k"].decode().partition("@")[0]) for position, fields in entries]
