"""A rank through its life on a real node-agent process: setup events, the command, its exit
code and output, its environment, and an image no registry could serve."""

from __future__ import annotations

from collections.abc import Sequence

import redis.asyncio as aioredis

from events import keys
from events.model import (
    AttemptRunning,
    AttemptTerminating,
    Event,
    ImagePullFailed,
    ImagePullFinished,
    ImagePullStarted,
    IntegrationFailed,
    NodeRegistered,
    RankExited,
    RankRunning,
    tag_of,
)
from events.status import RunStatus
from services.node_agent.environment import master_port
from tests.integration.node_agent.conftest import AgentFactory
from tests.integration.node_agent.harness import MiniScheduler, ingest, lines, spec
from tests.waiting import eventually


def _tags(events: Sequence[Event]) -> list[str]:
    return [tag_of(type(event)) for event in events]


async def test_a_rank_runs_and_reports_its_exit_code_and_output(
    make_agent: AgentFactory, scheduler: MiniScheduler, redis: aioredis.Redis
) -> None:
    agent = make_agent()
    await agent.start()
    run_id = await scheduler.submit(spec("echo hello; echo oops >&2; exit 3"), [("node-a", [2, 5])])

    state = await scheduler.wait_status(run_id, RunStatus.FAILED)

    events = await scheduler.events(run_id)
    tags = _tags(events)
    assert tags[:4] == [
        "run.submitted",
        "attempt.queued",
        "attempt.scheduled",
        "image.pull_started",
    ]
    assert tags.index("image.pull_finished") < tags.index("rank.running")
    assert tags.index("rank.running") < tags.index("rank.exited")
    exited = next(e for e in events if isinstance(e, RankExited))
    assert (exited.exit_code, exited.signal, exited.node) == (3, None, "node-a")
    assert exited.actor == "node-agent@node-a"
    assert exited.reason is not None
    assert (exited.reason.category, exited.reason.code, exited.reason.exit_code) == (
        "user",
        "Error",
        3,
    )
    running = next(e for e in events if isinstance(e, RankRunning))
    assert running.pid is not None
    assert state.latest.reason is not None
    assert state.latest.reason.exit_code == 3

    entries = await eventually(lambda: _lines(redis, run_id, 2), what="both lines ingested")
    assert sorted(entries) == [(b"e", b"oops"), (b"o", b"hello")]

    node_events = await scheduler.store.history("node:node-a")
    registered = node_events[0].event
    assert isinstance(registered, NodeRegistered)
    assert (registered.gpus, registered.gpu_type, registered.cluster) == (8, "a100_80gb", "local")
    assert await redis.pttl(keys.heartbeat("node-a")) > 0


async def test_the_last_rank_to_start_carries_the_attempts_running(
    make_agent: AgentFactory, scheduler: MiniScheduler
) -> None:
    """RUNNING is one append after the last command starts, not a scheduler's round trip
    later: the agent whose rank starts last writes ``attempt.running`` with its
    ``rank.running``, and nobody writes it again."""
    for node in ("node-a", "node-b"):
        await make_agent(node).start()
    run_id = await scheduler.submit(spec("sleep 0.5"), [("node-a", [0]), ("node-b", [0])])

    await scheduler.wait_status(run_id, RunStatus.COMPLETED)

    records = await scheduler.store.history(f"run:{run_id}")
    tags = [tag_of(type(record.event)) for record in records]
    assert tags.count("rank.running") == 2
    assert tags.count("attempt.running") == 1
    at = tags.index("attempt.running")
    last_started = max(i for i, tag in enumerate(tags) if tag == "rank.running")
    assert at == last_started + 1
    running, started = records[at], records[last_started]
    assert isinstance(running.event, AttemptRunning)
    assert running.event.actor == started.event.actor  # the agent of that rank
    assert running.event.actor.startswith("node-agent@")
    # One append: its entries share the log's millisecond and follow each other.
    ms, seq = started.position.split("-")
    assert running.position == f"{ms}-{int(seq) + 1}"


