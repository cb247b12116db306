"""Shims are forked by the agent's fork server: each in a session of its own, none a child of
the agent, and a fork server that dies takes no rank with it and is replaced at the next
launch."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import redis.asyncio as aioredis

from events.status import RunStatus
from services.core.procstat import stat
from tests.integration.node_agent.conftest import AgentFactory
from tests.integration.node_agent.harness import Agent, MiniScheduler, lines, spec
from tests.waiting import eventually


def _rank_dir(agent: Agent, run_id: str) -> Path:
    return agent.data_dir / "ranks" / run_id / "0" / "0"


def _parent(pid: int) -> int:
    fields = stat(pid)
    assert fields is not None, f"process {pid} is gone"
    return int(fields[1])


def _alive(pid: int) -> bool:
    fields = stat(pid)
    return fields is not None and fields[0] != "Z"  # a zombie has ended; its parent reaps it later


async def test_a_shim_runs_in_its_own_session_outside_the_agent_and_survives_its_fork_server(
    make_agent: AgentFactory, scheduler: MiniScheduler, redis: aioredis.Redis
) -> None:
    agent = make_agent()
    await agent.start()
    gate = "echo waiting; while [ ! -e go ]; do sleep 0.05; done; echo done; exit 6"
    first = await scheduler.submit(spec(gate), [("node-a", [0])])
    await scheduler.wait_status(first, RunStatus.RUNNING)
    shim = int((_rank_dir(agent, first) / "shim.pid").read_text())
    server = _parent(shim)
    assert agent.proc is not None
    assert server != agent.proc.pid  # the fork server's child, not the agent's
    assert _parent(server) == agent.proc.pid
    assert os.getsid(shim) == shim  # a session of its own: the agent's signals miss it

    os.kill(server, signal.SIGKILL)
    await eventually(lambda: not _alive(server), what="the fork server gone")
    assert _alive(shim)  # the rank does not go with it

    second = await scheduler.submit(spec("echo second; exit 0"), [("node-a", [1])])
    state = await scheduler.wait_status(second, RunStatus.COMPLETED)  # a new server forked it
    assert state.latest.ranks[0].exit_code == 0
    assert b"second" in await lines(redis, second)

    (agent.workspace(first) / "go").touch()
    state = await scheduler.wait_status(first, RunStatus.FAILED)
    assert state.latest.ranks[0].exit_code == 6
    assert b"done" in await lines(redis, first)


async def test_the_fork_server_ends_with_its_agent_and_its_shims_run_on(
    make_agent: AgentFactory, scheduler: MiniScheduler
) -> None:
    agent = make_agent()
    await agent.start()
    run_id = await scheduler.submit(spec("echo waiting; sleep 1004"), [("node-a", [0])])
    await scheduler.wait_status(run_id, RunStatus.RUNNING)
    shim = int((_rank_dir(agent, run_id) / "shim.pid").read_text())
    server = _parent(shim)

    await agent.kill()
    await eventually(lambda: not _alive(server), what="the fork server ended with its agent")
    assert _alive(shim)
