"""The node-agent as a real process, and the test playing the scheduler and the user.

``Agent`` starts ``python -m services.node_agent`` with ``RUNPLANE_*`` settings, kills it
(SIGKILL) or stops it (SIGTERM), and at the end kills every shim and command it left.

``MiniScheduler`` writes exactly what the protocol gives the scheduler (``docs/architecture.md``,
"Services and who writes what"): a submitted run is queued and placed (``attempt.scheduled``,
ranks on given nodes and GPUs); when every rank runs and no rank's report said so,
``attempt.running``; at the first rank exit, ``attempt.terminating`` (with that rank's reason,
or None for exit 0); when every rank has released its GPUs, the terminal event.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec
import redis.asyncio as aioredis

from events import commands, keys
from events import model as ev
from events.lifecycle import RunState
from events.spec import Compute, RunSpec
from events.status import RunStatus
from services.core.client import connect
from services.core.settings import Settings
from services.core.store import EventStore
from services.node_agent.job import RankKey
from services.node_agent.process.rankdir import RankDir
from services.node_agent.shim import ondisk
from tests import factories as f
from tests import raw
from tests.services import ServiceProcess
from tests.waiting import eventually

ACTOR = "scheduler@test"


class Agent(ServiceProcess):
    """One ``python -m services.node_agent`` process with 8 simulated GPUs."""

    def __init__(
        self,
        redis_url: str,
        data_dir: Path,
        node: str = "node-a",
        env: Mapping[str, str] | None = None,
        **settings: Any,
    ):
        env = {
            **(env or os.environ),
            "RUNPLANE_REDIS_URL": redis_url,
            "RUNPLANE_NODE": node,
            "RUNPLANE_GPUS": "8",
            "RUNPLANE_GPU_TYPE": "a100_80gb",
            "RUNPLANE_DATA_DIR": str(data_dir),
            "RUNPLANE_HEARTBEAT_INTERVAL_S": "0.5",
            "RUNPLANE_HEARTBEAT_TTL_S": "3",
            "RUNPLANE_CLAIM_IDLE_MS": "1000",
        }
        env.update({f"RUNPLANE_{name.upper()}": str(value) for name, value in settings.items()})
        super().__init__("services.node_agent", env, data_dir.parent / f"{node}.log")
        self.node = node
        self.data_dir = data_dir

    def rank_dir(self, run_id: str, attempt: int = 0, rank: int = 0) -> RankDir:
        """The rank's directory (its record says where its home is)."""
        return RankDir.of(self.data_dir, RankKey(run_id, attempt, rank))

    def workspace(self, run_id: str, attempt: int = 0, rank: int = 0) -> Path:
        return self.rank_dir(run_id, attempt, rank).workspace

    async def cleanup(self) -> None:
        """Kill the agent, every shim and every command it left on the machine."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        for pid_file in self.data_dir.glob("ranks/*/*/*/shim.pid"):
            with contextlib.suppress(ValueError, ProcessLookupError):
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
        for pid_file in self.data_dir.glob("ranks/*/*/*/command.pid"):
            with contextlib.suppress(ValueError, ProcessLookupError):
                os.killpg(int(pid_file.read_text()), signal.SIGKILL)
        for record in self.data_dir.glob(f"ranks/*/*/*/{ondisk.RECORD}"):
            RankDir(record.parent).discard()  # a home out of the data dir (as root), a lease


def spec(command: str, **fields: Any) -> RunSpec:
    return RunSpec(
        name="agent-test",
        image=fields.pop("image", "mosaicml/pytorch:latest"),
        command=command,
        compute=Compute(cluster="local", gpus=fields.pop("gpus", 2)),
        **fields,
    )


class MiniScheduler:
    def __init__(self, redis_url: str) -> None:
        self.store = EventStore(connect(redis_url), Settings(redis_url=redis_url))
        self.runs: list[str] = []
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    async def __aenter__(self) -> MiniScheduler:
        self._task = asyncio.create_task(self._react_forever())
        return self

    async def __aexit__(self, *exc: object) -> None:
        # A flag, not a cancel: a cancel landing inside a client's own timeout handling can be
        # taken for a timeout and retried.
        assert self._task is not None
        self._stopping = True
        async with asyncio.timeout(30):
            await self._task
        await self.store.close()

    async def submit(
        self,
        run_spec: RunSpec,
        placement: Sequence[tuple[str, list[int]]],
        owner: str = "alice@example.com",
        run_id: str | None = None,
    ) -> str:
        """Submit (as ``owner``), queue and place a run: rank i on ``placement[i]`` = (node, GPU
        indices)."""
        run_id = run_id or f.new_id()
        submitted = ev.RunSubmitted(
            id=f.new_id(), actor=owner, run_id=run_id,
            name=f"agent-test-{run_id[:6]}", spec=run_spec,
        )  # fmt: skip
        await self.store.append([submitted], expected_version=0)
        await self.store.append([f.queued(run_id)], expected_version=1)
        ranks = [ev.RankPlacement(rank=i, node=n, gpus=g) for i, (n, g) in enumerate(placement)]
        scheduled = ev.AttemptScheduled(
            id=f.new_id(), actor=ACTOR, run_id=run_id, cluster="local", gpu_type="a100_80gb",
            ranks=ranks,
        )  # fmt: skip
        await self.store.append([scheduled], expected_version=2)
        self.runs.append(run_id)
        return run_id

    async def stop(self, run_id: str) -> None:
        """The user's stop (``mcli stop run``): TERMINATING with reason Stopped."""
        stop = commands.StopRun(actor="alice@example.com")
        await self.store.update_run(run_id, lambda s: commands.decide(s, stop, f.new_id))

    async def state(self, run_id: str) -> RunState:
        state = await self.store.load_run(run_id)
        assert state is not None
        return state

    async def wait_status(self, run_id: str, status: RunStatus, within: float = 30) -> RunState:
        async def probe() -> RunStatus:
            return (await self.state(run_id)).status

        await eventually(probe, equals=status, what=f"run {run_id} {status}", within=within)
        return await self.state(run_id)

    async def events(self, run_id: str) -> list[ev.AnyEvent]:
        return [record.event for record in await self.store.history(f"run:{run_id}")]

    async def _react_forever(self) -> None:
        while not self._stopping:
            for run_id in self.runs:
                await self.store.update_run(run_id, _next)
            await asyncio.sleep(0.02)  # allowed: a background reactor, not a wait