async def test_the_last_rank_to_exit_cleanly_carries_the_attempts_end(
    make_agent: AgentFactory, scheduler: MiniScheduler
) -> None:
    """COMPLETED is one append after the command ends, not a scheduler's round trip later:
    the clean exit of the attempt's last rank carries ``attempt.terminating`` and
    ``attempt.completed``, and nobody writes them again."""
    await make_agent("node-a").start()
    run_id = await scheduler.submit(spec("true"), [("node-a", [0])])

    await scheduler.wait_status(run_id, RunStatus.COMPLETED)

    records = await scheduler.store.history(f"run:{run_id}")
    tags = [tag_of(type(record.event)) for record in records]
    assert tags[-3:] == ["rank.exited", "attempt.terminating", "attempt.completed"]
    exited, terminating, completed = records[-3:]
    assert isinstance(terminating.event, AttemptTerminating)
    assert terminating.event.reason is None
    assert {terminating.event.actor, completed.event.actor} == {exited.event.actor}
    ms, seq = exited.position.split("-")  # one append
    assert [terminating.position, completed.position] == [
        f"{ms}-{int(seq) + 1}",
        f"{ms}-{int(seq) + 2}",
    ]


async def _lines(redis: aioredis.Redis, run_id: str, n: int) -> list[tuple[bytes, bytes]] | None:
    found = [(fields[b"s"], fields[b"l"]) for fields in await ingest(redis, run_id)]
    return found if len(found) >= n else None


async def test_the_command_sees_the_mcli_environment(
    make_agent: AgentFactory, scheduler: MiniScheduler, redis: aioredis.Redis
) -> None:
    agent = make_agent()
    await agent.start()
    command = (
        "echo NODE_RANK=$NODE_RANK; echo CUDA=$CUDA_VISIBLE_DEVICES; "
        "echo RESUMPTION_INDEX=$RESUMPTION_INDEX; echo MESSAGE=$MESSAGE; "
        "echo WORLD=$WORLD_SIZE/$LOCAL_WORLD_SIZE/$NUM_NODES; echo PORT=$MASTER_PORT; "
        "echo ADDR=$MASTER_ADDR; echo NAME=$RUN_NAME; echo CWD=$PWD; cat $PARAMETERS; "
        "echo AGENT_SETTINGS=${RUNPLANE_REDIS_URL:-none}"
    )
    run_spec = spec(
        command,
        env_variables={"MESSAGE": "hello composer!"},
        parameters={"lr": 0.1, "layers": [1, 2]},
    )
    run_id = await scheduler.submit(run_spec, [("node-a", [1, 3, 6])])
    state = await scheduler.wait_status(run_id, RunStatus.COMPLETED)

    output = b"\n".join(await lines(redis, run_id)).decode()
    assert "NODE_RANK=0" in output
    assert "CUDA=1,3,6" in output
    assert "RESUMPTION_INDEX=0" in output
    assert "MESSAGE=hello composer!" in output
    assert "WORLD=3/3/1" in output
    assert f"PORT={master_port(run_id, 0)}" in output
    assert "ADDR=127.0.0.1" in output
    assert f"NAME={state.name}" in output
    assert '"lr": 0.1' in output
    assert "AGENT_SETTINGS=none" in output
    cwd = next(line for line in output.splitlines() if line.startswith("CWD="))
    assert cwd.endswith("/workspace")


async def test_an_invalid_image_fails_with_failed_image_pull_and_runs_nothing(
    make_agent: AgentFactory, scheduler: MiniScheduler, redis: aioredis.Redis
) -> None:
    agent = make_agent()
    await agent.start()
    run_id = await scheduler.submit(
        spec("touch ran; echo ran", image="Bad/Image"), [("node-a", [0])]
    )
    state = await scheduler.wait_status(run_id, RunStatus.FAILED)

    events = await scheduler.events(run_id)
    assert not any(isinstance(e, RankRunning | ImagePullFinished) for e in events)
    assert any(isinstance(e, ImagePullStarted) for e in events)
    failed = next(e for e in events if isinstance(e, ImagePullFailed))
    assert "repository name must be lowercase" in failed.error
    exited = next(e for e in events if isinstance(e, RankExited))
    assert exited.exit_code is None
    assert exited.reason is not None
    assert (exited.reason.category, exited.reason.code) == ("user", "FailedImagePull")
    assert state.latest.reason is not None
    assert state.latest.reason.code == "FailedImagePull"
    assert await lines(redis, run_id) == []
    assert not list(agent.data_dir.glob("ranks/*/*/*/command.pid"))
    assert not any(isinstance(e, IntegrationFailed) for e in events)
