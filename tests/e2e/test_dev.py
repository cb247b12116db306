"""``mcli dev up`` and ``mcli dev down`` on a real local stack of their own (issue 22): a
node-agent that died comes back with ``up``; ``down`` leaves no rank running."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli.client import Client
from cli.stack import LocalStack
from events.model import NodeRegistered
from events.status import RunStatus
from services.node_agent.process.rankdir import local_ranks
from tests.e2e.mcli_helpers import USER, Mcli, wait_for
from tests.waiting import eventually

S = RunStatus
pytestmark = pytest.mark.e2e


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[Mcli]:
    """``mcli`` finding its local stack under a home of its own, as a user's does; whatever
    the test started is brought down at the end."""
    home = tmp_path / "home"
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RUNPLANE_REDIS_URL", "RUNPLANE_GPU_PRICES")
    }
    env |= {"RUNPLANE_HOME": str(home), "RUNPLANE_USER": USER, "TZ": "UTC", "COLUMNS": "200"}
    runner = Mcli(env=env, stack=LocalStack(home))
    try:
        yield runner
    finally:
        runner("dev", "down", timeout=120)


def running(dev: Mcli) -> LocalStack:
    stack = LocalStack.find(dev.stack.state_dir)
    assert stack is not None
    return stack


def alive(pid: int | None) -> bool:
    try:
        return (
            pid is not None
            and Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
        )
    except FileNotFoundError:
        return False


async def registrations(url: str, node: str) -> int:
    client = Client(url)
    try:
        history = await client.store.history(f"node:{node}")
    finally:
        await client.close()
    return sum(isinstance(record.event, NodeRegistered) for record in history)


async def test_dev_up_brings_back_a_node_agent_that_died(dev: Mcli) -> None:
    dev.ok("dev", "up", "--nodes", "2", "--gpus-per-node", "2")
    stack = running(dev)
    assert await registrations(stack.url, "node-1") == 1
    pid = stack.status()["node-1"]
    assert pid is not None
    os.kill(pid, signal.SIGKILL)  # it dies by itself: stack.json still names its pid
    await eventually(lambda: not alive(pid), what="node-1's agent to be gone")

    up = dev("dev", "up")
    assert up.returncode == 0, up.stderr
    assert "already running" not in up.stderr
    assert "Started node-1 again" in up.stdout
    assert await registrations(stack.url, "node-1") == 2  # `up` returned once it registered
    assert running(dev).missing() == []
    again = dev("dev", "up")  # nothing missing now
    assert again.returncode == 0
    assert "already running" in again.stderr


async def test_dev_down_stops_a_running_run_and_leaves_no_rank(dev: Mcli) -> None:
    dev.ok("dev", "up", "--nodes", "1", "--gpus-per-node", "2", "--grace-period", "2")
    name = dev.submit("long")
    stack = running(dev)
    await wait_for(stack.url, name, S.RUNNING)
    [rank] = local_ranks(stack.state_dir / "nodes" / "node-0")
    command = rank.command_pid()
    assert rank.shim_alive()
    assert alive(command)

    down = dev("dev", "down", timeout=120)
    assert down.returncode == 0, down.stderr
    assert f"✔ Stopped run {name} (it was Running)" in down.stdout
    assert "Local stack stopped" in down.stdout
    assert "Killed rank" not in down.stderr  # it ended as a stop ends it, not killed
    assert not rank.shim_alive()
    assert not alive(command)