def _next(state: RunState | None) -> list[ev.AnyRunEvent]:
    """The scheduler's next event for a placed attempt, per the protocol (docs/architecture.md)."""
    assert state is not None
    attempt = state.latest
    envelope: dict[str, Any] = {
        "id": f.new_id(), "actor": ACTOR, "run_id": state.run_id, "attempt": attempt.index,
    }  # fmt: skip
    exits = [rank for rank in attempt.ranks if rank.exited]
    if attempt.runs_with():
        return [ev.AttemptRunning(**envelope)]
    if attempt.status in (RunStatus.STARTING, RunStatus.RUNNING) and exits:
        first = exits[0]
        reason = first.reason
        if reason is not None:
            reason = msgspec.structs.replace(reason, failed_rank=first.rank)
        return [ev.AttemptTerminating(**envelope, reason=reason)]
    if attempt.status is RunStatus.TERMINATING and attempt.all_released():
        reason = attempt.reason
        if reason is None:
            return [ev.AttemptCompleted(**envelope)]
        if reason.category in ("stopped", "preempted"):
            return [ev.AttemptStopped(**envelope, reason=reason)]
        return [ev.AttemptFailed(**envelope, reason=reason)]
    return []


async def ingest(client: aioredis.Redis, run_id: str) -> list[dict[bytes, bytes]]:
    """The output entries of one run on the ingest stream, in order."""
    entries = await raw.xrange(client, keys.log_ingest())
    return [fields for _, fields in entries if fields[b"r"] == run_id.encode()]


async def lines(client: aioredis.Redis, run_id: str) -> list[bytes]:
    return [fields[b"l"] for fields in await ingest(client, run_id)]
