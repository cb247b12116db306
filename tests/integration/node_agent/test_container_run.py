"""The ``container`` executor on a real node-agent and a real podman: a rank in a container of
its image (its environment, a file only the image has, its run token), the pull's events with
its size and time, a failed pull with the registry's message, an invalid image name, stop with
the grace period, an exit code, and an OOM kill from the rank's memory limit."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from bench.podlab import MARKER, MARKER_TEXT, Podlab
from events.model import (
    ImagePullFailed,
    ImagePullFinished,
    ImagePullStarted,
    RankExited,
    RankRunning,
    tag_of,
)
from events.status import RunStatus
from services.node_agent.environment import master_port
from tests.integration.node_agent.conftest import AgentFactory
from tests.integration.node_agent.harness import MiniScheduler, ingest, lines, spec
from tests.waiting import eventually

API = "http://127.0.0.1:9/graphql"  # ranks get a token to reach it; nobody calls it here
PRINT_ENV = (
    f"cat {MARKER}; "
    'echo "rank=$NODE_RANK world=$WORLD_SIZE local=$LOCAL_WORLD_SIZE gpus=$CUDA_VISIBLE_DEVICES"; '
    'echo "master=$MASTER_ADDR:$MASTER_PORT run=$RUN_NAME mine=$MINE"; '
    'echo "token=$MOSAICML_ACCESS_TOKEN_FILE"; '
    'test -s "$MOSAICML_ACCESS_TOKEN_FILE" && echo has-token; '
    'echo "pwd=$(pwd) home-leak=${RUNPLANE_NODE:-none}"; '
    "echo oops >&2; exit 3"
)


async def _exited(scheduler: MiniScheduler, run_id: str) -> RankExited:
    return next(e for e in await scheduler.events(run_id) if isinstance(e, RankExited))


async def test_a_rank_runs_in_a_container_of_its_image(
    container_agent: AgentFactory,
    scheduler: MiniScheduler,
    redis: aioredis.Redis,
    busybox_image: str,
) -> None:
    agent = container_agent(api_url=API)
    await agent.start()
    run = spec(PRINT_ENV, image=busybox_image, env_variables={"MINE": "from the run"})
    run_id = await scheduler.submit(run, [("node-a", [2, 5])])

    state = await scheduler.wait_status(run_id, RunStatus.FAILED)

    events = await scheduler.events(run_id)
    tags = [tag_of(type(e)) for e in events]
    assert tags.index("image.pull_started") < tags.index("image.pull_finished")
    assert tags.index("image.pull_finished") < tags.index("rank.running")
    assert tags.index("rank.running") < tags.index("rank.exited")
    pulled = next(e for e in events if isinstance(e, ImagePullFinished))
    assert pulled.image == busybox_image
    assert pulled.size_bytes is not None
    assert pulled.size_bytes > 500_000  # the busybox binary at least
    assert pulled.duration_ms is not None
    exited = await _exited(scheduler, run_id)
    assert exited.exit_code == 3
    assert exited.reason is not None
    assert (exited.reason.category, exited.reason.code, exited.reason.exit_code) == (
        "user", "Error", 3,
    )  # fmt: skip
    assert state.latest.reason is not None
    assert state.latest.reason.exit_code == 3

    expected = [
        MARKER_TEXT.encode(),
        b"rank=0 world=2 local=2 gpus=2,5",  # simulated GPUs: no devices, as a process rank
        f"master=127.0.0.1:{master_port(run_id, 0)} run={state.name} mine=from the run".encode(),
        b"token=/var/run/runplane/token",
        b"has-token",
        b"pwd=/runplane/workspace home-leak=none",  # the node's own variables stay out
    ]
    for last in (expected[-1], b"oops"):
        await eventually(lambda w=last: _says(redis, run_id, w), what=f"the line {last!r}")  # type: ignore[misc]
    said = await lines(redis, run_id)
    assert [line for line in said if line != b"oops"] == expected
    entries = await ingest(redis, run_id)
    assert [e[b"s"] for e in entries if e[b"l"] == b"oops"] == [b"e"]  # stderr, as stderr


async def test_a_second_run_of_an_image_pulls_it_again_from_the_cache(
    container_agent: AgentFactory, scheduler: MiniScheduler, busybox_image: str
) -> None:
    agent = container_agent()
    await agent.start()
    for _ in range(2):
        run_id = await scheduler.submit(spec("exit 0", image=busybox_image), [("node-a", [0])])
        await scheduler.wait_status(run_id, RunStatus.COMPLETED)
        events = await scheduler.events(run_id)
        assert sum(isinstance(e, ImagePullStarted) for e in events) == 1  # policy Always
        pulled = next(e for e in events if isinstance(e, ImagePullFinished))
        assert pulled.duration_ms is not None


async def test_a_pull_the_registry_refuses_fails_with_its_message(
    container_agent: AgentFactory, scheduler: MiniScheduler, podlab: Podlab
) -> None:
    agent = container_agent()
    await agent.start()
    missing = await scheduler.submit(
        spec("echo never", image=f"{podlab.registry}/nothing-here:1"), [("node-a", [0])]
    )
    invalid = await scheduler.submit(spec("echo never", image="Not An/Image"), [("node-a", [1])])

    for run_id, words in ((missing, "manifest unknown"), (invalid, "invalid reference format")):
        state = await scheduler.wait_status(run_id, RunStatus.FAILED)
        reason = state.latest.reason
        assert reason is not None
        assert (reason.category, reason.code) == ("user", "FailedImagePull")
        assert words in reason.message
        events = await scheduler.events(run_id)
        failed = next(e for e in events if isinstance(e, ImagePullFailed))
        assert words in failed.error
        assert not any(isinstance(e, RankRunning) for e in events)


async def test_stop_sigterm_then_sigkill_after_the_grace_period(
    container_agent: AgentFactory,
    scheduler: MiniScheduler,
    redis: aioredis.Redis,
    busybox_image: str,
) -> None:
    agent = container_agent(grace_period_s=1)
    await agent.start()
    polite = await scheduler.submit(
        spec(
            "trap 'echo got TERM; exit 7' TERM; echo ready; while :; do sleep 0.05; done",
            image=busybox_image,
        ),
        [("node-a", [0])],
    )
    stubborn = await scheduler.submit(
        spec("trap '' TERM; echo ready; sleep 1000", image=busybox_image), [("node-a", [1])]
    )
    for run_id in (polite, stubborn):
        await scheduler.wait_status(run_id, RunStatus.RUNNING)
        await eventually(lambda r=run_id: _says(redis, r, b"ready"), what="the command is up")  # type: ignore[misc]

    await scheduler.stop(polite)
    await scheduler.stop(stubborn)

    for run_id in (polite, stubborn):
        state = await scheduler.wait_status(run_id, RunStatus.STOPPED)
        assert state.latest.reason is not None
        assert state.latest.reason.code == "Stopped"
    gentle = await _exited(scheduler, polite)
    assert gentle.exit_code == 7  # its own exit, after SIGTERM reached it through the init
    assert b"got TERM" in await lines(redis, polite)
    killed = await _exited(scheduler, stubborn)
    assert killed.exit_code == 137  # SIGKILL, once the grace period was over
    assert killed.reason is not None
    assert killed.reason.code == "Stopped"


async def _says(redis: aioredis.Redis, run_id: str, line: bytes) -> bool:
    return line in await lines(redis, run_id)


async def test_a_rank_past_its_memory_limit_ends_oom_killed(
    container_agent: AgentFactory, scheduler: MiniScheduler, busybox_image: str
) -> None:
    agent = container_agent(container_memory="32m")
    await agent.start()
    hog = await scheduler.submit(
        spec('echo growing; x=a; while :; do x="$x$x"; done', image=busybox_image),
        [("node-a", [0])],
    )
    modest = await scheduler.submit(spec("exit 0", image=busybox_image), [("node-a", [1])])

    state = await scheduler.wait_status(hog, RunStatus.FAILED)
    reason = state.latest.reason
    assert reason is not None
    assert (reason.category, reason.code, reason.exit_code) == ("user", "OOMKilled", 137)
    assert "32m" in reason.message
    await scheduler.wait_status(modest, RunStatus.COMPLETED)


@pytest.fixture
def podman_socket(podlab: Podlab, tmp_path: Path) -> Iterator[str]:
    """The lab's podman as a service on a socket, as compose's containers profile reaches it."""
    socket = tmp_path / "podman.sock"
    service = subprocess.Popen(
        ["podman", "system", "service", "--time=0", f"unix://{socket}"],
        env=podlab.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while not socket.exists():
            assert service.poll() is None, "podman system service ended"
            assert time.monotonic() < deadline, "podman's socket did not appear"
            time.sleep(0.05)  # allowed: polling inside a deadline loop
        yield f"unix://{socket}"
    finally:
        service.terminate()
        service.wait()


async def test_the_executor_drives_podman_through_its_socket(
    container_agent: AgentFactory,
    scheduler: MiniScheduler,
    redis: aioredis.Redis,
    busybox_image: str,
    podman_socket: str,
) -> None:
    remote = json.dumps(["--remote", "--url", podman_socket])
    agent = container_agent(container_engine_args=remote)
    await agent.start()
    run_id = await scheduler.submit(
        spec(f"cat {MARKER}; exit 4", image=busybox_image), [("node-a", [0])]
    )
    state = await scheduler.wait_status(run_id, RunStatus.FAILED)
    assert state.latest.ranks[0].exit_code == 4
    await eventually(lambda: _says(redis, run_id, MARKER_TEXT.encode()), what="the marker")
    pulled = next(e for e in await scheduler.events(run_id) if isinstance(e, ImagePullFinished))
    assert pulled.size_bytes is not None
