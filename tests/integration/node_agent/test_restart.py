"""kill -9 of the node-agent while ranks run, then a restart: nothing is invented, nothing is
forgotten. And a node the log declared lost while its agent lives."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import redis.asyncio as aioredis

from events import keys
from events.model import NodeLost, NodeRegistered, RankExited, Reason
from events.status import RunStatus
from tests import factories as f
from tests.integration.node_agent.conftest import AgentFactory
from tests.integration.node_agent.harness import Agent, MiniScheduler, lines, spec
from tests.waiting import eventually


def _gated(name: str, then: str) -> str:
    """Wait for the file ``name`` in the workspace, then run ``then``."""
    return f"echo waiting; while [ ! -e {name} ]; do sleep 0.05; done; {then}"


def _rank_dir(agent: Agent, run_id: str) -> Path:
    return agent.data_dir / "ranks" / run_id / "0" / "0"


async def _registrations(scheduler: MiniScheduler, node: str) -> int:
    history = await scheduler.store.history(f"node:{node}")
    return sum(isinstance(record.event, NodeRegistered) for record in history)


async def _exited(scheduler: MiniScheduler, run_id: str) -> RankExited | None:
    events = await scheduler.events(run_id)
    return next((e for e in events if isinstance(e, RankExited)), None)


async def test_ranks_survive_a_kill_9_of_the_agent_and_are_reconciled_on_restart(
    make_agent: AgentFactory, scheduler: MiniScheduler, redis: aioredis.Redis
) -> None:
    agent = make_agent()
    await agent.start()
    adopted = await scheduler.submit(spec(_gated("go", "echo done; exit 7")), [("node-a", [0])])
    ended = await scheduler.submit(spec(_gated("go", "echo bye; exit 5")), [("node-a", [1])])
    lost = await scheduler.submit(spec("echo waiting; sleep 1002"), [("node-a", [2])])
    for run_id in (adopted, ended, lost):
        await scheduler.wait_status(run_id, RunStatus.RUNNING)
        await eventually(lambda r=run_id: _says(redis, r, b"waiting"), what="up")  # type: ignore[misc]

    await agent.kill()
    # While the agent is down: one command ends (its shim records the exit), one shim dies.
    (agent.workspace(ended) / "go").touch()
    await eventually((_rank_dir(agent, ended) / "exit.json").exists, what="exit.json")
    lost_shim = int((_rank_dir(agent, lost) / "shim.pid").read_text())
    lost_command = int((_rank_dir(agent, lost) / "command.pid").read_text())
    os.kill(lost_shim, signal.SIGKILL)
    assert await _exited(scheduler, ended) is None  # nobody reported it: the agent is down

    await agent.start()
    await eventually(lambda: _registrations(scheduler, "node-a"), equals=2, what="re-registered")
    (agent.workspace(adopted) / "go").touch()  # ends under the new agent

    state = await scheduler.wait_status(adopted, RunStatus.FAILED)
    assert state.latest.ranks[0].exit_code == 7  # the real exit code, of an adopted rank
    assert b"done" in await lines(redis, adopted)
    state = await scheduler.wait_status(ended, RunStatus.FAILED)
    assert state.latest.ranks[0].exit_code == 5  # the real exit code, read from exit.json
    assert b"bye" in await lines(redis, ended)  # the shim sent it while the agent was down
    state = await scheduler.wait_status(lost, RunStatus.FAILED)
    rank = state.latest.ranks[0]
    assert rank.exit_code is None  # never invented
    assert rank.reason is not None
    assert (rank.reason.category, rank.reason.code) == ("system", "RankLost")
    await eventually(lambda: not _alive(lost_command), what="the orphaned command killed")
    for run_id in (adopted, ended, lost):
        events = await scheduler.events(run_id)
        assert sum(isinstance(e, RankExited) for e in events) == 1


async def _says(redis: aioredis.Redis, run_id: str, line: bytes) -> bool:
    return line in await lines(redis, run_id)


def _alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_a_node_lost_while_its_agent_lives_registers_again_and_kills_released_ranks(
    make_agent: AgentFactory, scheduler: MiniScheduler, redis: aioredis.Redis
) -> None:
    agent = make_agent()
    await agent.start()
    run_id = await scheduler.submit(spec("echo waiting; sleep 1003"), [("node-a", [0])])
    await scheduler.wait_status(run_id, RunStatus.RUNNING)
    await eventually(lambda: _says(redis, run_id, b"waiting"), what="up")
    command = int((_rank_dir(agent, run_id) / "command.pid").read_text())

    # What the scheduler writes when the node's heartbeat key expired (a partition, say).
    lost = NodeLost(
        id=f.new_id(), actor="scheduler@test", node="node-a", cluster="local", last_seen=0
    )
    await scheduler.store.append([lost], expected_version=None)
    failure = Reason(category="system", code="NodeFailure", message="node-a stopped heartbeating")
    released = RankExited(
        id=f.new_id(), actor="scheduler@test", run_id=run_id, rank=0, node="node-a",
        reason=failure,
    )  # fmt: skip
    await scheduler.store.append([released], expected_version=None)

    await eventually(lambda: _registrations(scheduler, "node-a"), equals=2, what="re-registered")
    await eventually(lambda: not _alive(command), what="the released rank's command killed")
    state = await scheduler.wait_status(run_id, RunStatus.FAILED)
    assert state.latest.reason is not None
    assert state.latest.reason.code == "NodeFailure"
    events = await scheduler.events(run_id)
    assert sum(isinstance(e, RankExited) for e in events) == 1  # the agent reported nothing more


async def test_a_graceful_stop_of_the_agent_leaves_ranks_running_for_the_next_one(
    make_agent: AgentFactory, scheduler: MiniScheduler, redis: aioredis.Redis
) -> None:
    agent = make_agent()
    await agent.start()
    run_id = await scheduler.submit(spec(_gated("go", "exit 4")), [("node-a", [0])])
    await scheduler.wait_status(run_id, RunStatus.RUNNING)
    command = int((_rank_dir(agent, run_id) / "command.pid").read_text())

    assert await agent.stop() == 0  # SIGTERM: the agent ends cleanly, its ranks do not
    assert _alive(command)

    await agent.start()
    await eventually(lambda: _registrations(scheduler, "node-a"), equals=2, what="re-registered")
    (agent.workspace(run_id) / "go").touch()
    state = await scheduler.wait_status(run_id, RunStatus.FAILED)
    assert state.latest.ranks[0].exit_code == 4


async def test_entries_a_killed_agent_read_but_did_not_acknowledge_are_handled_at_restart(
    make_agent: AgentFactory, scheduler: MiniScheduler, redis: aioredis.Redis
) -> None:
    run_id = await scheduler.submit(spec("echo placed while it died"), [("node-a", [0])])
    # A previous life of the agent read everything and died before acknowledging anything.
    log = keys.inbox("node-a", 0)
    await redis.xgroup_create(log, "agent:node-a", id="0", mkstream=True)
    await redis.xreadgroup("agent:node-a", "node-a", {log: ">"}, count=100)
    # The group would redeliver them only after this long: the restart must not wait for it.
    agent = make_agent(claim_idle_ms=600_000)
    await agent.start()

    state = await scheduler.wait_status(run_id, RunStatus.COMPLETED)
    assert state.latest.ranks[0].exit_code == 0
