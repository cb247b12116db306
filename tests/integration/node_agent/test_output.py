"""Output that could break a naive agent: a flood, a 1 MB line, binary bytes. Each arrives
capped or marked, never silently dropped, and the agent goes on running ranks."""

from __future__ import annotations

import redis.asyncio as aioredis

from events.status import RunStatus
from services.output.ingest import MAX_LINE
from tests.integration.node_agent.conftest import AgentFactory
from tests.integration.node_agent.harness import MiniScheduler, ingest, lines, spec
from tests.waiting import eventually

FLOOD = 200_000


async def test_a_flood_a_huge_line_and_binary_output_arrive_capped_and_marked(
    make_agent: AgentFactory, scheduler: MiniScheduler, redis: aioredis.Redis
) -> None:
    agent = make_agent()
    await agent.start()
    flood = await scheduler.submit(spec(f"yes | head -n {FLOOD}"), [("node-a", [0])])
    huge = await scheduler.submit(
        spec(r"head -c 1000000 /dev/zero | tr '\0' x; echo; printf 'a\xff\xfe\x00b\n'; echo end"),
        [("node-a", [1])],
    )

    await scheduler.wait_status(flood, RunStatus.COMPLETED, within=60)
    await scheduler.wait_status(huge, RunStatus.COMPLETED)

    entries = await ingest(redis, flood)
    received = sum(1 for fields in entries if fields[b"l"] == b"y" and b"m" not in fields)
    markers = [fields for fields in entries if fields.get(b"m", b"").startswith(b"dropped:")]
    dropped = sum(int(fields[b"m"].split(b":")[1]) for fields in markers)
    assert received + dropped == FLOOD  # every line arrived or was counted
    assert all(b"dropped" in fields[b"l"] for fields in markers)

    entries = await ingest(redis, huge)
    assert [len(fields[b"l"]) for fields in entries] == [MAX_LINE, 5, 3]
    assert entries[0][b"m"] == b"truncated:%d" % (1_000_000 - MAX_LINE)
    assert entries[1][b"l"] == b"a\xff\xfe\x00b"  # bytes kept as they came
    assert entries[2][b"l"] == b"end"

    after = await scheduler.submit(spec("echo still here"), [("node-a", [2])])
    await scheduler.wait_status(after, RunStatus.COMPLETED)
    await eventually(lambda: lines(redis, after), equals=[b"still here"], what="a later run's line")
