"""Fencing (docs/fencing.md) with real processes: an agent that dies (kill -9), hangs
(SIGSTOP) or loses Valkey stops renewing the node's lease, and its ranks' shims stop their
commands before the node's heartbeat key expires, which is the earliest a scheduler could
declare the node lost and place a retry. The command's last sign of life (a timestamp it
appends every 100 ms) must come before the key is gone; nothing after the agent wakes.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from events import keys
from events.model import NodeLost, RankExited, Reason
from events.status import RunStatus
from services.node_agent.shim import lease
from services.node_agent.shim.ondisk import signal_group
from tests import factories as f
from tests.integration.dropping_proxy import DroppingProxy
from tests.integration.node_agent.conftest import AgentFactory
from tests.integration.node_agent.harness import Agent, MiniScheduler, spec
from tests.ranks import open_to_ranks
from tests.waiting import eventually


def _beating(path: Path) -> str:
    """A command that appends a timestamp to ``path`` (outside its workspace, which goes when
    the rank is done) every 100 ms."""
    return f"while true; do date +%s.%N >> {path}; sleep 0.1; done"


def _rank_dir(agent: Agent, run_id: str) -> Path:
    return agent.data_dir / "ranks" / run_id / "0" / "0"


def _beats_file(agent: Agent, run_id: str) -> Path:
    return open_to_ranks(agent.data_dir.parent / "beats", writable=True) / run_id


def _beats(agent: Agent, run_id: str) -> list[float]:
    path = _beats_file(agent, run_id)
    text = path.read_text() if path.exists() else ""
    return [float(line) for line in text.splitlines() if line.strip()]


async def _running(agent: Agent, scheduler: MiniScheduler) -> tuple[str, int]:
    run_id = f.new_id()
    await scheduler.submit(
        spec(_beating(_beats_file(agent, run_id))), [("node-a", [0])], run_id=run_id
    )
    await scheduler.wait_status(run_id, RunStatus.RUNNING)
    await eventually(lambda: len(_beats(agent, run_id)) >= 3, what="the command beating")
    return run_id, int((_rank_dir(agent, run_id) / "command.pid").read_text())


async def _key_gone_at(redis: aioredis.Redis, node: str) -> float:
    """Wall-clock time at which the node's heartbeat key was first seen missing."""

    async def gone() -> bool:
        return not await redis.exists(keys.heartbeat(node))

    await eventually(gone, what="the heartbeat key expired", interval=0.01)
    return time.time()


def _exit(agent: Agent, run_id: str) -> dict[str, object]:
    exit_file = _rank_dir(agent, run_id) / "exit.json"
    result: dict[str, object] = json.loads(exit_file.read_text())
    return result


async def test_a_hung_agent_fences_its_rank_before_its_key_expires_and_reports_it_on_waking(
    make_agent: AgentFactory, scheduler: MiniScheduler, redis: aioredis.Redis
) -> None:
    agent = make_agent()
    await agent.start()
    run_id, command = await _running(agent, scheduler)
    assert agent.proc is not None
    os.kill(agent.proc.pid, signal.SIGSTOP)
    try:
        expired = await _key_gone_at(redis, "node-a")
        await eventually(lambda: not signal_group(command, 0), what="the fenced command gone")
        assert max(_beats(agent, run_id)) < expired
        assert _exit(agent, run_id)["fenced"] is True
        last = _beats(agent, run_id)
    finally:
        os.kill(agent.proc.pid, signal.SIGCONT)
    # Not declared lost (no scheduler here): the woken agent reports the fence, a system failure.
    state = await scheduler.wait_status(run_id, RunStatus.FAILED)
    reason = state.latest.ranks[0].reason
    assert reason is not None
    assert (reason.category, reason.code) == ("system", "NodeFenced")
    assert _beats(agent, run_id) == last  # nothing after the agent woke


async def test_a_killed_agent_fences_its_rank_before_its_key_expires(
    make_agent: AgentFactory, scheduler: MiniScheduler, redis: aioredis.Redis
) -> None:
    agent = make_agent()
    await agent.start()
    run_id, command = await _running(agent, scheduler)
    await agent.kill()
    expired = await _key_gone_at(redis, "node-a")
    await eventually(lambda: not signal_group(command, 0), what="the fenced command gone")
    assert max(_beats(agent, run_id)) < expired
    assert _exit(agent, run_id)["fenced"] is True


