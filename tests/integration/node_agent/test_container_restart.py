"""kill -9 of a container node-agent while its ranks run, then a restart: the containers ran on
under their monitors; the restarted agent finds them by label, adopts the running one (its
output goes on where it stopped), reports the exit of the one that ended meanwhile from the
engine's record (the real exit code), and kills the one the log says is over (fencing), which
is never reported again."""

from __future__ import annotations

import json
from pathlib import Path

import redis.asyncio as aioredis

from bench.podlab import Podlab
from events.model import RankExited, Reason
from events.status import RunStatus
from services.node_agent.container.naming import container_name
from services.node_agent.job import RankKey
from tests import factories as f
from tests.integration.node_agent.conftest import AgentFactory
from tests.integration.node_agent.harness import Agent, MiniScheduler, lines, spec
from tests.waiting import eventually


def _gated(name: str, then: str) -> str:
    """Say so, wait for the file ``name`` in the workspace, then run ``then``."""
    return f"echo waiting; while [ ! -e {name} ]; do sleep 0.05; done; {then}"


def _workspace(agent: Agent, run_id: str) -> Path:
    return agent.data_dir / "containers" / run_id / "0" / "0" / "shared" / "workspace"


def _status(podlab: Podlab, run_id: str) -> str | None:
    """The container's state (``running``, ``exited``), None when it does not exist."""
    name = container_name(RankKey(run_id, 0, 0))
    listed = json.loads(
        podlab.podman("ps", "--all", "--filter", f"name={name}", "--format", "json")
    )
    return str(listed[0]["State"]) if listed else None


def _recorded(agent: Agent, run_id: str) -> bool:
    rank = agent.data_dir / "containers" / run_id / "0" / "0" / "rank.json"
    return bool(json.loads(rank.read_text()).get("sent_until"))


async def _says(redis: aioredis.Redis, run_id: str, line: bytes) -> bool:
    return line in await lines(redis, run_id)


async def _exits(scheduler: MiniScheduler, run_id: str) -> int:
    return sum(isinstance(e, RankExited) for e in await scheduler.events(run_id))


async def test_containers_survive_a_kill_9_of_the_agent_and_are_reconciled_on_restart(
    container_agent: AgentFactory,
    scheduler: MiniScheduler,
    redis: aioredis.Redis,
    podlab: Podlab,
    busybox_image: str,
) -> None:
    agent = container_agent()
    await agent.start()
    adopted = await scheduler.submit(
        spec(_gated("go", "echo done; exit 7"), image=busybox_image), [("node-a", [0])]
    )
    ended = await scheduler.submit(
        spec(_gated("go", "echo bye; exit 5"), image=busybox_image), [("node-a", [1])]
    )
    fenced = await scheduler.submit(
        spec("echo waiting; sleep 1000", image=busybox_image), [("node-a", [2])]
    )
    for run_id in (adopted, ended, fenced):
        await scheduler.wait_status(run_id, RunStatus.RUNNING)
        await eventually(lambda r=run_id: _says(redis, r, b"waiting"), what="up")  # type: ignore[misc]
    # The agent records how far the output went once it is sent: then the kill.
    await eventually(lambda: _recorded(agent, adopted), what="the output's position recorded")

    await agent.kill()
    # While the agent is down: one command ends; the log gives up on another (as the scheduler
    # does for a node that stopped heartbeating).
    (_workspace(agent, ended) / "go").touch()
    await eventually(lambda: _status(podlab, ended) == "exited", what="the container exited")
    failure = Reason(category="system", code="NodeFailure", message="node-a stopped heartbeating")
    released = RankExited(
        id=f.new_id(), actor="scheduler@test", run_id=fenced, rank=0, node="node-a",
        reason=failure,
    )  # fmt: skip
    await scheduler.store.append([released], expected_version=None)
    assert _status(podlab, adopted) == "running"  # nobody watches it: it runs on
    assert await _exits(scheduler, ended) == 0  # nobody reported it: the agent is down

    await agent.start()
    await eventually(lambda: _status(podlab, fenced) is None, what="the fenced container killed")
    (_workspace(agent, adopted) / "go").touch()  # ends under the new agent

    state = await scheduler.wait_status(adopted, RunStatus.FAILED)
    assert state.latest.ranks[0].exit_code == 7  # the real exit code, of an adopted rank
    await eventually(lambda: _says(redis, adopted, b"done"), what="its last line")
    assert (await lines(redis, adopted)).count(b"waiting") == 1  # not sent again on adoption
    state = await scheduler.wait_status(ended, RunStatus.FAILED)
    assert state.latest.ranks[0].exit_code == 5  # the real exit code, from the engine's record
    await eventually(lambda: _says(redis, ended, b"bye"), what="the line it said while alone")
    state = await scheduler.wait_status(fenced, RunStatus.FAILED)
    assert state.latest.reason is not None
    assert state.latest.reason.code == "NodeFailure"
    for run_id in (adopted, ended, fenced):
        assert await _exits(scheduler, run_id) == 1  # each exit reported once, by one writer
    for run_id in (adopted, ended):
        await eventually(lambda r=run_id: _status(podlab, r) is None, what="removed once reported")  # type: ignore[misc]
