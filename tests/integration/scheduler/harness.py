"""The scheduler as a real process, and the test playing users and node-agents around it.

``scheduler_process`` runs ``python -m services.scheduler`` with ``RUNPLANE_*`` settings and its
stderr in a file; ``Agents`` registers nodes, sets their heartbeat keys, and reacts to
placements in the log the way node-agents do (rank.running, then optionally rank.exited), so
runs go through the whole lifecycle without a node-agent process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

from events import codec, commands, keys
from events.lifecycle import RunState
from events.model import (
    AnyRunEvent,
    AttemptScheduled,
    AttemptTerminating,
    NodeRegistered,
    RankExited,
    RankRunning,
)
from events.spec import Compute, RunSpec, Scheduling
from events.status import RunStatus
from services.core.store import EventStore
from tests.services import ServiceProcess

CLUSTER = "local"
USER = "alice@example.com"


def new_id() -> str:
    return uuid.uuid4().hex


@contextlib.asynccontextmanager
async def scheduler_process(
    redis_url: str, logs: Path, name: str = "a", **settings: Any
) -> AsyncIterator[ServiceProcess]:
    """A scheduler process (``kill`` leaves its lease until it expires); killed at the end."""
    env = dict(os.environ)
    env.update(
        RUNPLANE_REDIS_URL=redis_url,
        RUNPLANE_SCHEDULER_ID=f"scheduler@{name}",
        RUNPLANE_TICK_MS="100",
        RUNPLANE_LEASE_TTL_MS="1000",
        RUNPLANE_NODE_TIMEOUT_S="0.5",
        RUNPLANE_CLAIM_IDLE_MS="1000",
    )
    env.update({f"RUNPLANE_{key.upper()}": str(value) for key, value in settings.items()})
    handle = await ServiceProcess("services.scheduler", env, logs / f"scheduler-{name}.log").start()
    try:
        yield handle
    finally:
        await handle.kill()
        # pytest shows a test's captured output only when it fails: the scheduler's side of it
        print(f"--- scheduler@{name} log (tail) ---\n{handle.output()[-6000:]}")


async def submit(
    store: EventStore,
    gpus: int = 1,
    nodes: int | None = None,
    run_id: str | None = None,
    **scheduling: Any,
) -> str:
    run_id = run_id or new_id()
    spec = RunSpec(
        name="train",
        image="mosaicml/pytorch:latest",
        command="python train.py",
        compute=Compute(cluster=CLUSTER, gpus=gpus, nodes=nodes),
        scheduling=Scheduling(**scheduling),
    )
    command = commands.SubmitRun(actor=USER, run_id=run_id, name=f"train-{run_id[:6]}", spec=spec)
    await store.update_run(run_id, lambda state: commands.decide(state, command, new_id))
    return run_id


async def status(store: EventStore, run_id: str) -> RunStatus | None:
    state = await store.load_run(run_id)
    return state.status if state is not None else None


async def run_events(store: EventStore, run_id: str) -> list[AnyRunEvent]:
    return [cast(AnyRunEvent, r.event) for r in await store.history(f"run:{run_id}")]


class Agents:
    """Node-agents played by the test: nodes, heartbeats, and what ranks report.

    With ``exit_code`` set, a rank exits with it as soon as it runs; otherwise ranks run until
    ``exit`` is called or their attempt is told to stop (they then exit 143, as on SIGTERM).
    """

    def __init__(self, store: EventStore, exit_code: int | None = None) -> None:
        self.store = store
        self.exit_code = exit_code
        self.placed: list[AttemptScheduled] = []
        self._task: asyncio.Task[None] | None = None

    async def register(self, node: str, gpus: int = 8, heartbeat_ms: int | None = None) -> None:
        await self.heartbeat(node, heartbeat_ms)
        event = NodeRegistered(
            id=new_id(),
            actor=f"node-agent@{node}",
            node=node,
            cluster=CLUSTER,
            gpu_type="a100",
            gpus=gpus,
            cpus=16,
        )
        await self.store.append([event], expected_version=None)

    async def heartbeat(self, node: str, expires_ms: int | None = None) -> None:
        """The node's heartbeat key; without an expiry it lives until the test ends."""
        await self.store.redis.set(keys.heartbeat(node), "alive", px=expires_ms)

    async def __aenter__(self) -> Agents:
        self._task = asyncio.create_task(self._react())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            async with asyncio.timeout(30):
                await self._task

    async def _react(self) -> None:
        """Follow every partition's log (one server here: one XREAD of them all)."""
        last: dict[bytes | str | memoryview, int | bytes | str | memoryview] = {
            keys.log_stream(p): "0" for p in range(self.store.settings.partitions)
        }
        while True:
            reply = cast(
                list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]],
                await self.store.redis.xread(last, count=200, block=100),
            )
            for stream, entries in reply or []:
                for raw_position, fields in entries:
                    position = raw_position.decode()
                    last[stream.decode()] = position
                    event = codec.decode(position, fields)
                    if isinstance(event, AttemptScheduled):
                        self.placed.append(event)
                        for rank in event.ranks:
                            await self._run(event, rank.rank)
                    elif isinstance(event, AttemptTerminating) and event.reason is not None:
                        await self.exit_all(event.run_id, event.attempt, 143)

    async def _run(self, scheduled: AttemptScheduled, rank: int) -> None:
        node = scheduled.ranks[rank].node
        envelope: dict[str, Any] = {
            "actor": f"node-agent@{node}",
            "run_id": scheduled.run_id,
            "attempt": scheduled.attempt,
            "rank": rank,
            "node": node,
        }
        await self._append_if_live(RankRunning(id=new_id(), **envelope))
        if self.exit_code is not None:
            exited = RankExited(id=new_id(), exit_code=self.exit_code, **envelope)
            await self._append_if_live(exited)

    async def exit(self, run_id: str, rank: int = 0, code: int = 0) -> None:
        state = await self.store.load_run(run_id)
        assert state is not None
        placed = state.latest.ranks[rank]
        event = RankExited(
            id=new_id(),
            actor=f"node-agent@{placed.node}",
            run_id=run_id,
            attempt=state.latest.index,
            rank=rank,
            node=placed.node,
            exit_code=code,
        )
        await self._append_if_live(event)

    async def finish_all(self, code: int = 0) -> None:
        """Every rank placed so far that still runs exits with ``code``."""
        for scheduled in list(self.placed):
            await self.exit_all(scheduled.run_id, scheduled.attempt, code)

    async def exit_all(self, run_id: str, attempt: int, code: int) -> None:
        state = await self.store.load_run(run_id)
        if state is None or state.latest.index != attempt:
            return
        for rank in state.latest.ranks:
            if not rank.exited:
                event = RankExited(
                    id=new_id(),
                    actor=f"node-agent@{rank.node}",
                    run_id=run_id,
                    attempt=attempt,
                    rank=rank.rank,
                    node=rank.node,
                    exit_code=code,
                )
                await self._append_if_live(event)

    async def _append_if_live(self, event: RankRunning | RankExited) -> None:
        """Append a rank's report unless its attempt or rank is past it (as an agent would)."""
        rank_index = event.rank

        def decide(state: RunState | None) -> list[AnyRunEvent]:
            if state is None or state.latest.index != event.attempt:
                return []
            if not state.latest.status.is_active():
                return []
            rank = state.latest.rank(rank_index)
            if rank is None or rank.exited or (isinstance(event, RankRunning) and rank.running):
                return []
            return [event]

        await self.store.update_run(event.run_id, decide)