async def test_an_agent_woken_after_its_node_was_lost_reports_nothing_and_revives_nothing(
    make_agent: AgentFactory, scheduler: MiniScheduler, redis: aioredis.Redis
) -> None:
    agent = make_agent()
    await agent.start()
    run_id, command = await _running(agent, scheduler)
    assert agent.proc is not None
    os.kill(agent.proc.pid, signal.SIGSTOP)
    try:
        await _key_gone_at(redis, "node-a")
        # What the scheduler writes once the key expired: the node lost, its rank released.
        lost = NodeLost(
            id=f.new_id(), actor="scheduler@test", node="node-a", cluster="local", last_seen=0
        )
        await scheduler.store.append([lost], expected_version=None)
        failure = Reason(category="system", code="NodeFailure", message="node-a went silent")
        released = RankExited(
            id=f.new_id(), actor="scheduler@test", run_id=run_id, rank=0, node="node-a",
            reason=failure,
        )  # fmt: skip
        await scheduler.store.append([released], expected_version=None)
        await eventually(lambda: not signal_group(command, 0), what="the fenced command gone")
        last = _beats(agent, run_id)
    finally:
        os.kill(agent.proc.pid, signal.SIGCONT)
    state = await scheduler.wait_status(run_id, RunStatus.FAILED)
    assert state.latest.reason is not None
    assert state.latest.reason.code == "NodeFailure"
    await eventually((_rank_dir(agent, run_id) / "done").exists, what="rank done")
    events = await scheduler.events(run_id)
    assert sum(isinstance(e, RankExited) for e in events) == 1  # its stale report was refused
    assert _beats(agent, run_id) == last


@pytest.mark.parametrize("fence_on_disconnect", [False, True])
async def test_without_valkey_the_lease_is_renewed_unless_fence_on_disconnect(
    make_agent: AgentFactory, fence_on_disconnect: bool
) -> None:
    """An agent that cannot reach Valkey at all: by default it keeps the lease fresh (a shared
    outage must not stop the fleet's runs); with ``fence_on_disconnect`` it lets it expire."""
    agent = make_agent(fence_on_disconnect=fence_on_disconnect)
    agent.env["RUNPLANE_REDIS_URL"] = "redis://127.0.0.1:1/0"  # nothing listens there
    since = lease.now()
    await agent.start()
    path = agent.data_dir / lease.LEASE

    def failed() -> bool:
        return "heartbeat.failed" in agent.output()

    def renewed_since_a_second() -> bool:
        return (lease.renewed_at(path) or 0) > since + 1

    if fence_on_disconnect:
        await eventually(failed, what="a failed heartbeat")
        assert lease.renewed_at(path) is None
    else:
        await eventually(renewed_since_a_second, what="the lease renewed")


async def test_an_agent_cut_off_alone_fences_its_rank_when_fence_on_disconnect(
    make_agent: AgentFactory, scheduler: MiniScheduler, redis: aioredis.Redis, redis_url: str
) -> None:
    """A single-node partition: only this agent (and its shims) lose Valkey, through a proxy
    that cuts them off; the rank is gone before the node's key expires."""
    host, _, port = redis_url.removeprefix("redis://").partition("/")[0].partition(":")
    async with DroppingProxy(host, int(port)) as proxy:
        agent = make_agent(fence_on_disconnect=True)
        agent.env["RUNPLANE_REDIS_URL"] = proxy.url
        await agent.start()
        run_id, command = await _running(agent, scheduler)
        proxy.cut()
        expired = await _key_gone_at(redis, "node-a")
        await eventually(lambda: not signal_group(command, 0), what="the fenced command gone")
        assert max(_beats(agent, run_id)) < expired
        assert _exit(agent, run_id)["fenced"] is True
        last = _beats(agent, run_id)
        proxy.heal()
        state = await scheduler.wait_status(run_id, RunStatus.FAILED)
        reason = state.latest.ranks[0].reason
        assert reason is not None
        assert (reason.category, reason.code) == ("system", "NodeFenced")
        assert _beats(agent, run_id) == last
