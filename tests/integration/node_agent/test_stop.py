"""Stopping ranks on a real node-agent: SIGTERM to the process group, the grace period, SIGKILL;
a rank still in setup is aborted; a rank exiting 0 does not stop the others."""

from __future__ import annotations

import os
import random
import signal
from pathlib import Path

import redis.asyncio as aioredis

from events.model import IntegrationStarted, RankExited, RankRunning
from events.status import RunStatus
from tests.integration.node_agent.conftest import AgentFactory
from tests.integration.node_agent.harness import MiniScheduler, lines, spec
from tests.ranks import open_to_ranks, running
from tests.waiting import eventually


async def _exited(scheduler: MiniScheduler, run_id: str) -> RankExited:
    return next(e for e in await scheduler.events(run_id) if isinstance(e, RankExited))


async def _has(scheduler: MiniScheduler, run_id: str, kind: type) -> bool:
    return any(isinstance(e, kind) for e in await scheduler.events(run_id))


async def test_stop_sigterm_then_sigkill_after_the_grace_period(
    make_agent: AgentFactory, scheduler: MiniScheduler, redis: aioredis.Redis
) -> None:
    agent = make_agent(grace_period_s=1)
    await agent.start()
    stubborn = await scheduler.submit(
        spec("trap '' TERM; echo ready; sleep 1000"),
        [("node-a", [0])],
    )
    polite = await scheduler.submit(spec("echo ready; sleep 1000"), [("node-a", [1])])
    for run_id in (stubborn, polite):
        await scheduler.wait_status(run_id, RunStatus.RUNNING)
        await eventually(lambda r=run_id: _ready(redis, r), what="the command is up")  # type: ignore[misc]

    await scheduler.stop(stubborn)
    await scheduler.stop(polite)

    for run_id in (stubborn, polite):
        state = await scheduler.wait_status(run_id, RunStatus.STOPPED)
        assert state.latest.reason is not None
        assert state.latest.reason.code == "Stopped"
    killed = await _exited(scheduler, stubborn)
    assert (killed.exit_code, killed.signal) == (None, signal.SIGKILL)
    assert killed.reason is not None
    assert killed.reason.category == "stopped"
    terminated = await _exited(scheduler, polite)
    assert (terminated.exit_code, terminated.signal) == (None, signal.SIGTERM)


async def _ready(redis: aioredis.Redis, run_id: str) -> bool:
    return b"ready" in await lines(redis, run_id)


async def test_a_stop_during_setup_aborts_it(
    make_agent: AgentFactory, scheduler: MiniScheduler
) -> None:
    agent = make_agent()
    await agent.start()
    # A clone over "ssh" whose ssh is a long sleep: setup hangs until it is aborted.
    integrations = [{"integration_type": "git_repo", "git_repo": "ssh://git@example.invalid/x"}]
    env = {"GIT_SSH_COMMAND": "sleep 1001; :"}
    run_id = await scheduler.submit(
        spec("echo never", integrations=integrations, env_variables=env), [("node-a", [0])]
    )
    await eventually(lambda: _has(scheduler, run_id, IntegrationStarted), what="setup begun")
    await eventually(lambda: _sleepers("sleep 1001"), what="the clone hangs")

    await scheduler.stop(run_id)

    state = await scheduler.wait_status(run_id, RunStatus.STOPPED)
    assert state.latest.reason is not None
    assert state.latest.reason.code == "Stopped"
    exited = await _exited(scheduler, run_id)
    assert exited.exit_code is None
    assert exited.reason is not None
    assert exited.reason.category == "stopped"
    assert not await _has(scheduler, run_id, RankRunning)
    await eventually(lambda: not _sleepers("sleep 1001"), what="the clone killed")


def _sleepers(marker: str) -> list[int]:
    """Processes whose command line contains ``marker``."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if proc.name.isdigit() and marker.encode() in cmdline and int(proc.name) != os.getpid():
            found.append(int(proc.name))
    return found


async def test_a_rank_exiting_zero_does_not_stop_the_others(
    make_agent: AgentFactory, scheduler: MiniScheduler, tmp_path: Path
) -> None:
    agents = [make_agent("node-a"), make_agent("node-b")]
    for agent in agents:
        await agent.start()
    gate = open_to_ranks(tmp_path / "gate") / "go"
    command = f'if [ "$NODE_RANK" = 1 ]; then while [ ! -e {gate} ]; do sleep 0.05; done; fi'
    run_id = await scheduler.submit(spec(command), [("node-a", [0]), ("node-b", [0])])

    await eventually(
        lambda: _has(scheduler, run_id, RankExited), what="rank 0 exited (with code 0)"
    )
    state = await scheduler.wait_status(run_id, RunStatus.TERMINATING)
    assert state.latest.reason is None
    assert not state.latest.ranks[1].exited  # rank 1 runs on
    gate.touch()

    state = await scheduler.wait_status(run_id, RunStatus.COMPLETED)
    assert [rank.exit_code for rank in state.latest.ranks] == [0, 0]


async def test_a_daemon_the_command_started_is_ended_by_the_stop(
    make_agent: AgentFactory, scheduler: MiniScheduler
) -> None:
    """``setsid`` leaves the command's process group: its cgroup (as root) or the shim as its
    subreaper (no cgroup) still reaches it."""
    agent = make_agent()
    await agent.start()
    marker = str(random.randrange(10**6, 10**7))
    run_id = await scheduler.submit(spec(f"setsid sleep {marker} & sleep 600"), [("node-a", [0])])
    await scheduler.wait_status(run_id, RunStatus.RUNNING)
    await eventually(lambda: running("sleep", marker), what="the daemon running")
    await scheduler.stop(run_id)
    await scheduler.wait_status(run_id, RunStatus.STOPPED)
    await eventually(lambda: not running("sleep", marker), what="the daemon ended")
